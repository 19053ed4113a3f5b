"""Device posture: named conditions on what an endpoint reports and the controller knows.

A posture (``"posture:corp"``) is a conjunction of conditions: OS and OS version, SDK version,
certificate age, source address, a time-of-day window, named processes running. Rules that
list postures apply only when all of them hold.

Evaluation is three-valued, because reports are partial and may be missing:

- ``True``: every condition holds;
- ``False``: some condition fails (the first failure is the reason shown);
- ``None``: nothing failed but something could not be checked (not reported, or no ``now``).

An *allow* rule needs ``True``; a *deny* rule applies unless the result is ``False``, so a
missing report never lifts a deny (fail closed both ways).

Pure: the time is an argument. Time zones come from `zoneinfo` when the rule is compiled; when
the host has no time zone database, the window is read in UTC and the compiler warns.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, time, timedelta, tzinfo

__all__ = [
    "DAYS",
    "PostureDef",
    "PostureEvaluator",
    "PostureReport",
    "PostureResult",
    "TimeWindow",
    "VersionReq",
    "parse_version",
]

DAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class PostureReport:
    """What is known about one endpoint; ``None`` fields were not reported.

    The endpoint reports ``os``, ``os_version``, ``sdk_version`` and ``processes``; the
    controller adds ``cert_not_before`` (of the certificate in use) and ``source_ip`` (where
    the endpoint connected from).
    """

    os: str | None = None
    os_version: str | None = None
    sdk_version: str | None = None
    cert_not_before: datetime | None = None
    source_ip: str | None = None
    processes: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class PostureResult:
    """One posture's outcome for one endpoint, with the conditions that decided it."""

    name: str
    outcome: bool | None
    details: tuple[str, ...]

    @property
    def summary(self) -> str:
        """``posture:corp holds`` / ``posture:corp failed (...)`` / ``... is unknown (...)``."""
        if self.outcome is True:
            return f"{self.name} holds"
        verb = "failed" if self.outcome is False else "is unknown"
        first = next((d for d in self.details if not d.startswith("ok: ")), "")
        return f"{self.name} {verb} ({first})" if first else f"{self.name} {verb}"


def parse_version(text: str) -> tuple[int, ...] | None:
    """The leading dotted numbers of a version (``6.1.0-18-amd64`` -> (6, 1, 0)), or None."""
    match = re.match(r"\s*v?(\d{1,9}(?:\.\d{1,9}){0,7})", text)
    if not match:
        return None
    return tuple(int(part) for part in match.group(1).split("."))


_OPS = (">=", "<=", "==", "!=", ">", "<")


