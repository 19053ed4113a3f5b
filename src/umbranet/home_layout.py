"""Where things live in an Umbranet home directory, and the error a bad home raises.

Kept free of imports beyond the standard library's ``os`` and ``pathlib`` on purpose: every
``umbra`` command needs to find ``D/admin.json``, and only ``umbra controller ...`` needs the CA,
the store and the web stack that `umbranet.controller.home` brings in. The client commands
(``dial``, ``status``, ``enroll``, ...) import this module instead, so they start fast.

Layout under the home ``D`` (see docs/architecture.md)::

    D/controller/ca.key  ca.pem  signer.key  jwt.key  server.key  server.pem  config.json  umbra.db
    D/admin.json         the admin identity file (mode 0600), used by the management CLI
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ControllerHome", "HomeError"]


class HomeError(Exception):
    """The home directory is missing, already initialised, or holds something unusable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


class ControllerHome:
    """Paths inside a controller home directory (nothing is read or created here)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser()
        self.dir = self.root / "controller"
        self.ca_key = self.dir / "ca.key"
        self.ca_pem = self.dir / "ca.pem"
        self.signer_key = self.dir / "signer.key"
        self.jwt_key = self.dir / "jwt.key"
        self.server_key = self.dir / "server.key"
        self.server_pem = self.dir / "server.pem"
        self.config_json = self.dir / "config.json"
        self.db_path = self.dir / "umbra.db"
        self.admin_file = self.root / "admin.json"

    def is_initialised(self) -> bool:
        return self.config_json.exists()

    def default_db_url(self) -> str:
        return f"sqlite:///{self.db_path.resolve()}"
