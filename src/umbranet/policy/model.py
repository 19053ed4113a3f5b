"""The policy document as typed values: who (selectors), what (services and ports), the rules.

`schema.build_policy` turns parsed HuJSON into these; `compile.compile_policy` checks their
references and indexes them. Everything here is immutable and knows its place in the text
(``line``, ``column``), so every later refusal or verdict can point back at the source.

Vocabulary (the same words appear in verdict reasons):

- a *subject* is an identity: its name and its tags (identity attributes; ``tag:ci`` in a
  policy matches the attribute ``ci`` or ``tag:ci``);
- a *source selector* picks subjects: ``alice``, ``group:eng``, ``tag:ci`` or ``*``;
- a *destination selector* picks services and ports: ``svc:billing:443,8443``,
  ``attr:web:*``, ``svc:db`` (no ports = every port) or ``*``;
- a *rule* lets (or, with ``deny``, forbids) its sources ``dial`` or ``bind`` its destinations,
  optionally only under some postures.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from umbranet.policy.posture import PostureDef, PostureReport

if TYPE_CHECKING:
    from umbranet.policy.network import Network

__all__ = [
    "ACTIONS",
    "Action",
    "DstSelector",
    "HttpRule",
    "Policy",
    "PolicyTest",
    "PortSet",
    "Rule",
    "ServiceRef",
    "SrcSelector",
    "Subject",
    "TestCase",
    "normalize_attribute",
    "normalize_tag",
]

Action = Literal["dial", "bind"]
ACTIONS: tuple[Action, ...] = ("dial", "bind")

MIN_PORT, MAX_PORT = 1, 65535


def normalize_tag(tag: str) -> str:
    """``tag:ci`` and ``ci`` name the same tag; policy code keeps the bare form."""
    return tag[4:] if tag.startswith("tag:") else tag


def normalize_attribute(attribute: str) -> str:
    """``attr:web`` and ``web`` name the same service attribute."""
    return attribute[5:] if attribute.startswith("attr:") else attribute


@dataclass(frozen=True, slots=True)
class PortSet:
    """A set of TCP/UDP ports as sorted, disjoint, non-adjacent inclusive ranges."""

    ranges: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, ranges: Iterable[tuple[int, int]]) -> PortSet:
        merged: list[tuple[int, int]] = []
        for low, high in sorted(ranges):
            if merged and low <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], high))
            else:
                merged.append((low, high))
        return cls(tuple(merged))

    @classmethod
    def parse(cls, spec: str) -> PortSet:
        """``*``, ``443``, ``443,8443``, ``8000-8100``; raise ValueError otherwise."""
        if spec == "*":
            return ALL_PORTS
        ranges: list[tuple[int, int]] = []
        for item in spec.split(","):
            low_text, _, high_text = item.partition("-")
            if not low_text.isdigit() or (high_text and not high_text.isdigit()):
                raise ValueError(f"{spec!r} is not a port list such as '443,8000-8100' or '*'")
            if len(low_text) > 5 or len(high_text) > 5:
                raise ValueError(f"port in {spec!r} is out of range 1-65535")
            low = int(low_text)
            high = int(high_text) if high_text else low
            if not MIN_PORT <= low <= high <= MAX_PORT:
                raise ValueError(f"port range {item!r} must lie within 1-65535, low first")
            ranges.append((low, high))
        return cls.of(ranges)

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and any(lo <= port <= hi for lo, hi in self.ranges)

    def __or__(self, other: PortSet) -> PortSet:
        # Fast paths first: views and decisions mostly join a set with nothing, with itself,
        # or with every port.
        if not self.ranges or self.ranges == other.ranges:
            return other
        if not other.ranges:
            return self
        if ALL_RANGES in (self.ranges, other.ranges):
            return ALL_PORTS
        return PortSet.of((*self.ranges, *other.ranges))

    def __sub__(self, other: PortSet) -> PortSet:
        result: list[tuple[int, int]] = []
        for start, high in self.ranges:
            low = start
            for cut_low, cut_high in other.ranges:
                if cut_high < low or cut_low > high:
                    continue
                if cut_low > low:
                    result.append((low, cut_low - 1))
                low = cut_high + 1
                if low > high:
                    break
            if low <= high:
                result.append((low, high))
        return PortSet(tuple(result))

    def __bool__(self) -> bool:
        return bool(self.ranges)

    @property
    def is_all(self) -> bool:
        return self.ranges == ALL_RANGES

    def __str__(self) -> str:
        if self.is_all:
            return "*"
        if not self.ranges:
            return "none"
        return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in self.ranges)


ALL_RANGES = ((MIN_PORT, MAX_PORT),)
ALL_PORTS = PortSet(ALL_RANGES)
NO_PORTS = PortSet(())


@dataclass(frozen=True, slots=True)
class Subject:
    """An identity as policy sees it: its name and its tags (bare, without ``tag:``)."""

    name: str
    tags: frozenset[str] = frozenset()

    @classmethod
    def of(cls, name: str, attributes: Iterable[str] = ()) -> Subject:
        """Build from an identity's stored attributes (``ci`` or ``tag:ci`` both give ``ci``)."""
        return cls(name, frozenset(normalize_tag(a) for a in attributes))


@dataclass(frozen=True, slots=True)
class ServiceRef:
    """A service as policy sees it: its name and its attributes (bare, without ``attr:``)."""

    name: str
    attributes: frozenset[str] = frozenset()

    @classmethod
    def of(cls, name: str, attributes: Iterable[str] = ()) -> ServiceRef:
        return cls(name, frozenset(normalize_attribute(a) for a in attributes))


