"""Root mode on a host whose DNS belongs to systemd-resolved: a link of our own with a DNS scope.

When ``/etc/resolv.conf`` is resolved's stub file (a symlink to
``/run/systemd/resolve/stub-resolv.conf`` or ``/usr/lib/systemd/resolv.conf``), apps ask
resolved at 127.0.0.53 and rewriting the file would be undone by resolved and by every
package that expects it. Instead the agent gives resolved a *link-scoped* DNS server, the way
VPN clients do:

- a dummy link (`LINK`) with one /32 address: resolved only gives a DNS scope to a link that
  is up, has a carrier and holds a routable address, and it ignores loopback entirely. Where
  the kernel has no dummy driver (some VM and container kernels) an ``ifb`` link, which also
  carries nothing and is up with a carrier, takes its place (`LINK_KINDS`);
- ``resolvectl dns`` pointing that link at the agent's DNS stub (resolved sends queries for a
  loopback server over loopback, whichever link names it);
- ``resolvectl domain`` with the routing-only domain ``~<suffix>`` plus the intercept host
  names, so only those names reach the stub and every other lookup stays where it was;
- ``default-route false`` and no LLMNR, mDNS, DNSSEC or DNS-over-TLS on the link: the stub is
  a plain unsigned resolver for names that exist nowhere else.

Undoing is ``resolvectl revert`` and deleting the link (which alone drops everything resolved
kept for it). The stub's own upstreams come from the file resolved writes for that purpose
(``/run/systemd/resolve/resolv.conf``), never from 127.0.0.53, which would route a name under
our domains back to us.

The functions here only say what to run; `redirect` records the plan and runs them.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from umbranet.agent.config import ConfigError

__all__ = [
    "LINK",
    "LINK_KINDS",
    "RESOLVED_STUBS",
    "add_link_command",
    "domains_command",
    "manages",
    "routing_domains",
    "setup_commands",
    "undo_commands",
    "upstreams_file",
]

LINK = "umbra-dns"
# Link types to try in order: each carries no traffic, is up with a carrier once set up.
LINK_KINDS = ("dummy", "ifb")
# Addresses resolved itself listens on: never an upstream for the stub (a loop).
RESOLVED_STUBS = ("127.0.0.53", "127.0.0.54")
# Link targets meaning "ask resolved at 127.0.0.53" (its generated file and its static copy).
_STUB_FILES = ("/run/systemd/resolve/stub-resolv.conf", "/usr/lib/systemd/resolv.conf")
# resolved's list of its real upstreams; apps reading it bypass resolved altogether.
_UPLINK_FILE = "/run/systemd/resolve/resolv.conf"


def manages(resolv_path: Path) -> bool:
    """True when `resolv_path` is resolved's stub file, False for a plain file we may rewrite;
    ConfigError for any other symlink or a missing file (root mode edits neither)."""
    if not resolv_path.is_symlink():
        if not resolv_path.is_file():
            raise ConfigError("no_resolv_conf", f"{resolv_path} does not exist")
        return False
    target = _link_target(resolv_path)
    if target.endswith(_STUB_FILES):
        if shutil.which("resolvectl") is None:
            raise ConfigError(
                "missing_tool",
                f"{resolv_path} belongs to systemd-resolved; root mode needs `resolvectl` "
                "(Debian: systemd-resolved) to add its DNS there",
            )
        return True
    if target.endswith(_UPLINK_FILE):
        raise ConfigError(
            "resolv_conf_managed",
            f"{resolv_path} is systemd-resolved's upstream list ({target}): apps bypass "
            "resolved, so a resolved DNS scope would not be asked; link it to "
            "/run/systemd/resolve/stub-resolv.conf instead",
        )
    raise ConfigError(
        "resolv_conf_managed", f"{resolv_path} is a symlink to {target}; root mode will not edit it"
    )


def upstreams_file(resolv_path: Path) -> Path:
    """Where resolved lists its real upstream servers, beside the stub file `resolv_path`
    points at (so a test's temporary root works like ``/``)."""
    target = Path(_link_target(resolv_path))
    if target.name == "stub-resolv.conf":
        return target.with_name("resolv.conf")
    return Path(_UPLINK_FILE)


def routing_domains(suffix: str, names: Iterable[str]) -> list[str]:
    """The routing-only domains (``~name``) that send our names to the stub: the suffix, and
    every other name the stub answers (intercept host names, ``--dns-name``)."""
    suffix = suffix.strip(".").lower()
    found = {suffix}
    for given in names:
        name = given.strip(".").lower()
        if not name or name == suffix or name.endswith("." + suffix) or _is_address(name):
            continue
        found.add(name)
    return [f"~{name}" for name in sorted(found, key=lambda n: (n != suffix, n))]


def add_link_command(link: str, kind: str) -> list[str]:
    """Create the link (one of `LINK_KINDS`); resolvectl refuses a link that does not exist."""
    return ["ip", "link", "add", link, "type", kind]


def setup_commands(
    link: str, link_address: str, stub_address: str, stub_port: int, domains: list[str]
) -> list[list[str]]:
    """The commands that give resolved our DNS scope once the link exists, in order."""
    server = stub_address if stub_port == 53 else f"{stub_address}:{stub_port}"
    return [
        ["ip", "-4", "addr", "add", f"{link_address}/32", "dev", link],
        ["ip", "link", "set", link, "up"],
        ["resolvectl", "dns", link, server],
        domains_command(link, domains),
        ["resolvectl", "default-route", link, "false"],
        ["resolvectl", "llmnr", link, "no"],
        ["resolvectl", "mdns", link, "no"],
        ["resolvectl", "dnssec", link, "no"],
        ["resolvectl", "dnsovertls", link, "no"],
    ]


def domains_command(link: str, domains: list[str]) -> list[str]:
    """Replace the link's routing domains as a whole."""
    return ["resolvectl", "domain", link, *domains]


def undo_commands(link: str) -> list[list[str]]:
    """Forget the link's DNS settings, then remove the link (which alone would drop them)."""
    return [["resolvectl", "revert", link], ["ip", "link", "del", link]]


def _link_target(path: Path) -> str:
    """The absolute, normalised place a symlink points at (without following it further, so
    a dangling link and a link inside a temporary root both work)."""
    target = os.readlink(path)
    return os.path.normpath(os.path.join(path.parent, target))


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
