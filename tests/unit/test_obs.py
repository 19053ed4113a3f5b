"""umbranet.obs: per-component registries with declared names, exposition, and the log formats
(JSON with the fixed fields; text that a peer's string cannot split into forged lines)."""

from __future__ import annotations

import io
import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.scrape import Scrape
from umbranet.obs import (
    FIELDS,
    JsonFormatter,
    Metrics,
    TextFormatter,
    configure_logging,
    escape,
    fields_of,
    render,
)


class Sample(Metrics):
    def __init__(self) -> None:
        super().__init__()
        self.refused = self.counter("umbra_test_refused_total", "Refusals.", ("code",))
        self.open = self.gauge("umbra_test_open", "Open things.")
        self.latency = self.histogram("umbra_test_seconds", "Latency.", buckets=(0.1, 1.0))


def test_two_components_never_share_a_number() -> None:
    a, b = Sample(), Sample()
    a.refused.labels(code="ticket_expired").inc()
    a.count("umbra_test_refused_total", 2, code="ticket_expired")
    assert a.get("umbra_test_refused_total", code="ticket_expired") == 3
    assert b.get("umbra_test_refused_total", code="ticket_expired") == 0


def test_names_are_declared_once_with_their_labels() -> None:
    metrics = Sample()
    with pytest.raises(KeyError):
        metrics.count("umbra_test_unknown_total")
    with pytest.raises(ValueError, match="label"):
        metrics.count("umbra_test_refused_total", reason="free text")
    with pytest.raises(ValueError, match="twice"):
        metrics.counter("umbra_test_refused_total", "Again.", ("code",))
    with pytest.raises(ValueError, match="_total"):
        metrics.counter("umbra_test_refusals", "No suffix.")


def test_render_is_prometheus_text_a_parser_reads_back() -> None:
    metrics = Sample()
    metrics.count("umbra_test_refused_total", code="no_terminator")
    metrics.set("umbra_test_open", 4)
    metrics.observe("umbra_test_seconds", 0.5)
    scrape = Scrape.parse(render(metrics.registry).decode())
    assert scrape.types == {
        "umbra_test_refused": "counter",
        "umbra_test_open": "gauge",
        "umbra_test_seconds": "histogram",
    }
    assert scrape.value("umbra_test_refused_total", code="no_terminator") == 1
    assert scrape.value("umbra_test_open") == 4
    assert scrape.value("umbra_test_seconds_bucket", le="0.1") == 0
    assert scrape.value("umbra_test_seconds_bucket", le="1.0") == 1
    assert metrics.snapshot() == {
        'umbra_test_refused_total{code="no_terminator"}': 1,
        "umbra_test_open": 4,
    }


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("umbranet.router", logging.WARNING, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_json_lifts_vocabulary_fields_from_the_template() -> None:
    record = _record("refused code=%s identity=%s reason=%s", "ticket_expired", "spiffe://a", "x")
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "WARNING" and entry["logger"] == "umbranet.router"
    assert entry["msg"] == "refused code=ticket_expired identity=spiffe://a reason=x"
    assert (entry["code"], entry["identity"], entry["reason"]) == (
        "ticket_expired",
        "spiffe://a",
        "x",
    )


def test_json_takes_fields_passed_as_extra_and_keeps_numbers() -> None:
    record = _record("epoch adopted", epoch=42, circuit=7, unrelated="no")
    entry = json.loads(JsonFormatter().format(record))
    assert (entry["epoch"], entry["circuit"]) == (42, 7)
    assert "unrelated" not in entry


def test_only_vocabulary_keys_are_lifted_and_arguments_stay_aligned() -> None:
    record = _record("%d%% done size=%s code=%s", 50, "10", "ok")
    assert fields_of(record) == {"code": "ok"}
    # A template whose arguments do not line up is not guessed at.
    assert fields_of(_record("code=%s reason=%s", "only-one")) == {}
    assert fields_of(_record("width %*d code=%s", 3, 5, "x")) == {}


@given(st.text())
def test_a_peer_string_stays_on_one_json_line(reason: str) -> None:
    line = JsonFormatter().format(_record("refused code=%s reason=%s", "x", reason))
    assert "\n" not in line
    assert json.loads(line)["reason"] == reason


@given(st.text())
def test_a_peer_string_cannot_forge_a_text_line_or_drive_the_terminal(reason: str) -> None:
    formatter = TextFormatter()
    line = formatter.format(_record("refused code=%s reason=%s", "x", reason))
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert line.endswith("refused code=x reason=" + escape(reason))


def test_escape_writes_controls_as_hex() -> None:
    assert escape("a\nb\x1b[31mc\u2028") == "a\\x0ab\\x1b[31mc\\u2028"


def test_configure_logging_writes_json_lines() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging(logging.INFO, "json", stream)
        logging.getLogger("umbranet.test").info("refused code=%s", "no_terminator")
        logging.getLogger("umbranet.test").debug("per-frame detail")
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["code"] == "no_terminator"
    with pytest.raises(ValueError, match="log format"):
        configure_logging(logging.INFO, "xml", stream)  # type: ignore[arg-type]


def test_the_vocabulary_is_documented() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "logging.md").read_text()
    for name in FIELDS:
        assert f"`{name}`" in doc, name


def test_the_cli_refuses_an_unknown_log_format() -> None:
    from typer.testing import CliRunner

    from umbranet.cli.main import app

    result = CliRunner().invoke(app, ["--log-format", "xml", "router", "run", "--help"])
    assert result.exit_code == 2
    assert "use one of text, json" in result.output
    result = CliRunner().invoke(app, ["--log-format", "json", "router", "run", "--help"])
    assert result.exit_code == 0
    assert "--metrics-listen" in result.output
