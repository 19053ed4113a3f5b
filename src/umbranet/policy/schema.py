"""From parsed HuJSON to a typed `Policy`: shapes, fields and selector syntax, with places.

This stage checks what can be checked from the document alone (every section has the right
shape, no unknown keys, selectors and ports and posture conditions are well formed) and
refuses the first fault with its line and column. Whether the names it mentions exist (groups,
tags, postures, services) is the compiler's job, because services live outside the document.

Document layout (all sections optional)::

    {
      "groups":    {"group:eng": ["alice", "tag:ci", "group:sre"]},
      "tagOwners": {"tag:db": ["group:admins", "root-admin"]},
      "postures":  {"posture:corp": {"os": ["linux"], "sdkVersion": ">=0.1"}},
      "rules":     [{"action": "dial", "src": ["group:eng"], "dst": ["svc:db:5432"],
                     "posture": ["posture:corp"], "deny": false}],
      "http":      [{"src": ["*"], "dst": ["svc:web"], "methods": ["GET"], "paths": ["/public"]}],
      "tests":     [{"src": "alice", "accept": ["svc:db:5432"], "deny": ["bind svc:db"]}],
    }
"""

from __future__ import annotations

import ipaddress
import re
import zoneinfo
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import Any, TypeVar

from umbranet.policy.errors import PolicyError
from umbranet.policy.hujson import Document, Path
from umbranet.policy.model import (
    ACTIONS,
    Action,
    DstSelector,
    HttpRule,
    Policy,
    PolicyTest,
    PortSet,
    Rule,
    SrcSelector,
    TestCase,
    normalize_tag,
)
from umbranet.policy.network import (
    PROTOCOLS,
    AutoApprovers,
    NetDst,
    NetRule,
    Network,
    parse_net_dst,
    parse_target,
)
from umbranet.policy.pathnorm import normalize_path
from umbranet.policy.posture import DAYS, PostureDef, PostureReport, TimeWindow, VersionReq

__all__ = ["DEFAULT_TEST_TIME", "NAME", "build_policy", "parse_dst", "parse_src"]

NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
"""Identity and service names (as in `umbranet.pki.spiffe_id`)."""
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")
_PORTS = re.compile(r"\*|[0-9][0-9,-]*")
_METHOD = re.compile(r"[A-Z][A-Z-]{0,31}")
_CLOCK = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])|24:00")

DEFAULT_TEST_TIME = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
"""When a test without ``at`` is evaluated (a Monday noon, UTC): never the wall clock, so a
policy's tests give the same answer whenever it is saved or rolled back."""

_SECTIONS = (
    "groups", "tagOwners", "postures", "rules", "http", "tests", "network", "autoApprovers",
)  # fmt: skip
T = TypeVar("T")
Placed = TypeVar("Placed", SrcSelector, DstSelector, TestCase, NetDst)


def build_policy(doc: Document) -> Policy:
    """Type-check the parsed document; raise `PolicyError` at the first fault."""
    return _Builder(doc).build()


def parse_src(text: str, *, allow_all: bool = True) -> SrcSelector:
    """``*``, ``group:<g>``, ``tag:<t>`` or an identity name; raise ValueError otherwise."""
    if text == "*" and allow_all:
        return SrcSelector("all", "*")
    if text.startswith("group:") and _LABEL.fullmatch(text[6:]):
        return SrcSelector("group", text)
    if text.startswith("tag:") and _TAG.fullmatch(text[4:]):
        return SrcSelector("tag", text[4:])
    if NAME.fullmatch(text):
        return SrcSelector("name", text)
    wanted = "an identity name, group:<name>, tag:<name>" + (" or *" if allow_all else "")
    raise ValueError(f"{text!r} is not a source selector ({wanted})")


def parse_dst(text: str, *, ports: bool = True) -> DstSelector:
    """``*[:ports]``, ``svc:<name>[:ports]`` or ``attr:<attribute>[:ports]``.

    Raise ValueError (selector) or LookupError (ports) with the reason.
    """
    kind: str
    if text == "*" or text.startswith("*:"):
        kind, value, spec = "all", "*", text[2:] if text != "*" else ""
    elif text.startswith("svc:"):
        kind = "svc"
        value, _, spec = text[4:].partition(":")
        if not NAME.fullmatch(value):
            raise ValueError(f"{text!r}: service name {value!r} is not a valid name")
    elif text.startswith("attr:"):
        kind = "attr"
        head, _, tail = text[5:].rpartition(":")
        value, spec = (head, tail) if head and _PORTS.fullmatch(tail) else (text[5:], "")
        if not _TAG.fullmatch(value):
            raise ValueError(f"{text!r}: {value!r} is not a valid attribute")
    else:
        raise ValueError(f"{text!r} is not a service selector (svc:<name>, attr:<attr> or *)")
    if spec and not ports:
        raise ValueError(f"{text!r}: http rules name services without ports")
    if spec == "" and text.endswith(":"):
        raise LookupError(f"{text!r}: empty port list")
    try:
        port_set = PortSet.parse(spec) if spec else PortSet.parse("*")
    except ValueError as exc:
        raise LookupError(str(exc)) from None
    return DstSelector(kind, value, port_set)  # type: ignore[arg-type]


