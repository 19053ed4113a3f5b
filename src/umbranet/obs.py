"""Observability on the ground floor: one metrics registry per component, its text exposition,
and the log formats with their fixed field vocabulary.

Metrics. Every component (controller, router, agent) builds its own `Metrics` and hands it to
the parts that count; nothing registers into `prometheus_client`'s process-global registry,
so two routers in one test process never share a number. Metric names are declared once, in
the component's metrics class, with their labels; counting an undeclared name or with the wrong
labels is our bug and raises. Names follow Prometheus conventions (``umbra_<component>_...``,
counters end in ``_total``); ``docs/metrics.md`` lists every one, and a test keeps the two in
step. Numbers that a component already keeps (a router's frame switch counts in plain ints for
speed) are exposed by a `prometheus_client` custom collector that reads them at scrape time.

Logs. ``docs/logging.md`` fixes the field names (`FIELDS`) and levels. `JsonFormatter` writes
one JSON object per line with those fields lifted out of the message (``code=%s`` in a log
template becomes the ``code`` field), so the many existing ``key=value`` messages become
structured without a second logging API. `TextFormatter` escapes control characters in the
rendered message, because a reason or a name may come from a peer and must not be able to forge
a second log line or drive the terminal.

This module imports nothing from umbranet: every floor may use it. It imports
`prometheus_client` on first use of a registry, so code that only logs (every ``umbra``
command reads ``--log-format``) does not pay for loading it.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from types import ModuleType
from typing import IO, TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.registry import Collector

_M = TypeVar("_M")

__all__ = [
    "CONTENT_TYPE",
    "FIELDS",
    "LOG_FORMATS",
    "JsonFormatter",
    "LogFormat",
    "Metrics",
    "TextFormatter",
    "configure_logging",
    "escape",
    "fields_of",
    "formatter",
    "render",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The ``Content-Type`` of `render`'s output (the Prometheus text format every scraper reads)."""


@functools.cache
def _prometheus() -> ModuleType:
    import prometheus_client

    # The library's one process-wide switch: no ``x_created`` series beside every counter and
    # histogram. They would double the series count; no dashboard here reads them, and a
    # restart is visible anyway as a counter going back to zero.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream
    return prometheus_client


def render(registry: CollectorRegistry) -> bytes:
    """The registry's metrics in the Prometheus text exposition format."""
    text: bytes = _prometheus().generate_latest(registry)
    return text


