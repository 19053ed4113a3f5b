"""Secrets never show in a repr (logs, tracebacks, debuggers print reprs)."""

from __future__ import annotations

from umbranet.pki.join_key import JoinKeyText
from umbranet.proto.wireguard.handshake import ConsumedInitiation, InitiatorState, SessionKeys

SECRET = bytes(range(32))


def test_join_key_and_wireguard_handshake_state_hide_their_key_bytes() -> None:
    shown = [
        repr(JoinKeyText("https://c", "ab" * 32, "k1", SECRET)),
        repr(SessionKeys(SECRET, SECRET, True)),
        repr(InitiatorState(7, SECRET, b"h", SECRET)),
        repr(ConsumedInitiation(b"p", b"t", 7, b"e", SECRET, b"h")),
    ]
    for text in shown:
        assert repr(SECRET) not in text and SECRET.hex() not in text, text