SrcKind = Literal["all", "name", "group", "tag"]
DstKind = Literal["all", "svc", "attr"]


@dataclass(frozen=True, slots=True)
class SrcSelector:
    """Who: ``*`` (everyone), an identity name, ``group:<g>`` or ``tag:<t>``.

    ``value`` is the name, the full ``group:<g>`` or the bare tag.
    """

    kind: SrcKind
    value: str
    line: int | None = field(default=None, compare=False)
    column: int | None = field(default=None, compare=False)

    @property
    def text(self) -> str:
        if self.kind == "all":
            return "*"
        return f"tag:{self.value}" if self.kind == "tag" else self.value


@dataclass(frozen=True, slots=True)
class DstSelector:
    """What: ``*``, ``svc:<name>`` or ``attr:<attribute>``, and which ports (default all)."""

    kind: DstKind
    value: str
    ports: PortSet = ALL_PORTS
    line: int | None = field(default=None, compare=False)
    column: int | None = field(default=None, compare=False)

    @property
    def text(self) -> str:
        base = "*" if self.kind == "all" else f"{self.kind}:{self.value}"
        return base if self.ports.is_all else f"{base}:{self.ports}"

    def matches(self, service: ServiceRef) -> bool:
        if self.kind == "svc":
            return service.name == self.value
        if self.kind == "attr":
            return self.value in service.attributes
        return True


@dataclass(frozen=True, slots=True)
class Rule:
    """One entry of ``rules``: ``index`` is its position there, ``line`` where it starts."""

    index: int
    action: Action
    deny: bool
    src: tuple[SrcSelector, ...]
    dst: tuple[DstSelector, ...]
    postures: tuple[str, ...] = ()
    line: int | None = field(default=None, compare=False)
    column: int | None = field(default=None, compare=False)

    @property
    def label(self) -> str:
        """``rules[3] (line 42)``: how verdicts name the rule."""
        where = f" (line {self.line})" if self.line is not None else ""
        return f"rules[{self.index}]{where}"

    @property
    def text(self) -> str:
        """A one-line form: ``deny dial group:x, bob -> svc:db:5432 if posture:corp``."""
        head = f"deny {self.action}" if self.deny else self.action
        src = ", ".join(s.text for s in self.src)
        dst = ", ".join(d.text for d in self.dst)
        tail = f" if {' and '.join(self.postures)}" if self.postures else ""
        return f"{head} {src} -> {dst}{tail}"


@dataclass(frozen=True, slots=True)
class HttpRule:
    """One entry of ``http``: methods and path prefixes per source, for HTTP services.

    ``methods``/``paths`` of None mean every method / every path.
    """

    index: int
    deny: bool
    src: tuple[SrcSelector, ...]
    dst: tuple[DstSelector, ...]
    methods: frozenset[str] | None = None
    paths: tuple[str, ...] | None = None
    line: int | None = field(default=None, compare=False)
    column: int | None = field(default=None, compare=False)

    @property
    def label(self) -> str:
        where = f" (line {self.line})" if self.line is not None else ""
        return f"http[{self.index}]{where}"

    @property
    def text(self) -> str:
        head = "deny " if self.deny else ""
        src = ", ".join(s.text for s in self.src)
        dst = ", ".join(d.text for d in self.dst)
        methods = ",".join(sorted(self.methods)) if self.methods is not None else "*"
        paths = ",".join(self.paths) if self.paths is not None else "/"
        return f"{head}{methods} {paths} for {src} on {dst}"


@dataclass(frozen=True, slots=True)
class TestCase:
    """One ``accept``/``deny`` entry of a test: ``[dial|bind] svc:x[:port]``,
    ``METHOD svc:x/path`` or ``net ADDRESS[:PORT][/tcp|udp|icmp]`` (``service`` empty)."""

    __test__ = False  # not a pytest class, whatever the name says

    text: str
    service: str
    action: Action = "dial"
    port: int | None = None
    method: str | None = None
    path: str | None = None
    line: int | None = field(default=None, compare=False)
    column: int | None = field(default=None, compare=False)
    # ``net ADDRESS[:PORT][/PROTO]``: a packet checked against the network rules
    packet: tuple[str, int | None, str] | None = None


@dataclass(frozen=True, slots=True)
class PolicyTest:
    """One entry of ``tests``: a subject, what it must be able to do and what it must not."""

    __test__ = False

    index: int
    src: str
    tags: frozenset[str] | None
    accept: tuple[TestCase, ...]
    deny: tuple[TestCase, ...]
    at: datetime
    posture: PostureReport | None = None
    line: int | None = field(default=None, compare=False)
    column: int | None = field(default=None, compare=False)


def _no_network() -> Network:
    """An empty ``network`` section (imported late: `network` builds on this module)."""
    from umbranet.policy.network import Network

    return Network()


@dataclass(frozen=True, slots=True)
class Policy:
    """The whole document, typed; references are not yet checked (see `compile`).

    Group and posture names keep their prefix (``group:eng``, ``posture:corp``); tags are
    bare (``ci``), as in `Subject.tags`.
    """

    groups: dict[str, tuple[SrcSelector, ...]]
    tag_owners: dict[str, tuple[SrcSelector, ...]]
    rules: tuple[Rule, ...]
    http: tuple[HttpRule, ...]
    postures: dict[str, PostureDef]
    tests: tuple[PolicyTest, ...]
    group_lines: dict[str, tuple[int, int] | None] = field(default_factory=dict, compare=False)
    tag_lines: dict[str, tuple[int, int] | None] = field(default_factory=dict, compare=False)
    warnings: tuple[str, ...] = ()
    network: Network = field(default_factory=_no_network)
