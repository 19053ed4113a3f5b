"""``umbra controller init|join|run|migrate|rotate|backup|restore``: create a controller home
(or a replica's, on a shared database), serve the controller from it, rotate its keys, and
save or restore it."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from umbranet.cli.common import CliState, emit, fail, handle_errors, out, state
from umbranet.controller.home import (
    DEFAULT_ADDRESS,
    DEFAULT_TRUST_DOMAIN,
    ControllerConfig,
    ControllerHome,
    init_home,
    load_home,
)
from umbranet.controller.rotation import DEFAULT_OVERLAP, KeyFiles, rotate_ca, rotate_ticket_key
from umbranet.controller.secrets import KeyEncryptionKey, load_kek

__all__ = ["app"]

app = typer.Typer(help="Create and run the controller (the control plane).", no_args_is_help=True)

_DB_OPTION = typer.Option(
    "--db",
    envvar="UMBRA_DB",
    help="Database URL: sqlite:///PATH (default: umbra.db in the home) or "
    "postgresql://USER@HOST/DB for replicas sharing one database.",
)
_ADVERTISE_OPTION = typer.Option(
    "--advertise",
    envvar="UMBRA_ADVERTISE",
    help="https://HOST[:PORT] clients use to reach this controller (put in tokens and "
    "identity files), when it differs from the listen address (0.0.0.0, a load balancer).",
)
_KEK_OPTION = typer.Option(
    "--kek-file",
    envvar="UMBRA_KEK_FILE",
    help="Key-encryption key file (32 bytes, base64): the network's keys are kept in the "
    "database sealed under it, so replicas can join. init creates it if missing. "
    "Or set UMBRA_KEK.",
)


def _init_kek(path: Path | None) -> tuple[KeyEncryptionKey | None, bool]:
    """The KEK for init: read `path`, or create it there (0600) if missing; (kek, created)."""
    if path is None:
        return load_kek(), False
    if path.exists():
        return load_kek(path), False
    kek, text = KeyEncryptionKey.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text + "\n")
    return kek, True


@app.command("init")
def init(
    ctx: typer.Context,
    *,
    trust_domain: Annotated[
        str, typer.Option("--trust-domain", help="The network's trust domain.")
    ] = DEFAULT_TRUST_DOMAIN,
    address: Annotated[
        str, typer.Option("--address", "--listen", help="HOST:PORT the controller listens on.")
    ] = DEFAULT_ADDRESS,
    db: Annotated[str | None, _DB_OPTION] = None,
    kek_file: Annotated[Path | None, _KEK_OPTION] = None,
    advertise: Annotated[str | None, _ADVERTISE_OPTION] = None,
) -> None:
    """Create the CA, signing key, server certificate, database and the admin identity."""
    cli = state(ctx)
    created = False
    with handle_errors(cli):
        kek, created = _init_kek(kek_file)
        home, admin = init_home(
            cli.home,
            datetime.now(UTC),
            trust_domain=trust_domain,
            address=address,
            db_url=db,
            kek=kek,
            advertise=advertise,
        )
    summary = {
        "home": str(home.root),
        "trust_domain": trust_domain,
        "controller_url": admin.controller_url,
        "admin_identity": str(home.admin_file),
        "secrets": "database" if kek is not None else "files",
    }
    if created:
        summary["kek_file"] = str(kek_file)

    def human() -> None:
        out.print(f"Initialised controller in [bold]{home.dir}[/]")
        out.print(f"  trust domain    {trust_domain}")
        out.print(f"  controller URL  {admin.controller_url}")
        out.print(f"  admin identity  {home.admin_file} (keep it private)")
        if kek is not None:
            out.print("  network keys    in the database, sealed under the key-encryption key")
        if created:
            out.print(f"  new KEK         {kek_file} (every replica needs it; keep it private)")
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
    db: Annotated[str | None, _DB_OPTION] = None,
    kek_file: Annotated[Path | None, _KEK_OPTION] = None,
    advertise: Annotated[str | None, _ADVERTISE_OPTION] = None,
) -> None:
    """Serve the controller API (HTTPS, client certificates) until interrupted."""
    # Imported here so `umbra --help` does not pay for uvicorn and FastAPI.
    from umbranet.controller import server

    cli = state(ctx)
    with handle_errors(cli):
        kek = load_kek(kek_file) if kek_file is not None else None
        loaded = load_home(cli.home, db_url=db, kek=kek, advertise=advertise)
        out.print(f"controller for {loaded.config.trust_domain} on {loaded.config.url}")
        server.serve(loaded, posture_interval=posture_interval, log_format=cli.log_format)


@app.command("join")
def join(
    ctx: typer.Context,
    db: Annotated[str, typer.Option("--db", envvar="UMBRA_DB", help="The shared database URL.")],
    address: Annotated[
        str, typer.Option("--address", "--listen", help="HOST:PORT this replica listens on.")
    ] = DEFAULT_ADDRESS,
    kek_file: Annotated[Path | None, _KEK_OPTION] = None,
    advertise: Annotated[str | None, _ADVERTISE_OPTION] = None,
) -> None:
    """Create a new replica's home for a network whose keys are in the shared database."""
    from umbranet.controller.replica import join_home

    cli = state(ctx)
    with handle_errors(cli):
        kek = load_kek(kek_file)
        if kek is None:
            fail(cli, "kek_missing", "give the key-encryption key with --kek-file or UMBRA_KEK")
        home = join_home(
            cli.home, datetime.now(UTC), db_url=db, kek=kek, address=address, advertise=advertise
        )
        config = ControllerConfig.from_json(home.config_json.read_text())
    summary = {"home": str(home.root), "trust_domain": config.trust_domain, "url": config.url}
    emit(
        cli,
        summary,
        lambda: out.print(
            f"Joined {config.trust_domain} as a replica in [bold]{home.dir}[/]; "
            "start it with: [bold]umbra controller run[/]"
        ),
    )


