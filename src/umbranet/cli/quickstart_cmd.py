"""``umbra quickstart``: a whole demo network on one machine, in the foreground."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from umbranet.cli.common import out

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add ``umbra quickstart`` to `app`."""
    app.command("quickstart")(quickstart)


def quickstart(
    directory: Annotated[Path, typer.Option("--dir", help="Where the network lives.")] = Path(
        ".umbra-demo"
    ),
    router_port: Annotated[int, typer.Option("--router-port")] = 7443,
    once: Annotated[
        bool, typer.Option("--once", help="Stop after the first fetch (for scripts and CI).")
    ] = False,
) -> None:
    """Run controller + router, serve a demo HTTP service dark, and fetch it through the overlay."""
    from umbranet.quickstart import Quickstart

    root = directory.resolve()
    network = Quickstart(root, router_port=router_port, say=lambda m: out.print(f"• {m}"))
    try:
        response = network.start()
        head, _, body = response.partition(b"\r\n\r\n")
        out.print("• fetched http://demo-web/ through the overlay:")
        out.print(f"  [bold]{head.splitlines()[0].decode()}[/]")
        out.print(body.decode("utf-8", "replace").rstrip())
        if once:
            return
        d = f"--home {root}"
        out.print("\n[bold]Running.[/] Try, in another terminal:")
        out.print(f"  umbra {d} identity list")
        out.print(f"  umbra {d} service list")
        out.print(f"  umbra demo fetch --identity {root}/demo-client.json /hello")
        out.print(f"  umbra {d} identity create bob --attr demo-clients -o bob.token")
        out.print("  umbra enroll bob.token -o bob.json && umbra demo fetch --identity bob.json")
        out.print(f"  umbra {d} identity disable demo-client   # its next dial is refused")
        out.print("Ctrl-C stops everything.")
        network.wait()
    except RuntimeError as exc:
        out.print(f"[bold red]quickstart failed:[/] {exc}")
        raise typer.Exit(1) from exc
    finally:
        network.stop()
