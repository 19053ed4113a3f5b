"""``umbra policy get|set|test|history|rollback|explain`` (admin).

``set`` validates, runs the document's tests and applies it atomically on the controller; a
refused document prints the code, line/column and reason, and the old version stays in force.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from umbranet.cli.common import (
    admin_call,
    admin_client,
    emit,
    fail,
    handle_errors,
    out,
    run_async,
    state,
    table,
)

__all__ = ["app", "register"]

app = typer.Typer(help="Manage the policy document.", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    """Add ``policy`` (sub-app) to the root command (``audit`` is `cli.audit_cmd`)."""
    root.add_typer(app, name="policy")


def _read(ctx: typer.Context, file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except OSError as exc:
        fail(state(ctx), "unreadable_file", f"cannot read {file}: {exc.strerror}")


def _summary(info: dict[str, Any]) -> None:
    comment = f" ({info['comment']})" if info.get("comment") else ""
    out.print(
        f"policy version {info['version']} by {info['created_by']} at {info['created_at']}"
        f"{comment}",
        markup=False,
        highlight=False,
    )


@app.command("get")
def get(ctx: typer.Context) -> None:
    """Print the policy in force."""
    cli = state(ctx)

    info = admin_call(cli, lambda client: client.get_policy())
    emit(cli, info, lambda: print(info["text"]))


@app.command("set")
def set_(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="The HuJSON policy document.")],
    comment: Annotated[str | None, typer.Option("--comment", help="Why it changed.")] = None,
) -> None:
    """Validate, test and apply a policy document."""
    cli = state(ctx)
    text = _read(ctx, file)

    info = admin_call(cli, lambda client: client.set_policy(text, comment))
    emit(cli, info, lambda: _summary(info))


@app.command("test")
def test(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="The HuJSON policy document.")],
) -> None:
    """Validate and run a document's tests without applying it."""
    cli = state(ctx)
    text = _read(ctx, file)

    result = admin_call(cli, lambda client: client.test_policy(text))

    def human() -> None:
        out.print("policy is valid and its tests pass")
        for warning in result.get("warnings", []):
            out.print(f"warning: {warning}", markup=False, highlight=False)

    emit(cli, result, human)


@app.command("history")
def history(ctx: typer.Context) -> None:
    """List stored policy versions, newest first."""
    cli = state(ctx)

    rows = admin_call(cli, lambda client: client.policy_history())
    emit(
        cli,
        rows,
        lambda: table(
            "Policy versions",
            ["version", "created at", "by", "comment"],
            [[r["version"], r["created_at"], r["created_by"], r.get("comment")] for r in rows],
        ),
    )


@app.command("rollback")
def rollback(
    ctx: typer.Context,
    version: Annotated[int, typer.Argument(help="The version to put back in force.")],
) -> None:
    """Put an old version back in force (saved as a new version)."""
    cli = state(ctx)

    info = admin_call(cli, lambda client: client.rollback_policy(version))
    emit(cli, info, lambda: _summary(info))


@app.command("explain")
def explain(
    ctx: typer.Context,
    identity: Annotated[str | None, typer.Argument(help="Identity name.")] = None,
    service: Annotated[
        str | None,
        typer.Argument(
            help="Service name, or (network rules) ADDRESS[:PORT][/tcp|udp|icmp] or "
            "PEER:PORT, e.g. 10.1.2.3:443/tcp."
        ),
    ] = None,
    *,
    decision: Annotated[
        str | None,
        typer.Option("--id", help="A refused ticket's decision id, as its endpoint saw it."),
    ] = None,
    action: Annotated[str, typer.Option("--action", help="dial or bind.")] = "dial",
    port: Annotated[int | None, typer.Option("--port", help="Destination port.")] = None,
    method: Annotated[str | None, typer.Option("--method", help="HTTP method.")] = None,
    path: Annotated[str | None, typer.Option("--path", help="HTTP path.")] = None,
) -> None:
    """Why IDENTITY may or may not reach SERVICE (every rule considered), or, with --id, why
    a ticket was refused (endpoints are told only the decision id)."""
    cli = state(ctx)
    if (method is None) != (path is None):
        fail(cli, "invalid_arguments", "--method and --path go together")
    if decision is None and (identity is None or service is None):
        fail(cli, "invalid_arguments", "give IDENTITY and SERVICE, or --id DECISION")

    async def call() -> dict[str, Any]:
        async with admin_client(cli) as client:
            if decision is not None:
                return await client.decision(decision)
            assert identity is not None and service is not None
            if _network_target(service):
                answer: dict[str, Any] = await client.network_explain(identity, service)
                answer.setdefault("rendered", _render_network(answer))
                return answer
            return await client.explain(
                identity, service, action=action, port=port, method=method, path=path
            )

    with handle_errors(cli):
        report = run_async(call)
    emit(cli, report, lambda: print(report.get("rendered", report.get("reason", ""))))


def _network_target(text: str) -> bool:
    """Service names hold neither ``:`` nor ``/``; addresses and ``peer:port`` do."""
    return ":" in text or "/" in text or text[:1].isdigit()


def _render_network(answer: dict[str, Any]) -> str:
    lines = [
        f"{'ALLOW' if answer.get('allowed') else 'DENY'}: {answer.get('request')}",
        f"  reason: {answer.get('reason')}",
    ]
    if answer.get("peer"):
        lines.append(f"  address of peer {answer['peer']}")
    for route in answer.get("routes") or []:
        lines.append(f"  routed via {route['identity']} ({route['prefix']})")
    for rule in answer.get("rules") or []:
        mark = "=>" if rule["decisive"] else ("+ " if rule["matched"] else "- ")
        lines.append(f"    {mark} {rule['rule']}: {rule['text']}")
        lines.append(f"         {rule['why']}")
    if answer.get("unrelated_rules"):
        lines.append(f"  {answer['unrelated_rules']} other network rules name neither side")
    return "\n".join(lines)