@app.command("migrate")
def migrate_cmd(
    ctx: typer.Context,
    *,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only list the migrations that would run.")
    ] = False,
    db: Annotated[str | None, _DB_OPTION] = None,
) -> None:
    """Bring the database schema up to this version (as `run` does at start), or list what
    would change. Needs no keys: run it before starting upgraded replicas."""
    from umbranet.controller.store import make_engine, migrate
    from umbranet.controller.store.db import pending_migrations

    cli = state(ctx)
    home = ControllerHome(cli.home)
    with handle_errors(cli):
        if db is None:
            if not home.is_initialised():
                fail(cli, "not_initialised", f"{home.root} is not a controller home")
            db = ControllerConfig.from_json(home.config_json.read_text()).db_url
        engine = make_engine(db)
        try:
            current, steps = pending_migrations(engine)
            if not dry_run and steps:
                migrate(engine)
        finally:
            engine.dispose()
    summary = {
        "current": current,
        "pending": [{"revision": r, "summary": t} for r, t in steps],
        "applied": not dry_run and bool(steps),
    }

    def human() -> None:
        out.print(f"schema at revision {current or '(empty)'}")
        for revision, text in steps:
            out.print(f"  {'would apply' if dry_run else 'applied'} {revision}: {text}")
        if not steps:
            out.print("  up to date")

    emit(cli, summary, human)


