"""The control plane: identities, enrollment, services, session tickets and the router registry.

Layout: `store/` (ORM models, repositories, migrations), `service/` (use cases, each taking a
session and `now`), `api/` (thin FastAPI routes), `authz` (the one place access is decided),
`home` (the controller's directory on disk) and `server` (uvicorn over mutual TLS).
"""