class Metrics:
    """One component's metrics: a private registry plus the declared metrics on it.

    Subclasses declare their metrics as attributes in ``__init__`` (``self.refused =
    self.counter(...)``), so code can write ``metrics.refused.labels(code=c).inc()``; the
    name-based `count`/`set`/`observe`/`get` serve code that picks the metric by name.
    Thread-safe: prometheus_client's metrics are, and declaring takes a lock.
    """

    def __init__(self) -> None:
        self._prom = _prometheus()
        self.registry: CollectorRegistry = self._prom.CollectorRegistry(auto_describe=True)
        self._counters: dict[str, Counter] = {}
        self._gauges: dict[str, Gauge] = {}
        self._histograms: dict[str, Histogram] = {}
        self._lock = threading.Lock()

    # -- declaring -------------------------------------------------------------------------

    def counter(self, name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
        """Declare a monotonically increasing count; `name` ends in ``_total``."""
        if not name.endswith("_total"):
            raise ValueError(f"counter {name!r} must end in _total")
        metric: Counter = self._prom.Counter(name, doc, tuple(labels), registry=None)
        self._declare(name, metric, self._counters)
        return metric

    def gauge(self, name: str, doc: str, labels: Iterable[str] = ()) -> Gauge:
        """Declare a value that goes up and down (open links, the current epoch)."""
        metric: Gauge = self._prom.Gauge(name, doc, tuple(labels), registry=None)
        self._declare(name, metric, self._gauges)
        return metric

    def histogram(
        self, name: str, doc: str, labels: Iterable[str] = (), buckets: Iterable[float] = ()
    ) -> Histogram:
        """Declare a distribution (latencies in seconds); default buckets when none given."""
        histogram = self._prom.Histogram
        chosen = tuple(buckets) or histogram.DEFAULT_BUCKETS
        metric: Histogram = histogram(name, doc, tuple(labels), registry=None, buckets=chosen)
        self._declare(name, metric, self._histograms)
        return metric

    def collector(self, collector: Collector) -> None:
        """Add a custom collector (numbers read from a component at scrape time)."""
        self.registry.register(collector)

    def _declare(self, name: str, metric: Any, kind: dict[str, Any]) -> None:
        with self._lock:
            if any(name in d for d in (self._counters, self._gauges, self._histograms)):
                raise ValueError(f"metric {name!r} declared twice")
            kind[name] = metric
            self.registry.register(metric)

    # -- using, by name ----------------------------------------------------------------------

    def count(self, name: str, amount: float = 1, **labels: str) -> None:
        """Add `amount` to the declared counter `name` (with exactly its labels)."""
        metric = _declared(self._counters, name, "counter")
        (metric.labels(**labels) if labels else metric).inc(amount)

    def set(self, name: str, value: float, **labels: str) -> None:
        metric = _declared(self._gauges, name, "gauge")
        (metric.labels(**labels) if labels else metric).set(value)

    def observe(self, name: str, value: float, **labels: str) -> None:
        metric = _declared(self._histograms, name, "histogram")
        (metric.labels(**labels) if labels else metric).observe(value)

    def get(self, sample: str, **labels: str) -> float:
        """A sample's current value as a scraper would see it (0 if never counted).

        `sample` is the exposed name: ``x_total`` for a counter, ``x_count`` or ``x_sum`` for
        a histogram; collectors' samples are found too.
        """
        value = self.registry.get_sample_value(sample, dict(labels))
        return 0.0 if value is None else value

    def snapshot(self) -> dict[str, float]:
        """Every non-zero counter and gauge sample as ``name{label="value"}`` -> value
        (for ``statistics()`` and JSON status pages)."""
        out: dict[str, float] = {}
        for family in self.registry.collect():
            if family.type not in ("counter", "gauge"):
                continue
            for sample in family.samples:
                if not sample.value:
                    continue
                out[_key(sample.name, sample.labels)] = sample.value
        return dict(sorted(out.items()))


def _declared(metrics: Mapping[str, _M], name: str, kind: str) -> _M:
    metric = metrics.get(name)
    if metric is None:
        raise KeyError(f"no {kind} named {name!r} was declared")
    return metric


def _key(name: str, labels: Mapping[str, str]) -> str:
    if not labels:
        return name
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


# -- logs ------------------------------------------------------------------------------------

FIELDS: tuple[str, ...] = (
    "identity",
    "peer",
    "dialer",
    "host",
    "service",
    "action",
    "purpose",
    "verdict",
    "circuit",
    "binding",
    "link",
    "router",
    "code",
    "reason",
    "epoch",
    "actor",
    "target",
    "method",
    "path",
    "route",
    "status",
)
"""The structured fields a log record may carry (``docs/logging.md`` says what each means)."""

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")

# One printf conversion: an optional mapping key, flags, width, precision, length, type.
_SPEC = re.compile(r"%(?:\((\w+)\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?([a-zA-Z%])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape(text: str) -> str:
    """`text` with control characters (newlines, escape sequences) written as ``\\xNN``
    (``\\uNNNN`` for the Unicode line separators)."""
    return _CONTROL.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The vocabulary fields of a record: passed in ``extra=``, or ``key=%s`` in its template."""
    found: dict[str, Any] = {}
    template, args = record.msg, record.args
    if isinstance(template, str) and args:
        if isinstance(args, Mapping):
            for match in re.finditer(r"(\w+)=%\((\w+)\)", template):
                if match.group(1) in FIELDS and match.group(2) in args:
                    found[match.group(1)] = args[match.group(2)]
        else:
            found.update(_positional_fields(template, tuple(args)))
    for name in FIELDS:
        if name in record.__dict__:
            found[name] = record.__dict__[name]
    return found


def _positional_fields(template: str, args: tuple[Any, ...]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    index = 0
    for match in _SPEC.finditer(template):
        if match.group(4) == "%":
            continue
        if match.group(2) == "*" or match.group(3) == "*" or match.group(1):
            return {}  # star widths and mappings shift the arguments: do not guess
        if index >= len(args):
            return {}
        before = template[: match.start()]
        key = re.search(r"(\w+)=$", before)
        if key is not None and key.group(1) in FIELDS:
            found[key.group(1)] = args[index]
        index += 1
    return found if index == len(args) else {}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, the vocabulary fields
    present, and ``exc`` with the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name, value in fields_of(record).items():
            entry[name] = value if isinstance(value, int | float | bool) else str(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``time level logger: message``, the message with control characters escaped."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message)
        return super().formatMessage(record)


def formatter(log_format: LogFormat) -> logging.Formatter:
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure_logging(
    level: int, log_format: LogFormat = "text", stream: IO[str] | None = None
) -> None:
    """Send every log record at `level` and above to `stream` (stderr) in `log_format`."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(log_format))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # One place decides where umbranet's records go: undo an earlier server log config
    # (the controller's gives the package its own handler and stops propagation).
    package = logging.getLogger("umbranet")
    package.handlers.clear()
    package.propagate = True
    package.setLevel(logging.NOTSET)
