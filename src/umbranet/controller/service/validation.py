"""Input rules shared by the use cases: names, kinds, attributes, addresses, intercepts.

Each check raises `BadRequest` with a stable code, so every route reports a bad field the same
way whichever use case saw it first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from umbranet.controller.service.errors import BadRequest
from umbranet.pki.spiffe_id import is_valid_name

__all__ = [
    "ATTRIBUTE_PATTERN",
    "ENROLLABLE_KINDS",
    "check_address",
    "check_attributes",
    "check_host_address",
    "check_intercepts",
    "check_kind",
    "check_name",
]

ENROLLABLE_KINDS = frozenset({"device", "workload", "admin"})
"""Kinds `POST /v1/identities` may create; routers come from `POST /v1/routers`."""

ATTRIBUTE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?")
_MAX_ATTRIBUTES = 64
_MAX_INTERCEPTS = 64


def check_name(name: str) -> str:
    if not is_valid_name(name):
        raise BadRequest(
            "invalid_name",
            f"name {name!r} must match ^[a-z0-9][a-z0-9._-]{{0,62}}$",
        )
    return name


def check_kind(kind: str) -> str:
    if kind not in ENROLLABLE_KINDS:
        raise BadRequest("invalid_kind", f"kind must be one of {sorted(ENROLLABLE_KINDS)}")
    return kind


def check_attributes(attributes: Iterable[str]) -> list[str]:
    """Deduplicated, order kept; each matches `ATTRIBUTE_PATTERN`."""
    result: list[str] = []
    for attribute in attributes:
        if not isinstance(attribute, str) or not ATTRIBUTE_PATTERN.fullmatch(attribute):
            raise BadRequest(
                "invalid_attribute",
                f"attribute {attribute!r} must match {ATTRIBUTE_PATTERN.pattern}",
            )
        if attribute not in result:
            result.append(attribute)
    if len(result) > _MAX_ATTRIBUTES:
        raise BadRequest("invalid_attribute", f"at most {_MAX_ATTRIBUTES} attributes")
    return result


def check_address(address: str) -> str:
    """``host:port`` (IPv6 in brackets) where a router is reached."""
    host, port = _split_host_port(address, "invalid_address")
    _check_host(host, "invalid_address")
    _check_port(port, "invalid_address")
    return address


def check_host_address(address: str | None) -> str | None:
    """``tcp://host:port`` or ``udp://host:port``: where the hosting side forwards accepted
    streams (for ``udp://``, the datagrams each stream carries)."""
    if address is None:
        return None
    scheme, sep, rest = address.partition("://")
    if not sep or scheme not in ("tcp", "udp"):
        raise BadRequest(
            "invalid_host_address", "host address must look like tcp://HOST:PORT or udp://HOST:PORT"
        )
    host, port = _split_host_port(rest, "invalid_host_address")
    _check_host(host, "invalid_host_address")
    _check_port(port, "invalid_host_address")
    return address


def check_intercepts(intercepts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``[{"host": "db.umbra", "port": 5432}, ...]``, deduplicated."""
    result: list[dict[str, Any]] = []
    for item in intercepts:
        host, port = item.get("host"), item.get("port")
        if not isinstance(host, str) or not isinstance(port, int) or isinstance(port, bool):
            raise BadRequest("invalid_intercept", "an intercept is {host: str, port: int}")
        _check_host(host, "invalid_intercept")
        _check_port(port, "invalid_intercept")
        entry = {"host": host.lower().rstrip("."), "port": port}
        if entry not in result:
            result.append(entry)
    if len(result) > _MAX_INTERCEPTS:
        raise BadRequest("invalid_intercept", f"at most {_MAX_INTERCEPTS} intercepts")
    return result


def _split_host_port(text: str, code: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise BadRequest(code, f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


def _check_host(host: str, code: str) -> None:
    if len(host) > 253:
        raise BadRequest(code, "host name too long")
    if _HOSTNAME.fullmatch(host):
        return
    if ":" in host and all(c in "0123456789abcdefABCDEF:." for c in host):
        return  # IPv6 literal
    raise BadRequest(code, f"{host!r} is not a host name or IP address")


def _check_port(port: int, code: str) -> None:
    if not 1 <= port <= 65535:
        raise BadRequest(code, f"port {port} is out of range 1-65535")
