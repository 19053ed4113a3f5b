"""``umbra router enroll|run`` (the admin commands ``create``/``list``/``delete`` join this
sub-app from `umbranet.cli.router_admin_cmd` in `register`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from umbranet.cli import router_admin_cmd
from umbranet.cli.common import emit, fail, handle_errors, out, state
from umbranet.obs import configure_logging

if TYPE_CHECKING:
    from umbranet.pki import IdentityFile

__all__ = ["app", "register"]

app = typer.Typer(help="Create, enroll and run routers.", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    """Add ``router`` with the admin commands and the router's own to `root`."""
    router_admin_cmd.register(app)
    root.add_typer(app, name="router")


@app.command("enroll")
def enroll(
    ctx: typer.Context,
    token: Annotated[
        str, typer.Argument(help="The router's enrollment token, or a file holding it.")
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Identity file to write.")],
) -> None:
    """Enroll a router (its keys are made here; only a CSR is sent)."""
    from umbranet.aio.runtime import run
    from umbranet.client.controller import ControllerClient
    from umbranet.pki import SpiffeId

    cli = state(ctx)
    with handle_errors(cli):
        text = token
        if not token.startswith("ue1.") and Path(token).is_file():
            text = Path(token).read_text().strip()

        async def call() -> IdentityFile:
            return await ControllerClient.enroll(text)

        identity = run(call())
        if SpiffeId.parse(identity.spiffe_id).kind != "router":
            fail(cli, "not_a_router", f"{identity.spiffe_id} is not a router identity")
        identity.save(output)
    emit(
        cli,
        {"spiffe_id": identity.spiffe_id, "identity_file": str(output)},
        lambda: out.print(f"router enrolled as {identity.spiffe_id}; wrote {output}"),
    )


@app.command("run")
def run_cmd(
    ctx: typer.Context,
    *,
    identity: Annotated[Path, typer.Option("--identity", "-i", help="Router identity file.")],
    listen: Annotated[str, typer.Option("--listen", help="HOST:PORT for endpoint links.")] = (
        "127.0.0.1:7443"
    ),
    advertise: Annotated[
        str | None, typer.Option("--advertise", help="HOST:PORT endpoints use (default: listen).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every link.")] = False,
    metrics_listen: Annotated[
        str | None,
        typer.Option(
            "--metrics-listen",
            help="HOST:PORT (or a PORT on 127.0.0.1) to serve GET /metrics (Prometheus text).",
        ),
    ] = None,
    handshake_timeout: Annotated[
        float,
        typer.Option(
            "--handshake-timeout", min=0.1, help="Seconds a circuit may take to open (then reset)."
        ),
    ] = 10.0,
    max_pending_per_identity: Annotated[
        int,
        typer.Option(
            "--max-pending-per-identity",
            min=1,
            help="Circuits one identity may have waiting for their handshake.",
        ),
    ] = 256,
    stun_listen: Annotated[
        str | None,
        typer.Option(
            "--stun-listen",
            help="HOST:PORT (UDP) to answer STUN binding requests on, announced to endpoints.",
        ),
    ] = None,
    no_transit: Annotated[
        bool,
        typer.Option(
            "--no-transit",
            help="Refuse to pass on dials that neither start nor end here (whatever the "
            "routes say); the controller can also mark a router so.",
        ),
    ] = False,
) -> None:
    """Serve endpoint links (mutual TLS) until interrupted."""
    from umbranet.aio.runtime import run
    from umbranet.router.runner import run_router

    cli = state(ctx)
    configure_logging(logging.INFO if verbose else logging.WARNING, cli.log_format)
    with handle_errors(cli):
        from umbranet.router.quotas import SwitchLimits

        limits = SwitchLimits(
            handshake_timeout=handshake_timeout,
            max_pending_per_identity=max_pending_per_identity,
        )
        run(
            run_router(
                identity,
                listen,
                advertise,
                metrics_listen=metrics_listen,
                limits=limits,
                stun_listen=stun_listen,
                no_transit=no_transit,
            )
        )
