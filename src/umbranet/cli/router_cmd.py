"""``umbra router ...``: enroll and run a router.

PLACEHOLDER owned by the lead: add ``enroll`` and ``run`` here. The admin commands
(``create``, ``list``) are added to this same sub-app by `umbranet.cli.router_admin_cmd`.
"""

from __future__ import annotations

import typer

__all__ = ["app"]

app = typer.Typer(help="Create, enroll and run routers.", no_args_is_help=True)