@dataclass(frozen=True, slots=True)
class VersionReq:
    """A comparison such as ``>=6.1``; versions compare numerically, missing parts are 0."""

    op: str
    version: tuple[int, ...]
    text: str

    @classmethod
    def parse(cls, text: str) -> VersionReq:
        """Raise ValueError when ``text`` is not ``<op><dotted numbers>``."""
        stripped = text.strip()
        for op in _OPS:
            if stripped.startswith(op):
                version = parse_version(stripped[len(op) :])
                rest = stripped[len(op) :].strip().lstrip("v")
                if version is None or rest != ".".join(map(str, version)):
                    break
                return cls(op, version, stripped)
        raise ValueError(f"{text!r} is not a version requirement such as '>=1.2'")

    def check(self, reported: tuple[int, ...]) -> bool:
        width = max(len(reported), len(self.version))
        have = reported + (0,) * (width - len(reported))
        want = self.version + (0,) * (width - len(self.version))
        return {
            ">=": have >= want,
            "<=": have <= want,
            "==": have == want,
            "!=": have != want,
            ">": have > want,
            "<": have < want,
        }[self.op]


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Days of the week and a [start, end) time of day in a zone; end <= start wraps midnight.

    For a window that wraps (``22:00``-``06:00``), ``days`` names the day it *starts* on.
    """

    days: frozenset[int]
    start: time
    end: time
    zone: tzinfo
    zone_name: str

    def check(self, now: datetime) -> bool:
        local = now.astimezone(self.zone)
        clock = local.time().replace(tzinfo=None)
        day = local.weekday()
        if self.start < self.end:
            return day in self.days and self.start <= clock < self.end
        if clock >= self.start:
            return day in self.days
        return clock < self.end and (day - 1) % 7 in self.days

    @property
    def text(self) -> str:
        days = ",".join(DAYS[d] for d in sorted(self.days))
        return f"{days} {self.start:%H:%M}-{self.end:%H:%M} {self.zone_name}"


@dataclass(frozen=True, slots=True)
class PostureDef:
    """A named posture: every present condition must hold."""

    name: str
    os: frozenset[str] | None = None
    os_version: VersionReq | None = None
    sdk_version: VersionReq | None = None
    cert_age_max: timedelta | None = None
    source_cidrs: tuple[Network, ...] | None = None
    time_window: TimeWindow | None = None
    processes: frozenset[str] | None = None

    def evaluate(self, report: PostureReport | None, now: datetime | None) -> PostureResult:
        """Check every condition; ``details`` lists each one's finding, failures first."""
        findings = list(self._findings(report or _EMPTY, now))
        failed = [text for ok, text in findings if ok is False]
        unknown = [text for ok, text in findings if ok is None]
        passed = [f"ok: {text}" for ok, text in findings if ok is True]
        outcome: bool | None = False if failed else (None if unknown else True)
        return PostureResult(self.name, outcome, (*failed, *unknown, *passed))

    def _findings(
        self, report: PostureReport, now: datetime | None
    ) -> Iterable[tuple[bool | None, str]]:
        if self.os is not None:
            allowed = ", ".join(sorted(self.os))
            if report.os is None:
                yield None, "os not reported"
            else:
                ok = report.os.lower() in self.os
                yield ok, f"os {report.os!r} {'in' if ok else 'not in'} [{allowed}]"
        if self.os_version is not None:
            yield _version("os version", report.os_version, self.os_version)
        if self.sdk_version is not None:
            yield _version("sdk version", report.sdk_version, self.sdk_version)
        if self.cert_age_max is not None:
            limit = _hours(self.cert_age_max)
            if report.cert_not_before is None or now is None:
                yield None, "certificate age unknown"
            else:
                age = now - report.cert_not_before
                ok = age <= self.cert_age_max
                yield ok, f"certificate age {_hours(age)} {'<=' if ok else '>'} {limit}"
        if self.source_cidrs is not None:
            yield _source(report.source_ip, self.source_cidrs)
        if self.time_window is not None:
            if now is None:
                yield None, "time unknown"
            else:
                window = self.time_window
                ok = window.check(now)
                local = now.astimezone(window.zone)
                verb = "inside" if ok else "outside"
                yield ok, f"{local:%a %H:%M} {window.zone_name} {verb} {window.text}"
        if self.processes is not None:
            if report.processes is None:
                yield None, "processes not reported"
            else:
                missing = sorted(self.processes - report.processes)
                if missing:
                    yield False, f"process {missing[0]!r} not running"
                else:
                    yield True, "required processes running"


class PostureEvaluator:
    """Evaluates each posture at most once per decision (rules often share postures)."""

    def __init__(
        self,
        definitions: Mapping[str, PostureDef],
        report: PostureReport | None,
        now: datetime | None,
    ) -> None:
        self._definitions = definitions
        self._report = report
        self._now = now
        self.results: dict[str, PostureResult] = {}

    def result(self, name: str) -> PostureResult:
        found = self.results.get(name)
        if found is None:
            found = self._definitions[name].evaluate(self._report, self._now)
            self.results[name] = found
        return found

    def check(self, names: tuple[str, ...]) -> tuple[bool | None, str]:
        """AND of the named postures, and the text explaining a non-True outcome."""
        unknown = ""
        for name in names:
            result = self.result(name)
            if result.outcome is False:
                return False, result.summary
            if result.outcome is None and not unknown:
                unknown = result.summary
        return (None, unknown) if unknown else (True, "")


_EMPTY = PostureReport()


def _hours(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 3600:.1f}h"


def _version(label: str, reported: str | None, req: VersionReq) -> tuple[bool | None, str]:
    if reported is None:
        return None, f"{label} not reported"
    parsed = parse_version(reported)
    if parsed is None:
        return False, f"{label} {reported!r} is not a version"
    ok = req.check(parsed)
    return ok, f"{label} {reported!r} {'satisfies' if ok else 'does not satisfy'} {req.text}"


def _source(reported: str | None, networks: tuple[Network, ...]) -> tuple[bool | None, str]:
    if reported is None:
        return None, "source address unknown"
    try:
        address = ipaddress.ip_address(reported)
    except ValueError:
        return False, f"source address {reported!r} is not an IP address"
    ok = any(address in network for network in networks)
    listed = ", ".join(str(n) for n in networks)
    return ok, f"source {address} {'in' if ok else 'not in'} [{listed}]"
