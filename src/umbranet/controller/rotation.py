"""Ticket-key rotation in the controller's home directory, with an overlap period.

`rotate_ticket_key` makes a new signing key current and keeps the old one as *retired*
until ``now + overlap``: during the overlap the bundle trusts both (tickets signed by either
verify everywhere, so live streams and outstanding tickets keep working) and bundle updates
are signed by both (`Authority.bundle_updates`), so every holder can check the new bundle
against the one it has. Holders pick the update up at their next renewal (renewal happens at
half a certificate's life, so an overlap of at least one certificate lifetime reaches every
live identity) or when a router sees a newer ``bundle_version`` on the event stream.

State: ``controller/rotation.json`` ``{"bundle_version": n, "retired": [{"key": file,
"until": ISO time}]}``; retired keys are ``controller/signer-<kid>.key`` (0600). The bundle
version the controller serves is ``bundle_version`` plus the number of retired keys whose
overlap has ended, so it grows when a key is dropped as well as when one is added.

The rotation is done on the home directory; a running controller takes it up at restart.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from umbranet.pki import PkiError, Signer

__all__ = ["DEFAULT_OVERLAP", "Rotation", "load_rotation", "rotate_ticket_key"]

DEFAULT_OVERLAP = timedelta(hours=48)


@dataclass(frozen=True, slots=True)
class Rotation:
    """What the authority needs: keys still in overlap, and the bundle version to serve."""

    retired: tuple[Signer, ...]
    bundle_version: int


def rotate_ticket_key(
    controller_dir: Path, now: datetime, overlap: timedelta = DEFAULT_OVERLAP
) -> str:
    """Make a new ticket-signing key current; returns its key id."""
    if overlap < timedelta(0):
        raise ValueError("the overlap cannot be negative")
    state = _read_state(controller_dir)
    current = controller_dir / "signer.key"
    old = Signer.from_pem(current.read_bytes())
    retired_name = f"signer-{old.key_id}.key"
    _write_private(controller_dir / retired_name, old.to_pem())
    state["retired"].append({"key": retired_name, "until": (now + overlap).isoformat()})
    state["bundle_version"] += 1
    new = Signer.generate()
    tmp = controller_dir / "signer.key.new"
    _write_private(tmp, new.to_pem())
    os.replace(tmp, current)
    _write_state(controller_dir, state)
    return new.key_id


def load_rotation(controller_dir: Path, now: datetime) -> Rotation:
    """The retired keys still in overlap at `now` and the bundle version to serve."""
    state = _read_state(controller_dir)
    retired: list[Signer] = []
    ended = 0
    for entry in state["retired"]:
        if datetime.fromisoformat(entry["until"]) <= now:
            ended += 1
            continue
        retired.append(Signer.from_pem((controller_dir / entry["key"]).read_bytes()))
    return Rotation(tuple(retired), state["bundle_version"] + ended)


def _read_state(controller_dir: Path) -> dict[str, Any]:
    path = controller_dir / "rotation.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"bundle_version": 0, "retired": []}
    except ValueError as exc:
        raise PkiError("key_invalid", f"{path.name} is not valid JSON") from exc
    if (
        not isinstance(data, dict)
        or type(data.get("bundle_version")) is not int
        or not isinstance(data.get("retired"), list)
        or not all(
            isinstance(e, dict)
            and isinstance(e.get("key"), str)
            and isinstance(e.get("until"), str)
            and "/" not in e["key"]
            for e in data["retired"]
        )
    ):
        raise PkiError("key_invalid", f"{path.name} is malformed")
    return data


def _write_state(controller_dir: Path, state: dict[str, Any]) -> None:
    tmp = controller_dir / "rotation.json.new"
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, controller_dir / "rotation.json")


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