@app.command("rotate")
def rotate(
    ctx: typer.Context,
    what: Annotated[str, typer.Argument(help="What to rotate: ticket-key or ca.")],
    overlap_hours: Annotated[
        float,
        typer.Option(
            "--overlap-hours",
            min=0.0,
            help="ticket-key: how long the old key stays trusted; ca: how long the new CA is "
            "announced before it issues. At least one certificate lifetime, so every "
            "identity renews and picks up the new bundle meanwhile.",
        ),
    ] = DEFAULT_OVERLAP.total_seconds() / 3600,
    kek_file: Annotated[Path | None, _KEK_OPTION] = None,
) -> None:
    """Rotate the ticket-signing key or the CA with an overlap; a running controller takes
    it up at restart (every replica, when the keys are in the database)."""
    cli = state(ctx)
    if what not in {"ticket-key", "ca"}:
        fail(cli, "not_supported", f"cannot rotate {what!r}; choose 'ticket-key' or 'ca'")
    home = ControllerHome(cli.home)
    if not home.is_initialised():
        fail(cli, "not_initialised", f"{home.root} is not a controller home")
    config = ControllerConfig.from_json(home.config_json.read_text())
    now, overlap = datetime.now(UTC), timedelta(hours=overlap_hours)

    def apply(where: Path | KeyFiles) -> str:
        if what == "ticket-key":
            return rotate_ticket_key(where, now, overlap)
        return rotate_ca(where, now, config.trust_domain, overlap)

    try:
        with handle_errors(cli):
            if config.secrets == "database":
                new_id = _rotate_in_database(cli, config, kek_file, now, apply)
            else:
                new_id = apply(home.dir)
    except ValueError as exc:
        fail(cli, "rotation_in_progress", str(exc))
    if what == "ticket-key":
        message = f"new ticket key {new_id}; the old one stays trusted for {overlap_hours:g} h"
    else:
        message = f"new CA {new_id[:16]} announced; it issues in {overlap_hours:g} h"
    restart = "every replica" if config.secrets == "database" else "the controller"
    emit(
        cli,
        {"rotated": what, "id": new_id, "overlap_hours": overlap_hours},
        lambda: out.print(f"{message} (restart {restart} to take it up)"),
    )


def _rotate_in_database(
    cli: CliState,
    config: ControllerConfig,
    kek_file: Path | None,
    now: datetime,
    apply: Callable[[KeyFiles], str],
) -> str:
    """`apply` to the sealed keys in the shared database, in one locked transaction."""
    from umbranet.controller.secrets import SecretStore
    from umbranet.controller.store import Database

    kek = load_kek(kek_file)
    if kek is None:
        fail(cli, "kek_missing", "give the key-encryption key with --kek-file or UMBRA_KEK")
    db = Database.open(config.db_url, migrate_schema=False)
    try:
        with SecretStore(db, kek).files(now) as files:
            return apply(files)
    finally:
        db.dispose()


@app.command("backup")
def backup(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="The archive to write (must not exist).")],
) -> None:
    """Save an SQLite home (database, keys, admin identity) in one archive, mode 0600; the
    controller may keep running. PostgreSQL: use pg_dump and keep the KEK (docs/ha.md)."""
    from umbranet.controller.backup import backup_home

    cli = state(ctx)
    with handle_errors(cli):
        summary = backup_home(cli.home, file)
    emit(
        cli,
        {"archive": str(summary.path), "files": summary.files, "db_bytes": summary.database_bytes},
        lambda: out.print(
            f"saved {len(summary.files)} files ({summary.database_bytes} database bytes) to "
            f"{summary.path}; it holds the CA key: keep it private"
        ),
    )


@app.command("restore")
def restore(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="An archive made by `controller backup`.")],
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace an existing home (stop its controller first); the current one is "
            "kept beside it as controller.replaced-TIME.",
        ),
    ] = False,
) -> None:
    """Restore a home from `controller backup`; refuses an existing home without --force."""
    from umbranet.controller.backup import restore_home

    cli = state(ctx)
    with handle_errors(cli):
        summary = restore_home(cli.home, file, datetime.now(UTC), force=force)
    result = {"home": str(summary.path), "files": summary.files}
    if summary.replaced is not None:
        result["replaced"] = str(summary.replaced)
    emit(
        cli,
        result,
        lambda: out.print(
            f"restored {summary.path}"
            + (f" (the previous home is in {summary.replaced})" if summary.replaced else "")
            + "; start it with: [bold]umbra controller run[/]"
        ),
    )
