"""``umbra quickstart``: a whole demo network on one machine.

PLACEHOLDER owned by the lead: `register` adds the command to the main app.
"""

from __future__ import annotations

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add ``umbra quickstart`` to `app` (nothing yet)."""
