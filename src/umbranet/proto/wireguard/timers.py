"""WireGuard's timing constants (whitepaper section 6) and the names of the per-peer timers.

    REKEY_AFTER_MESSAGES   2**60        the sender starts a new handshake after this many
    REJECT_AFTER_MESSAGES  2**64-2**13-1 a key is never used for more
    REKEY_AFTER_TIME       120 s        the initiator of a session rekeys when sending on an
                                        older key
    REJECT_AFTER_TIME      180 s        a key older than this is neither used nor accepted
    REKEY_ATTEMPT_TIME     90 s         retries of one handshake stop after this (18 tries)
    REKEY_TIMEOUT          5 s          between initiations, plus up to 1/3 s of random jitter
    KEEPALIVE_TIMEOUT      10 s         a receiver that has sent nothing since a data packet
                                        answers with a keepalive after this; a sender that
                                        heard nothing for this + REKEY_TIMEOUT rehandshakes

Timers (each peer holds at most one deadline per name; the device reports the earliest as
`Deadline(at, "wireguard <name>")`):

    retransmit_handshake   REKEY_TIMEOUT + jitter after an initiation went unanswered
    send_keepalive         KEEPALIVE_TIMEOUT after data arrived, cancelled by any send
    new_handshake          KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + jitter after data was sent,
                           cancelled by anything authenticated arriving
    zero_keys              3 * REJECT_AFTER_TIME after the last session was derived
    persistent_keepalive   the configured interval after any authenticated packet either way
"""

from __future__ import annotations

from umbranet.proto.wireguard.replay import REJECT_AFTER_MESSAGES

__all__ = [
    "INITIATIONS_MIN_INTERVAL",
    "KEEPALIVE_TIMEOUT",
    "MAX_STAGED_PACKETS",
    "MAX_TIMER_HANDSHAKES",
    "REJECT_AFTER_MESSAGES",
    "REJECT_AFTER_TIME",
    "REKEY_AFTER_MESSAGES",
    "REKEY_AFTER_TIME",
    "REKEY_ATTEMPT_TIME",
    "REKEY_TIMEOUT",
    "REKEY_TIMEOUT_JITTER",
    "TIMER_NAMES",
    "UNDER_LOAD_AFTER",
]

REKEY_AFTER_MESSAGES = 2**60
REKEY_AFTER_TIME = 120.0
REJECT_AFTER_TIME = 180.0
REKEY_ATTEMPT_TIME = 90.0
REKEY_TIMEOUT = 5.0
REKEY_TIMEOUT_JITTER = 1.0 / 3.0
KEEPALIVE_TIMEOUT = 10.0
MAX_TIMER_HANDSHAKES = int(REKEY_ATTEMPT_TIME / REKEY_TIMEOUT)
# A responder consumes at most one initiation per peer in this interval (what the reference
# implementations allow), so a replay of a *new* valid initiation cannot be used to churn keys.
INITIATIONS_MIN_INTERVAL = 1.0 / 50.0
# Once under load, a device stays under load this long after the flood ends.
UNDER_LOAD_AFTER = 1.0
MAX_STAGED_PACKETS = 128

TIMER_NAMES = (
    "retransmit_handshake",
    "send_keepalive",
    "new_handshake",
    "zero_keys",
    "persistent_keepalive",
)
