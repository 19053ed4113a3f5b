"""What exists outside the policy document: the services and identities of the network.

The compiler checks names against it (a rule about ``svc:biling`` is a typo, refused), and the
view compiler expands selectors through it (``attr:web`` -> the services carrying ``web``;
``group:eng`` -> the identities in it). The controller keeps one `Inventory` in memory and
updates it as identities and services are created, changed, disabled or deleted; each change
bumps `version`, which drops the policy's cached peer sets.

Disabled identities should be removed, so that nobody receives their keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from umbranet.policy.model import ServiceRef, Subject, normalize_attribute, normalize_tag

__all__ = ["Inventory"]


class Inventory:
    """Services (name -> attributes) and identities (name -> tags), indexed both ways."""

    def __init__(
        self,
        services: Mapping[str, Iterable[str]] | None = None,
        identities: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self.version = 0
        self._services: dict[str, ServiceRef] = {}
        self._by_attribute: dict[str, set[str]] = {}
        self._identities: dict[str, Subject] = {}
        self._by_tag: dict[str, set[str]] = {}
        self._all_names: frozenset[str] | None = None
        for name, attributes in (services or {}).items():
            self.put_service(name, attributes)
        for name, tags in (identities or {}).items():
            self.put_identity(name, tags)

    # -- services ------------------------------------------------------------------------------

    def put_service(self, name: str, attributes: Iterable[str] = ()) -> ServiceRef:
        """Add or replace a service; ``attr:web`` and ``web`` are the same attribute."""
        self.remove_service(name)
        service = ServiceRef.of(name, attributes)
        self._services[name] = service
        for attribute in service.attributes:
            self._by_attribute.setdefault(attribute, set()).add(name)
        self.version += 1
        return service

    def remove_service(self, name: str) -> None:
        old = self._services.pop(name, None)
        if old is None:
            return
        for attribute in old.attributes:
            holders = self._by_attribute[attribute]
            holders.discard(name)
            if not holders:
                del self._by_attribute[attribute]
        self.version += 1

    def service(self, name: str) -> ServiceRef | None:
        return self._services.get(name)

    def services(self) -> Iterator[ServiceRef]:
        return iter(self._services.values())

    def service_names(self) -> Iterable[str]:
        return self._services.keys()

    def services_with(self, attribute: str) -> Iterable[str]:
        """Names of the services carrying ``attribute`` (bare or ``attr:``-prefixed)."""
        return self._by_attribute.get(normalize_attribute(attribute), ())

    def has_attribute(self, attribute: str) -> bool:
        return normalize_attribute(attribute) in self._by_attribute

    # -- identities ----------------------------------------------------------------------------

    def put_identity(self, name: str, attributes: Iterable[str] = ()) -> Subject:
        """Add or replace an identity; ``tag:ci`` and ``ci`` are the same tag."""
        self.remove_identity(name)
        subject = Subject(name, frozenset(normalize_tag(a) for a in attributes))
        self._identities[name] = subject
        for tag in subject.tags:
            self._by_tag.setdefault(tag, set()).add(name)
        self._all_names = None
        self.version += 1
        return subject

    def remove_identity(self, name: str) -> None:
        old = self._identities.pop(name, None)
        if old is None:
            return
        for tag in old.tags:
            holders = self._by_tag[tag]
            holders.discard(name)
            if not holders:
                del self._by_tag[tag]
        self._all_names = None
        self.version += 1

    def identity(self, name: str) -> Subject | None:
        return self._identities.get(name)

    def identities(self) -> Iterator[Subject]:
        return iter(self._identities.values())

    def identity_names(self) -> frozenset[str]:
        """Every identity name, as one shared frozenset (cached until the next change)."""
        if self._all_names is None:
            self._all_names = frozenset(self._identities)
        return self._all_names

    def identities_with(self, tag: str) -> Iterable[str]:
        """Names of the identities carrying ``tag`` (bare or ``tag:``-prefixed)."""
        return self._by_tag.get(normalize_tag(tag), ())

    def __len__(self) -> int:
        return len(self._identities)
