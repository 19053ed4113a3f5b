"""``umbra audit`` (admin: the newest audit rows, through the controller) and ``umbra audit
verify`` (operator: check the audit log's hash chain in the database itself).

`verify` reads the database named by the home's ``config.json`` (or ``--db``), not the API:
the check must not depend on the controller whose log it checks. It needs no keys.
"""

from __future__ import annotations

from typing import Annotated

import typer

from umbranet.cli.common import admin_call, emit, fail, handle_errors, out, state, table

__all__ = ["app"]

HELP = "Administrative changes and access refusals: who did what, when."

app = typer.Typer(help=HELP, invoke_without_command=True)


@app.callback()
def audit(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option("--limit", help="How many events, newest first.")] = 50,
    action: Annotated[
        str | None,
        typer.Option(
            "--action", help="Only this action (access.deny), or a family ending in '.' (access.)."
        ),
    ] = None,
) -> None:
    """Administrative changes and access refusals: who did what, when."""
    if ctx.invoked_subcommand is not None:
        return
    cli = state(ctx)

    rows = admin_call(cli, lambda client: client.audit(limit, action))
    emit(
        cli,
        rows,
        lambda: table(
            "Audit",
            ["at", "actor", "action", "target", "detail"],
            [[r["at"], r["actor"], r["action"], r["target"], r["detail"]] for r in rows],
        ),
    )


@app.command("verify")
def verify(
    ctx: typer.Context,
    db: Annotated[
        str | None,
        typer.Option("--db", envvar="UMBRA_DB", help="Database URL (default: the home's)."),
    ] = None,
) -> None:
    """Check the audit log's hash chain; name the first row that was edited or deleted."""
    from umbranet.controller.home import ControllerConfig, ControllerHome
    from umbranet.controller.store import Database, Store

    cli = state(ctx)
    with handle_errors(cli):
        if db is None:
            home = ControllerHome(cli.home)
            if not home.is_initialised():
                fail(cli, "not_initialised", f"{home.root} is not a controller home; or --db")
            db = ControllerConfig.from_json(home.config_json.read_text()).db_url
        database = Database.open(db, migrate_schema=False)
        try:
            with database.session() as session:
                verdict = Store(session).verify_audit_chain()
        finally:
            database.dispose()
    summary = {
        "ok": verdict.ok,
        "rows": verdict.rows,
        "head_hash": verdict.head_hash,
        "broken_at": verdict.broken_at,
        "reason": verdict.reason,
    }
    if not verdict.ok:
        where = f"row {verdict.broken_at}" if verdict.broken_at is not None else "the head"
        fail(cli, "audit_chain_broken", f"{where}: {verdict.reason}")
    emit(
        cli,
        summary,
        lambda: out.print(
            f"audit chain intact: {verdict.rows} rows; head hash {verdict.head_hash} "
            "(keep it elsewhere to anchor the chain)"
        ),
    )