class _Builder:
    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.warnings: list[str] = []

    # -- helpers -------------------------------------------------------------------------------

    def fail(self, code: str, reason: str, path: Path, *, key: bool = False) -> PolicyError:
        line, column = self.doc.where(path, key=key) or (None, None)
        return PolicyError(code, reason, line, column)

    def at(self, path: Path) -> tuple[int | None, int | None]:
        return self.doc.where(path) or (None, None)

    def expect(self, value: Any, kind: type[T], path: Path, what: str) -> T:
        if kind is int and isinstance(value, bool):
            raise self.fail("policy_schema", f"{what} must be a number", path)
        if not isinstance(value, kind) or (kind is float and isinstance(value, bool)):
            names = {dict: "an object", list: "a list", str: "a string", bool: "true or false"}
            raise self.fail("policy_schema", f"{what} must be {names.get(kind, kind)}", path)
        return value

    def fields(
        self, value: Any, path: Path, what: str, allowed: tuple[str, ...], required: tuple[str, ...]
    ) -> dict[str, Any]:
        obj: dict[str, Any] = self.expect(value, dict, path, what)
        for key in obj:
            if key not in allowed:
                hint = ", ".join(allowed)
                reason = f"unknown key {key!r} in {what} (expected {hint})"
                raise self.fail("policy_schema", reason, (*path, key), key=True)
        for key in required:
            if key not in obj:
                raise self.fail("policy_schema", f"{what} needs {key!r}", path)
        return obj

    def strings(self, value: Any, path: Path, what: str, *, empty: bool = False) -> list[str]:
        items: list[Any] = self.expect(value, list, path, what)
        if not items and not empty:
            raise self.fail("policy_schema", f"{what} must not be empty", path)
        for index, item in enumerate(items):
            self.expect(item, str, (*path, index), f"each entry of {what}")
        return items

    def each(
        self,
        value: Any,
        path: Path,
        what: str,
        parse: Callable[[str], T],
        code: str,
    ) -> tuple[T, ...]:
        out: list[T] = []
        for index, item in enumerate(self.strings(value, path, what)):
            try:
                out.append(parse(item))
            except (ValueError, LookupError) as exc:
                raise self.fail(code, str(exc), (*path, index)) from None
        return tuple(out)

    def srcs(
        self, value: Any, path: Path, what: str, *, allow_all: bool = True
    ) -> tuple[SrcSelector, ...]:
        def parse(text: str) -> SrcSelector:
            return parse_src(text, allow_all=allow_all)

        items = self.each(value, path, what, parse, "policy_selector")
        return tuple(self.placed(s, (*path, i)) for i, s in enumerate(items))

    def dsts(
        self, value: Any, path: Path, what: str, *, ports: bool = True
    ) -> tuple[DstSelector, ...]:
        out: list[DstSelector] = []
        for index, item in enumerate(self.strings(value, path, what)):
            try:
                out.append(self.placed(parse_dst(item, ports=ports), (*path, index)))
            except ValueError as exc:
                raise self.fail("policy_selector", str(exc), (*path, index)) from None
            except LookupError as exc:
                raise self.fail("policy_ports", str(exc.args[0]), (*path, index)) from None
        return tuple(out)

    def placed(self, item: Placed, path: Path) -> Placed:
        line, column = self.at(path)
        return replace(item, line=line, column=column)

    # -- sections ------------------------------------------------------------------------------

    def build(self) -> Policy:
        root = self.fields(self.doc.value, (), "the policy document", _SECTIONS, ())
        groups, group_lines = self.groups(root.get("groups", {}))
        owners, tag_lines = self.tag_owners(root.get("tagOwners", {}))
        postures = self.postures(root.get("postures", {}))
        rules = self.rules(root.get("rules", []))
        http = self.http(root.get("http", []))
        tests = self.tests(root.get("tests", []))
        network = Network(
            self.net_rules(root.get("network", [])),
            self.auto_approvers(root.get("autoApprovers", {})),
        )
        return Policy(
            groups, owners, rules, http, postures, tests, group_lines, tag_lines,
            tuple(self.warnings), network,
        )  # fmt: skip

    def net_rules(self, value: Any) -> tuple[NetRule, ...]:
        items: list[Any] = self.expect(value, list, ("network",), "network")
        out: list[NetRule] = []
        allowed = ("src", "dst", "proto", "deny")
        for index, item in enumerate(items):
            path: Path = ("network", index)
            obj = self.fields(item, path, f"network[{index}]", allowed, ("src", "dst"))
            deny = self.expect(obj.get("deny", False), bool, (*path, "deny"), "deny")
            src = self.srcs(obj["src"], (*path, "src"), "src")
            dst: list[NetDst] = []
            for i, text in enumerate(self.strings(obj["dst"], (*path, "dst"), "dst")):
                try:
                    dst.append(self.placed(parse_net_dst(text), (*path, "dst", i)))
                except ValueError as exc:
                    raise self.fail("policy_selector", str(exc), (*path, "dst", i)) from None
                except LookupError as exc:
                    raise self.fail("policy_ports", str(exc.args[0]), (*path, "dst", i)) from None
            protocols = frozenset(PROTOCOLS)
            if "proto" in obj:
                listed = self.strings(obj["proto"], (*path, "proto"), "proto")
                for i, name in enumerate(listed):
                    if name not in PROTOCOLS:
                        reason = f"proto {name!r} is not one of tcp, udp, icmp"
                        raise self.fail("policy_schema", reason, (*path, "proto", i))
                protocols = frozenset(listed)
            line, column = self.at(path)
            out.append(NetRule(index, deny, src, tuple(dst), protocols, line, column))
        return tuple(out)

    def auto_approvers(self, value: Any) -> AutoApprovers:
        path: Path = ("autoApprovers",)
        obj = self.fields(value, path, "autoApprovers", ("routes", "exitNode"), ())
        routes: list[tuple[Any, tuple[SrcSelector, ...]]] = []
        section: dict[str, Any] = self.expect(
            obj.get("routes", {}), dict, (*path, "routes"), "autoApprovers.routes"
        )
        for prefix, who in section.items():
            where: Path = (*path, "routes", prefix)
            try:
                network = _network(prefix)
            except ValueError as exc:
                raise self.fail("policy_selector", str(exc), where, key=True) from None
            routes.append((network, self.srcs(who, where, f"approvers of {prefix}")))
        exit_node: tuple[SrcSelector, ...] = ()
        if "exitNode" in obj:
            exit_node = self.srcs(obj["exitNode"], (*path, "exitNode"), "exitNode")
        return AutoApprovers(tuple(routes), exit_node)

    def groups(
        self, value: Any
    ) -> tuple[dict[str, tuple[SrcSelector, ...]], dict[str, tuple[int, int] | None]]:
        section: dict[str, Any] = self.expect(value, dict, ("groups",), "groups")
        groups: dict[str, tuple[SrcSelector, ...]] = {}
        lines: dict[str, tuple[int, int] | None] = {}
        for name, members in section.items():
            path: Path = ("groups", name)
            if not name.startswith("group:") or not _LABEL.fullmatch(name[6:]):
                reason = f"group name {name!r} must look like group:<name>"
                raise self.fail("policy_selector", reason, path, key=True)
            self.strings(members, path, name, empty=True)
            groups[name] = self.srcs(members, path, name, allow_all=False) if members else ()
            lines[name] = self.doc.where(path, key=True)
        return groups, lines

    def tag_owners(
        self, value: Any
    ) -> tuple[dict[str, tuple[SrcSelector, ...]], dict[str, tuple[int, int] | None]]:
        section: dict[str, Any] = self.expect(value, dict, ("tagOwners",), "tagOwners")
        owners: dict[str, tuple[SrcSelector, ...]] = {}
        lines: dict[str, tuple[int, int] | None] = {}
        for tag, who in section.items():
            path: Path = ("tagOwners", tag)
            if not tag.startswith("tag:") or not _TAG.fullmatch(tag[4:]):
                reason = f"tag {tag!r} must look like tag:<name>"
                raise self.fail("policy_selector", reason, path, key=True)
            self.strings(who, path, f"owners of {tag}", empty=True)
            selectors = self.srcs(who, path, f"owners of {tag}", allow_all=False) if who else ()
            for index, selector in enumerate(selectors):
                if selector.kind == "tag":
                    reason = "tag owners are identities or groups, not tags"
                    raise self.fail("policy_selector", reason, (*path, index))
            owners[normalize_tag(tag)] = selectors
            lines[normalize_tag(tag)] = self.doc.where(path, key=True)
        return owners, lines

    def rules(self, value: Any) -> tuple[Rule, ...]:
        items: list[Any] = self.expect(value, list, ("rules",), "rules")
        out: list[Rule] = []
        allowed = ("action", "src", "dst", "posture", "deny")
        for index, item in enumerate(items):
            path: Path = ("rules", index)
            obj = self.fields(item, path, f"rules[{index}]", allowed, ("action", "src", "dst"))
            action = self.expect(obj["action"], str, (*path, "action"), "action")
            if action not in ACTIONS:
                reason = f"action must be 'dial' or 'bind', not {action!r}"
                raise self.fail("policy_schema", reason, (*path, "action"))
            deny = self.expect(obj.get("deny", False), bool, (*path, "deny"), "deny")
            src = self.srcs(obj["src"], (*path, "src"), "src")
            dst = self.dsts(obj["dst"], (*path, "dst"), "dst")
            postures = self.posture_names(obj.get("posture", []), (*path, "posture"))
            line, column = self.at(path)
            act: Action = "dial" if action == "dial" else "bind"
            out.append(Rule(index, act, deny, src, dst, postures, line, column))
        return tuple(out)

    def posture_names(self, value: Any, path: Path) -> tuple[str, ...]:
        names = self.strings(value, path, "posture", empty=True)
        for index, name in enumerate(names):
            if not name.startswith("posture:") or not _LABEL.fullmatch(name[8:]):
                reason = f"{name!r} is not a posture name (posture:<name>)"
                raise self.fail("policy_selector", reason, (*path, index))
        return tuple(dict.fromkeys(names))

    def http(self, value: Any) -> tuple[HttpRule, ...]:
        items: list[Any] = self.expect(value, list, ("http",), "http")
        out: list[HttpRule] = []
        allowed = ("src", "dst", "methods", "paths", "deny")
        for index, item in enumerate(items):
            path: Path = ("http", index)
            obj = self.fields(item, path, f"http[{index}]", allowed, ("src", "dst"))
            deny = self.expect(obj.get("deny", False), bool, (*path, "deny"), "deny")
            src = self.srcs(obj["src"], (*path, "src"), "src")
            dst = self.dsts(obj["dst"], (*path, "dst"), "dst", ports=False)
            methods: frozenset[str] | None = None
            if "methods" in obj:
                listed = self.strings(obj["methods"], (*path, "methods"), "methods")
                for i, method in enumerate(listed):
                    if method != "*" and not _METHOD.fullmatch(method):
                        reason = f"{method!r} is not an HTTP method (GET, POST, ... or *)"
                        raise self.fail("policy_http", reason, (*path, "methods", i))
                methods = None if "*" in listed else frozenset(listed)
            paths: tuple[str, ...] | None = None
            if "paths" in obj:
                listed = self.strings(obj["paths"], (*path, "paths"), "paths")
                normalized: list[str] = []
                for i, prefix in enumerate(listed):
                    clean = normalize_path(prefix)
                    if clean is None or any(c in prefix for c in "?# "):
                        reason = f"{prefix!r} is not a path prefix (starts with /, no ? or #)"
                        raise self.fail("policy_http", reason, (*path, "paths", i))
                    normalized.append(clean)
                paths = tuple(dict.fromkeys(normalized))
            line, column = self.at(path)
            out.append(HttpRule(index, deny, src, dst, methods, paths, line, column))
        return tuple(out)

    def postures(self, value: Any) -> dict[str, PostureDef]:
        section: dict[str, Any] = self.expect(value, dict, ("postures",), "postures")
        out: dict[str, PostureDef] = {}
        for name, body in section.items():
            path: Path = ("postures", name)
            if not name.startswith("posture:") or not _LABEL.fullmatch(name[8:]):
                reason = f"posture name {name!r} must look like posture:<name>"
                raise self.fail("policy_selector", reason, path, key=True)
            out[name] = self.posture(name, body, path)
        return out

    def posture(self, name: str, body: Any, path: Path) -> PostureDef:
        allowed = (
            "os", "osVersion", "sdkVersion", "certAgeMaxHours", "sourceCidr", "timeWindow",
            "processRunning",
        )  # fmt: skip
        obj = self.fields(body, path, name, allowed, ())
        fields: dict[str, Any] = {}
        if "os" in obj:
            names = self.strings(obj["os"], (*path, "os"), "os")
            fields["os"] = frozenset(n.lower() for n in names)
        for key, attr in (("osVersion", "os_version"), ("sdkVersion", "sdk_version")):
            if key in obj:
                text = self.expect(obj[key], str, (*path, key), key)
                try:
                    fields[attr] = VersionReq.parse(text)
                except ValueError as exc:
                    raise self.fail("policy_posture", str(exc), (*path, key)) from None
        if "certAgeMaxHours" in obj:
            hours = obj["certAgeMaxHours"]
            if isinstance(hours, bool) or not isinstance(hours, int | float) or not 0 < hours < 1e6:
                reason = "certAgeMaxHours must be a positive number of hours"
                raise self.fail("policy_posture", reason, (*path, "certAgeMaxHours"))
            fields["cert_age_max"] = timedelta(hours=hours)
        if "sourceCidr" in obj:
            fields["source_cidrs"] = self.each(
                obj["sourceCidr"], (*path, "sourceCidr"), "sourceCidr", _network, "policy_posture"
            )
        if "timeWindow" in obj:
            fields["time_window"] = self.window(obj["timeWindow"], (*path, "timeWindow"))
        if "processRunning" in obj:
            names = self.strings(obj["processRunning"], (*path, "processRunning"), "processes")
            fields["processes"] = frozenset(names)
        return PostureDef(name, **fields)

    def window(self, value: Any, path: Path) -> TimeWindow:
        obj = self.fields(value, path, "timeWindow", ("days", "start", "end", "tz"), ("start",))
        if "end" not in obj:
            raise self.fail("policy_posture", "timeWindow needs 'end'", path)
        days = frozenset(range(7))
        if "days" in obj:
            listed = self.strings(obj["days"], (*path, "days"), "days")
            for index, day in enumerate(listed):
                if day.lower() not in DAYS:
                    reason = f"{day!r} is not a day ({', '.join(DAYS)})"
                    raise self.fail("policy_posture", reason, (*path, "days", index))
            days = frozenset(DAYS.index(d.lower()) for d in listed)
        start = self.clock(obj["start"], (*path, "start"))
        end = self.clock(obj["end"], (*path, "end"))
        if start == end:
            raise self.fail("policy_posture", "timeWindow start and end are equal", path)
        zone_name = self.expect(obj.get("tz", "UTC"), str, (*path, "tz"), "tz")
        return TimeWindow(days, start, end, self.zone(zone_name, (*path, "tz")), zone_name)

    def clock(self, value: Any, path: Path) -> time:
        text = self.expect(value, str, path, "a time of day")
        if not _CLOCK.fullmatch(text):
            raise self.fail("policy_posture", f"{text!r} is not a time HH:MM (00:00-24:00)", path)
        if text == "24:00":
            return time.max
        return time(int(text[:2]), int(text[3:]))

    def zone(self, name: str, path: Path) -> tzinfo:
        if name in ("UTC", "Etc/UTC", "Z"):
            return UTC
        try:
            return zoneinfo.ZoneInfo(name)
        except (ValueError, OSError, LookupError):
            # ZoneInfoNotFoundError is a KeyError; a malformed key is a ValueError. Reading the
            # zone database happens here, at compile time, never while deciding.
            if zoneinfo.available_timezones():
                reason = f"unknown time zone {name!r}"
                raise self.fail("policy_posture", reason, path) from None
            self.warnings.append(f"no time zone database: {name!r} read as UTC")
            return UTC

    def tests(self, value: Any) -> tuple[PolicyTest, ...]:
        items: list[Any] = self.expect(value, list, ("tests",), "tests")
        out: list[PolicyTest] = []
        allowed = ("src", "tags", "accept", "deny", "posture", "at")
        for index, item in enumerate(items):
            path: Path = ("tests", index)
            obj = self.fields(item, path, f"tests[{index}]", allowed, ("src",))
            src = self.expect(obj["src"], str, (*path, "src"), "src")
            if not NAME.fullmatch(src):
                reason = f"test src {src!r} must be an identity name"
                raise self.fail("policy_test_invalid", reason, (*path, "src"))
            tags: frozenset[str] | None = None
            if "tags" in obj:
                selectors = self.srcs(obj["tags"], (*path, "tags"), "tags", allow_all=False)
                if any(s.kind != "tag" for s in selectors):
                    raise self.fail("policy_test_invalid", "tags are tag:<name>", (*path, "tags"))
                tags = frozenset(s.value for s in selectors)
            accept = self.cases(obj.get("accept", []), (*path, "accept"))
            deny = self.cases(obj.get("deny", []), (*path, "deny"))
            at = self.instant(obj["at"], (*path, "at")) if "at" in obj else DEFAULT_TEST_TIME
            report = (
                self.report(obj["posture"], (*path, "posture"), at) if "posture" in obj else None
            )
            line, column = self.at(path)
            out.append(PolicyTest(index, src, tags, accept, deny, at, report, line, column))
        return tuple(out)

    def cases(self, value: Any, path: Path) -> tuple[TestCase, ...]:
        out: list[TestCase] = []
        for index, text in enumerate(self.strings(value, path, path[-1], empty=True)):  # type: ignore[arg-type]
            try:
                case = parse_case(text)
            except ValueError as exc:
                raise self.fail("policy_test_invalid", str(exc), (*path, index)) from None
            out.append(self.placed(case, (*path, index)))
        return tuple(out)

    def instant(self, value: Any, path: Path) -> datetime:
        text = self.expect(value, str, path, "at")
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            moment = None
        if moment is None or moment.tzinfo is None:
            reason = f"{text!r} is not an ISO 8601 time with a zone (2024-01-01T09:00:00Z)"
            raise self.fail("policy_test_invalid", reason, path)
        return moment.astimezone(UTC)

    def report(self, value: Any, path: Path, at: datetime) -> PostureReport:
        allowed = ("os", "osVersion", "sdkVersion", "certAgeHours", "sourceIp", "processes")
        obj = self.fields(value, path, "test posture", allowed, ())
        text: dict[str, str] = {}
        for key in ("os", "osVersion", "sdkVersion", "sourceIp"):
            if key in obj:
                text[key] = self.expect(obj[key], str, (*path, key), key)
        not_before = None
        if "certAgeHours" in obj:
            hours = obj["certAgeHours"]
            if (
                isinstance(hours, bool)
                or not isinstance(hours, int | float)
                or not 0 <= hours < 1e6
            ):
                raise self.fail("policy_test_invalid", "certAgeHours must be >= 0", path)
            not_before = at - timedelta(hours=hours)
        processes = None
        if "processes" in obj:
            processes = frozenset(
                self.strings(obj["processes"], (*path, "processes"), "processes", empty=True)
            )
        return PostureReport(
            text.get("os"), text.get("osVersion"), text.get("sdkVersion"), not_before,
            text.get("sourceIp"), processes,
        )  # fmt: skip


