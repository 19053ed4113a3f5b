"""``umbra quickstart``: a whole demo network on one machine, in the foreground."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from umbranet.cli.common import err, out

__all__ = ["register", "umbra_command"]


def register(app: typer.Typer) -> None:
    """Add ``umbra quickstart`` to `app`."""
    app.command("quickstart")(quickstart)


def umbra_command() -> str:
    """How to type `umbra` in the user's shell: plain when it is this one on PATH, else the
    path of the one beside this Python (``.venv/bin/umbra``), so the hints work when copied."""
    beside = Path(sys.executable).parent / "umbra"
    on_path = shutil.which("umbra")
    if on_path is not None and Path(on_path).resolve() == beside.resolve():
        return "umbra"
    relative = os.path.relpath(beside)
    return relative if not relative.startswith("..") else str(beside)


def quickstart(
    directory: Annotated[Path, typer.Option("--dir", help="Where the network lives.")] = Path(
        ".umbra-demo"
    ),
    router_port: Annotated[
        int, typer.Option("--router-port", help="The router's port on 127.0.0.1.")
    ] = 7443,
    controller_port: Annotated[
        int | None,
        typer.Option(
            "--controller-port",
            help="The controller's port on 127.0.0.1 (default 8443, or what --dir was made with).",
        ),
    ] = None,
    reset: Annotated[
        bool, typer.Option("--reset", help="Delete the network in --dir first and start anew.")
    ] = False,
    once: Annotated[
        bool, typer.Option("--once", help="Stop after the first fetch (for scripts and CI).")
    ] = False,
) -> None:
    """Run controller + router, serve a demo HTTP service dark, and fetch it through the overlay."""
    from umbranet.quickstart import (
        DEFAULT_CONTROLLER_PORT,
        Quickstart,
        QuickstartError,
        existing_controller_port,
    )
    from umbranet.quickstart import reset as reset_network

    root = directory.resolve()
    try:
        if reset and reset_network(root):
            out.print(f"• deleted the old network in {root}", markup=False)
        port = controller_port or existing_controller_port(root) or DEFAULT_CONTROLLER_PORT
    except QuickstartError as exc:
        _failed(str(exc))

    def say(message: str) -> None:
        out.print(f"• {message}", markup=False)

    network = Quickstart(root, router_port=router_port, controller_port=port, say=say)
    try:
        response = network.start()
        head, _, body = response.partition(b"\r\n\r\n")
        out.print("• fetched http://demo-web/ through the overlay:")
        out.print(f"  {head.splitlines()[0].decode()}", style="bold", markup=False)
        out.print(body.decode("utf-8", "replace").rstrip(), markup=False)
        if once:
            return
        _hints(root)
        network.wait()
    except RuntimeError as exc:  # QuickstartError, and a child that died
        network.stop()
        _failed(str(exc))
    finally:
        network.stop()


def _hints(root: Path) -> None:
    umbra = umbra_command()
    d = f"--home {root}"
    lines = [
        f"{umbra} {d} identity list",
        f"{umbra} {d} service list",
        f"{umbra} demo fetch --identity {root}/demo-client.json /hello",
        f"{umbra} {d} identity create bob --attr demo-clients -o bob.token",
        f"{umbra} enroll bob.token -o bob.json && {umbra} demo fetch --identity bob.json",
        f"{umbra} {d} identity disable demo-client   # its next dial is refused",
    ]
    out.print("\nRunning.", style="bold", end="", markup=False)
    out.print(" Try, in another terminal:", markup=False)
    for line in lines:
        out.print(f"  {line}", markup=False)
    out.print("Ctrl-C stops everything; `--reset` starts a fresh network next time.", markup=False)


def _failed(message: str) -> NoReturn:
    err.print("quickstart failed:", style="bold red", end=" ", markup=False)
    err.print(message, markup=False)
    raise typer.Exit(1)
