"""``umbra controller init|run``: create a controller home, serve the controller from it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from umbranet.cli.common import emit, handle_errors, out, state
from umbranet.controller.home import (
    DEFAULT_ADDRESS,
    DEFAULT_TRUST_DOMAIN,
    init_home,
    load_home,
)

__all__ = ["app"]

app = typer.Typer(help="Create and run the controller (the control plane).", no_args_is_help=True)


@app.command("init")
def init(
    ctx: typer.Context,
    trust_domain: Annotated[
        str, typer.Option("--trust-domain", help="The network's trust domain.")
    ] = DEFAULT_TRUST_DOMAIN,
    address: Annotated[
        str, typer.Option("--address", help="HOST:PORT the controller listens on.")
    ] = DEFAULT_ADDRESS,
) -> None:
    """Create the CA, signing key, server certificate, database and the admin identity."""
    cli = state(ctx)
    with handle_errors(cli):
        home, admin = init_home(
            cli.home, datetime.now(UTC), trust_domain=trust_domain, address=address
        )
    summary = {
        "home": str(home.root),
        "trust_domain": trust_domain,
        "controller_url": admin.controller_url,
        "admin_identity": str(home.admin_file),
    }

    def human() -> None:
        out.print(f"Initialised controller in [bold]{home.dir}[/]")
        out.print(f"  trust domain    {trust_domain}")
        out.print(f"  controller URL  {admin.controller_url}")
        out.print(f"  admin identity  {home.admin_file} (keep it private)")
        out.print("Start it with: [bold]umbra controller run[/]")

    emit(cli, summary, human)


@app.command("run")
def run(
    ctx: typer.Context,
    posture_interval: Annotated[
        float,
        typer.Option(
            "--posture-interval",
            envvar="UMBRA_POSTURE_INTERVAL",
            min=0.1,
            help="Seconds between re-evaluations of every endpoint's posture.",
        ),
    ] = 60.0,
) -> None:
    """Serve the controller API (HTTPS, client certificates) until interrupted."""
    # Imported here so `umbra --help` does not pay for uvicorn and FastAPI.
    from umbranet.controller import server

    cli = state(ctx)
    with handle_errors(cli):
        loaded = load_home(cli.home)
        out.print(f"controller for {loaded.config.trust_domain} on {loaded.config.url}")
        server.serve(loaded, posture_interval=posture_interval, log_format=cli.log_format)
