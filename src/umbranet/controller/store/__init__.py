"""The controller store: ORM models, repositories and Alembic migrations.

SQLite (WAL) is the embedded default; the schema uses only types PostgreSQL also runs.
"""

# Imported for its tables: `Base.metadata` (what migrations are checked against) is complete.
from umbranet.controller.store import cluster_models as _cluster_models  # noqa: F401
from umbranet.controller.store import joinkey_models as _joinkey_models  # noqa: F401
from umbranet.controller.store import mesh_models as _mesh_models  # noqa: F401
from umbranet.controller.store import nat_models as _nat_models  # noqa: F401
from umbranet.controller.store import overlay_models as _overlay_models  # noqa: F401
from umbranet.controller.store.db import HEAD_REVISION, Database, make_engine, migrate
from umbranet.controller.store.models import (
    AuditEvent,
    Base,
    ControllerState,
    Enrollment,
    Identity,
    IssuedGrant,
    PolicyVersion,
    Router,
    Service,
)
from umbranet.controller.store.repository import Conflict, Store

__all__ = [
    "HEAD_REVISION",
    "AuditEvent",
    "Base",
    "Conflict",
    "ControllerState",
    "Database",
    "Enrollment",
    "Identity",
    "IssuedGrant",
    "PolicyVersion",
    "Router",
    "Service",
    "Store",
    "make_engine",
    "migrate",
]