def parse_case(text: str) -> TestCase:
    """``svc:x``, ``svc:x:443``, ``dial svc:x``, ``bind svc:x``, ``GET svc:web/public``,
    ``net 10.1.2.3:443/tcp``."""
    words = text.split()
    if not 1 <= len(words) <= 2:
        raise ValueError(f"{text!r}: expected '[dial|bind|METHOD] svc:<name>[:port|/path]'")
    verb, target = (words[0], words[1]) if len(words) == 2 else ("dial", words[0])
    if verb == "net":
        host, port, proto = parse_target(target)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{text!r}: net tests name an address, not {host!r}") from None
        return TestCase(text, "", packet=(host, port, proto))
    if not target.startswith("svc:"):
        raise ValueError(f"{text!r}: the target must be svc:<name>")
    if verb in ACTIONS:
        name, _, port_text = target[4:].partition(":")
        port = None
        if port_text:
            if not port_text.isdigit() or not 1 <= int(port_text[:6]) <= 65535:
                raise ValueError(f"{text!r}: port must be one number 1-65535")
            port = int(port_text)
        if not NAME.fullmatch(name):
            raise ValueError(f"{text!r}: {name!r} is not a service name")
        action: Action = "dial" if verb == "dial" else "bind"
        return TestCase(text, name, action, port)
    if not _METHOD.fullmatch(verb):
        raise ValueError(f"{text!r}: {verb!r} is neither dial, bind nor an HTTP method")
    name, slash, rest = target[4:].partition("/")
    if not NAME.fullmatch(name):
        raise ValueError(f"{text!r}: {name!r} is not a service name")
    return TestCase(text, name, "dial", None, verb, "/" + rest if slash else "/")


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not a CIDR such as 10.0.0.0/8") from None
