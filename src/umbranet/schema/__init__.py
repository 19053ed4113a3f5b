"""The controller's REST models, shared: the controller validates and renders with them, the
controller client (`umbranet.client`) parses answers with them.

A floor of its own just above the ground: it imports pydantic and nothing of umbranet's layers,
so the client can use it without pulling in the controller (FastAPI, SQLAlchemy). The models
are in `api`; this package exports all of them under the same names.
"""

from umbranet.schema.api import *  # noqa: F403
from umbranet.schema.api import __all__ as __all__
