"""URL host -> service name: how HTTP clients address dark services by URL.

Unmodified HTTP code says `http://billing.umbra/invoices`; the overlay knows services by
name. The rule is deliberately small so it can be explained in one line: an explicit mapping
wins, else a configured suffix (default `.umbra`) is stripped, else the bare host is the
service. The port is ignored: a service is the unit of access, not a port on a host.

    ServiceNamer().service_for("billing.umbra")            -> "billing"
    ServiceNamer().service_for("billing")                  -> "billing"
    ServiceNamer(mapping={"api.example": "billing"}).service_for("api.example") -> "billing"
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from umbranet.sdk.errors import UmbraError

__all__ = ["DEFAULT_SUFFIX", "NamingError", "ServiceNamer"]

DEFAULT_SUFFIX = ".umbra"

# The controller's rule for service and identity names (docs/architecture.md).
_SERVICE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


class NamingError(UmbraError, ValueError):
    """A URL host that names no service (code `bad_service_name`)."""


@dataclass(frozen=True, slots=True)
class ServiceNamer:
    """Maps URL hosts to service names: explicit `mapping`, else strip `suffix`, else as is.

    Hosts compare case-insensitively and without a trailing dot, as DNS names do.
    """

    suffix: str = DEFAULT_SUFFIX
    mapping: Mapping[str, str] = field(default_factory=dict)

    def service_for(self, host: str) -> str:
        """The service `host` names, or NamingError with the reason it names none."""
        key = _normalize(host)
        for name, service in self.mapping.items():
            if _normalize(name) == key:
                return _checked(service, host)
        suffix = _normalize(self.suffix)
        if suffix and not suffix.startswith("."):
            suffix = "." + suffix
        if suffix and key.endswith(suffix) and len(key) > len(suffix):
            key = key[: -len(suffix)]
        return _checked(key, host)

    def __call__(self, host: str) -> str:
        return self.service_for(host)


def _normalize(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host


def _checked(service: str, host: str) -> str:
    if not _SERVICE_NAME.fullmatch(service):
        raise NamingError(
            "bad_service_name",
            f"host {host!r} does not name a service (names match {_SERVICE_NAME.pattern})",
        )
    return service
