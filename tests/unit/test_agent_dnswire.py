"""The DNS codec: any bytes parse or raise DnsError, built messages parse back the same."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from umbranet.agent import dnswire as dns

_LABEL = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=63)
_NAME = st.lists(_LABEL, min_size=1, max_size=4).map(".".join)
_RECORD = st.builds(
    dns.Record,
    name=_NAME,
    rtype=st.integers(0, 0xFFFF),
    rclass=st.integers(0, 0xFFFF),
    ttl=st.integers(0, 0xFFFFFFFF),
    data=st.binary(max_size=64),
)
_MESSAGE = st.builds(
    dns.Message,
    id=st.integers(0, 0xFFFF),
    flags=st.integers(0, 0xFFFF),
    questions=st.lists(
        st.builds(dns.Question, _NAME, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)),
        max_size=3,
    ).map(tuple),
    answers=st.lists(_RECORD, max_size=3).map(tuple),
    authorities=st.lists(_RECORD, max_size=2).map(tuple),
    additionals=st.lists(_RECORD, max_size=2).map(tuple),
)


@given(st.binary(max_size=600))
def test_random_bytes_parse_or_raise_dns_error(data: bytes) -> None:
    try:
        dns.parse_message(data)
    except dns.DnsError as exc:
        assert exc.code and exc.reason


@given(_MESSAGE)
def test_build_then_parse_round_trips(message: dns.Message) -> None:
    assert dns.parse_message(dns.build_message(message)) == message


@given(_MESSAGE, st.integers(0, 200), st.binary(min_size=1, max_size=4))
def test_mutated_messages_parse_or_raise_dns_error(
    message: dns.Message, position: int, junk: bytes
) -> None:
    data = bytearray(dns.build_message(message))
    at = position % (len(data) + 1)
    data[at : at + len(junk)] = junk
    with contextlib.suppress(dns.DnsError):
        dns.parse_message(bytes(data))


def _header(qd: int = 1, an: int = 0) -> bytes:
    return struct.pack("!HHHHHH", 7, 0x0100, qd, an, 0, 0)


def test_compressed_names_are_followed() -> None:
    query = dns.build_query(9, "web.umbra")
    # An answer whose name is a pointer to the question's name at offset 12.
    answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 5, 4) + bytes([100, 64, 0, 1])
    data = query[:6] + struct.pack("!H", 1) + query[8:] + answer
    parsed = dns.parse_message(data)
    assert parsed.answers[0].name == "web.umbra"
    assert parsed.answers[0].data == bytes([100, 64, 0, 1])


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\x00\x01", "short_header"),
        (_header() + b"\xc0\x0c\x00\x01\x00\x01", "bad_pointer"),  # points at itself
        (_header() + b"\x03abc\xc0\x0c\x00\x01\x00\x01", "bad_pointer"),  # loop via a label
        (_header() + b"\x40abc\x00\x00\x01\x00\x01", "bad_label"),
        (_header() + b"\x05ab", "truncated"),
        (_header() + b"\x00\x00\x01\x00\x01extra", "trailing_bytes"),
        (_header() + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01", "name_too_long"),
        (struct.pack("!HHHHHH", 1, 0, 0xFFFF, 0, 0, 0), "too_many_records"),
    ],
)
def test_malformed_messages_are_named(data: bytes, code: str) -> None:
    with pytest.raises(dns.DnsError) as caught:
        dns.parse_message(data)
    assert caught.value.code == code


def test_responses_echo_the_question_and_set_the_flags() -> None:
    query = dns.parse_message(dns.build_query(4242, "Web.Umbra", dns.TYPE_A))
    record = dns.a_record("Web.Umbra", "100.64.1.2", 5)
    reply = dns.parse_message(dns.build_response(query, answers=(record,)))
    assert (reply.id, reply.is_response, reply.rcode) == (4242, True, dns.NOERROR)
    assert reply.recursion_desired and reply.questions == query.questions
    assert reply.answers == (record,)
    nx = dns.parse_message(dns.build_response(query, dns.NXDOMAIN))
    assert nx.rcode == dns.NXDOMAIN and nx.answers == ()


def test_error_header_answers_queries_only() -> None:
    garbage = struct.pack("!HH", 77, 0x0100) + b"\xff" * 20
    reply = dns.build_error_header(garbage, dns.FORMERR)
    assert reply is not None
    parsed = dns.parse_message(reply)
    assert (parsed.id, parsed.rcode, parsed.is_response) == (77, dns.FORMERR, True)
    assert dns.build_error_header(b"\x00" * 5, dns.FORMERR) is None
    assert dns.build_error_header(struct.pack("!HH", 1, 0x8000) + bytes(8), dns.FORMERR) is None


def test_unencodable_names_are_refused() -> None:
    with pytest.raises(dns.DnsError):
        dns.build_query(1, "a" * 64 + ".umbra")
    with pytest.raises(dns.DnsError):
        dns.build_query(1, "名前.umbra")
