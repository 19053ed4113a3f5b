"""The Noise handshake patterns (revision 34) as a table, and what each message costs.

Why a module of its own: the table is data, not machinery; `umbranet.proto.noise` reads
patterns from here and keeps the state machines. Pure: no IO, no clock.
"""

from __future__ import annotations

__all__ = ["DH_LEN", "PATTERNS", "TAG_LEN", "TOKENS", "Messages", "Pattern", "overheads"]

DH_LEN = 32
TAG_LEN = 16
TOKENS = frozenset({"e", "s", "ee", "es", "se", "ss"})

Messages = tuple[tuple[str, ...], ...]
# (initiator pre-messages, responder pre-messages, messages)
Pattern = tuple[tuple[str, ...], tuple[str, ...], Messages]

# Handshake patterns, written exactly as in the Noise specification (7.4, 7.5 and 18.4).
# Rules of this table:
# - Messages are separated by ";" and alternate, the initiator ("->") always sending first.
# - Pre-messages (public keys a side knows before the handshake starts) stand before "...":
#   at most one "->" line, then at most one "<-" line; only "s" occurs there.
# - Tokens: "e" / "s" send the sender's ephemeral / static public key ("s" is encrypted once a
#   key exists); "ee", "es", "se", "ss" mix a DH into the chaining key, the first letter naming
#   the initiator's key and the second the responder's.
# - psk modifiers are applied to a pattern from its name: "psk0" puts a "psk" token at the start
#   of the first message, "pskN" at the end of message N. With any psk, "e" also mixes the key.
# - A pattern of one message is one-way: only the initiator sends, before and after the split.
_PATTERN_TABLE: dict[str, str] = {
    # One-way.
    "N": "<- s ... -> e, es",
    "K": "-> s; <- s ... -> e, es, ss",
    "X": "<- s ... -> e, es, s, ss",
    # Fundamental interactive.
    "NN": "-> e; <- e, ee",
    "NK": "<- s ... -> e, es; <- e, ee",
    "NX": "-> e; <- e, ee, s, es",
    "XN": "-> e; <- e, ee; -> s, se",
    "XK": "<- s ... -> e, es; <- e, ee; -> s, se",
    "XX": "-> e; <- e, ee, s, es; -> s, se",
    "KN": "-> s ... -> e; <- e, ee, se",
    "KK": "-> s; <- s ... -> e, es, ss; <- e, ee, se",
    "KX": "-> s ... -> e; <- e, ee, se, s, es",
    "IN": "-> e, s; <- e, ee, se",
    "IK": "<- s ... -> e, es, s, ss; <- e, ee, se",
    "IX": "-> e, s; <- e, ee, se, s, es",
    # Deferred ("1" = that side's DH is put off by one message).
    "NK1": "<- s ... -> e; <- e, ee, es",
    "NX1": "-> e; <- e, ee, s; -> es",
    "X1N": "-> e; <- e, ee; -> s; <- se",
    "X1K": "<- s ... -> e, es; <- e, ee; -> s; <- se",
    "XK1": "<- s ... -> e; <- e, ee, es; -> s, se",
    "X1K1": "<- s ... -> e; <- e, ee, es; -> s; <- se",
    "X1X": "-> e; <- e, ee, s, es; -> s; <- se",
    "XX1": "-> e; <- e, ee, s; -> es, s, se",
    "X1X1": "-> e; <- e, ee, s; -> es, s; <- se",
    "K1N": "-> s ... -> e; <- e, ee; -> se",
    "K1K": "-> s; <- s ... -> e, es; <- e, ee; -> se",
    "KK1": "-> s; <- s ... -> e; <- e, ee, se, es",
    "K1K1": "-> s; <- s ... -> e; <- e, ee, es; -> se",
    "K1X": "-> s ... -> e; <- e, ee, s, es; -> se",
    "KX1": "-> s ... -> e; <- e, ee, se, s; -> es",
    "K1X1": "-> s ... -> e; <- e, ee, s; -> se, es",
    "I1N": "-> e, s; <- e, ee; -> se",
    "I1K": "<- s ... -> e, es, s; <- e, ee; -> se",
    "IK1": "<- s ... -> e, s; <- e, ee, se, es",
    "I1K1": "<- s ... -> e, s; <- e, ee, es; -> se",
    "I1X": "-> e, s; <- e, ee, s, es; -> se",
    "IX1": "-> e, s; <- e, ee, se, s; -> es",
    "I1X1": "-> e, s; <- e, ee, s; -> se, es",
}


def overheads(messages: Messages, psk_mode: bool) -> list[int]:
    """Each message's size without its payload: what a read needs at least."""
    keyed = False
    sizes = []
    for tokens in messages:
        size = 0
        for token in tokens:
            if token == "e":
                size += DH_LEN
                keyed = keyed or psk_mode
            elif token == "s":
                size += DH_LEN + (TAG_LEN if keyed else 0)
            else:
                keyed = True  # a DH or psk token always sets a key
        sizes.append(size + (TAG_LEN if keyed else 0))
    return sizes


def _parse_pattern(text: str) -> Pattern:
    """Turn one line of `_PATTERN_TABLE` into (initiator pre, responder pre, messages)."""
    pre_text, _, msg_text = text.rpartition("...")
    pre: dict[str, tuple[str, ...]] = {"->": (), "<-": ()}
    for line in filter(None, (part.strip() for part in pre_text.split(";"))):
        pre[line[:2]] = tuple(t.strip() for t in line[2:].split(","))
    messages = []
    for i, line in enumerate(part.strip() for part in msg_text.split(";")):
        arrow = "->" if i % 2 == 0 else "<-"
        if not line.startswith(arrow):
            raise ValueError(f"pattern {text!r}: message {i} must be {arrow}")
        messages.append(tuple(t.strip() for t in line[2:].split(",")))
    if not set(pre["->"] + pre["<-"]) <= {"s"} or not set(sum(messages, ())) <= TOKENS:
        raise ValueError(f"pattern {text!r}: unknown token")
    return pre["->"], pre["<-"], tuple(messages)


PATTERNS: dict[str, Pattern] = {k: _parse_pattern(v) for k, v in _PATTERN_TABLE.items()}
