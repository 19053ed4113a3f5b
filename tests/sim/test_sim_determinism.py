"""The simulated network itself: one seed replays one run exactly, and its carrier behaves
like the byte stream the shells get (ordered and whole, however late)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from umbranet.testing.simnet import SimNet, echo
from umbranet.wire import FrameDecoder, FrameType
from umbranet.wire.frames import encode_frame, encode_header

KiB = 1024


def _eventful_run(seed: int) -> tuple[SimNet, list[bytes]]:
    """Two routers on jittery, lossy links, two echo circuits, a partition and its heal."""
    net = SimNet(seed=seed)
    r1, r2 = net.router("r1"), net.router("r2")
    net.link(r1, r2, latency=0.02, jitter=0.01, loss=0.05)
    alice = net.endpoint("alice")
    web = net.endpoint("web")
    net.connect(alice, r1, latency=0.005, jitter=0.004, loss=0.05)
    net.connect(web, r2, latency=0.005, jitter=0.004, loss=0.05)
    listener = web.listen("echo", echo)
    net.route(r1, "echo", via=r2)
    net.run_until(lambda: listener.bound, within=2.0)
    payloads = [random.Random(n).randbytes(300 * KiB + n) for n in (1, 2)]
    streams = [alice.dial("echo") for _ in payloads]
    for stream, payload in zip(streams, payloads, strict=True):
        stream.write(payload)
    net.run_for(0.05)
    net.partition(r1, r2)
    net.run_for(2.0)
    net.heal(r1, r2)
    for stream in streams:
        stream.write_eof()
    net.run_until(lambda: all(s.ended for s in streams), within=10.0)
    net.run_for(6.0)  # and some keepalives
    return net, [s.read() for s in streams if s.finished]


def test_the_same_seed_gives_the_same_trace() -> None:
    net, echoed = _eventful_run(seed=7)
    again, _ = _eventful_run(seed=7)
    assert net.trace.render() == again.trace.render()
    # The run did go through every kind of step, and came out whole.
    seen = {record.what for record in net.trace.records}
    assert seen >= {"PARTITION", "HEAL", "DIAL", "CONNECT", "HANDSHAKE", "PING", "PONG"}
    assert echoed == [random.Random(n).randbytes(300 * KiB + n) for n in (1, 2)]


def test_another_seed_gives_another_run() -> None:
    # Jitter and loss are drawn from the seed: a different seed moves arrival times.
    assert _eventful_run(seed=7)[0].trace.render() != _eventful_run(seed=8)[0].trace.render()


def test_jitter_and_loss_never_reorder_or_lose_bytes() -> None:
    # Every write arrives whole and in order, however late (a lost segment is resent):
    # an AEAD nonce out of order would reset the circuit with decrypt_failed.
    net = SimNet(seed=11)
    r1 = net.router("r1")
    alice, web = net.endpoint("alice"), net.endpoint("web")
    net.connect(alice, r1, latency=0.01, jitter=0.05, loss=0.3, rto=0.2)
    net.connect(web, r1, latency=0.01, jitter=0.05, loss=0.3, rto=0.2)
    listener = web.listen("echo", echo)
    net.run_until(lambda: listener.bound, within=5.0)
    payload = random.Random(3).randbytes(2 * 1024 * KiB)
    stream = alice.dial("echo")
    for offset in range(0, len(payload), 10 * KiB):  # many small writes, many arrivals
        stream.write(payload[offset : offset + 10 * KiB])
    stream.write_eof()
    net.run_until(lambda: stream.ended is not None, within=60.0)
    assert stream.finished, stream.ended
    assert stream.read() == payload
    assert net.trace.find("RESET") == []


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    latency=st.floats(0.0001, 0.05),
    jitter=st.floats(0.0, 0.05),
    loss=st.floats(0.0, 0.5),
    sizes=st.lists(st.integers(1, 150 * KiB), min_size=1, max_size=6),
)
def test_any_delays_and_any_writes_echo_exactly_the_bytes_written(
    seed: int, latency: float, jitter: float, loss: float, sizes: list[int]
) -> None:
    net = SimNet(seed=seed)
    r1 = net.router("r1")
    alice, web = net.endpoint("alice"), net.endpoint("web")
    for endpoint in (alice, web):
        net.connect(endpoint, r1, latency=latency, jitter=jitter, loss=loss)
    listener = web.listen("echo", echo)
    net.run_until(lambda: listener.bound, within=5.0)
    writes = [random.Random(seed + n).randbytes(size) for n, size in enumerate(sizes)]
    stream = alice.dial("echo")
    for data in writes:
        stream.write(data)
    stream.write_eof()
    net.run_until(lambda: stream.ended is not None, within=60.0)
    assert stream.finished, stream.ended
    assert stream.read() == b"".join(writes)


def test_frame_decoder_feed_keeps_earlier_frames_of_a_long_input() -> None:
    first = encode_frame(FrameType.HANDSHAKE, 1, b"A" * 100)
    data = b"".join(encode_header(FrameType.DATA, 1, 65552) + bytes([n]) * 65552 for n in range(8))
    frames = FrameDecoder().feed(first + data)
    assert bytes(frames[0].payload) == b"A" * 100
    assert [bytes(f.payload[:1]) for f in frames[1:]] == [bytes([n]) for n in range(8)]
