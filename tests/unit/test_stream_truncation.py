"""A router that cuts a stream short and says "RESET no_error" must not pass for a clean end.

Two real SDK Streams are joined in memory through a malicious relay hop
(`umbranet.testing.memrelay`): it delivers part of a transfer in both directions, drops the
rest, and sends both ends RESET with code 0. Each application must get an error marked
unauthenticated, never an end of data; through `sdk.forward.relay` (what the agent and
`umbra serve` use) the local TCP peers must see a reset (RST), never a FIN. A peer's own
abort arrives sealed, so it is reported as authenticated.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from datetime import UTC, datetime

import pytest

from umbranet.pki import IdentityFile
from umbranet.pki.tickets import Action
from umbranet.proto.e2e import DialerHandshake, HostHandshake, LocalCredentials
from umbranet.sdk.errors import StreamReset
from umbranet.sdk.forward import relay
from umbranet.testing import LocalNetwork
from umbranet.testing.memrelay import MemoryCircuit, TruncateAndReset
from umbranet.wire import ErrorCode

NET = LocalNetwork()
ALICE = NET.identity("alice")
WEB = NET.identity("web")
SIZE = 1_000_000
KEEP = 262_144


def _credentials(identity: IdentityFile) -> LocalCredentials:
    return LocalCredentials(identity.cert_pem, identity.noise_private_key, identity.bundle)


def _handshakes() -> tuple[DialerHandshake, HostHandshake]:
    now = datetime.now(UTC)
    dial = NET.signer.sign_ticket(ALICE.spiffe_id, "echo", Action.DIAL, now)[1]
    bind = NET.signer.sign_ticket(WEB.spiffe_id, "echo", Action.BIND, now)[1]
    return (
        DialerHandshake("echo", dial, _credentials(ALICE)),
        HostHandshake("echo", bind, _credentials(WEB)),
    )


async def _read_to_end(stream: object) -> tuple[bytes, BaseException | None]:
    """Everything the stream delivers, and the error it ended with (None: a clean EOF)."""
    read = stream.read  # type: ignore[attr-defined]
    received = bytearray()
    try:
        while chunk := await read(65536):
            received += chunk
    except ConnectionError as exc:
        return bytes(received), exc
    return bytes(received), None


async def _send(stream: object, payload: bytes) -> None:
    with contextlib.suppress(ConnectionError):
        for offset in range(0, len(payload), 32768):
            stream.write(payload[offset : offset + 32768])  # type: ignore[attr-defined]
            await stream.drain()  # type: ignore[attr-defined]
        stream.write_eof()  # type: ignore[attr-defined]


def test_forged_reset_no_error_truncates_both_ways_and_both_ends_see_an_error(
    arun: object,
) -> None:
    async def main() -> None:
        dialer, host = _handshakes()
        cut = TruncateAndReset(KEEP, ErrorCode.NO_ERROR, "all done")
        async with MemoryCircuit(dialer, host, hook=cut) as (a, b):
            up, down = os.urandom(SIZE), os.urandom(SIZE)
            senders = [asyncio.create_task(_send(a, up)), asyncio.create_task(_send(b, down))]
            (got_b, error_b), (got_a, error_a) = await asyncio.wait_for(
                asyncio.gather(_read_to_end(b), _read_to_end(a)), 20
            )
            await asyncio.gather(*senders)
        assert cut.cut
        for got, sent, error in ((got_b, up, error_b), (got_a, down, error_a)):
            assert len(got) < len(sent) and sent.startswith(got)  # truncated, not corrupted
            assert isinstance(error, StreamReset), "a truncated stream read as a clean EOF"
            assert error.code == "no_error" and error.authenticated is False
            assert "unauthenticated" in str(error)

    arun(main())  # type: ignore[operator]


def test_peer_abort_arrives_sealed_and_is_told_apart_from_a_forged_one(arun: object) -> None:
    async def main() -> None:
        dialer, host = _handshakes()
        async with MemoryCircuit(dialer, host) as (a, b):
            a.write(b"request")
            assert await b.read(7) == b"request"
            b.abort("the host gave up")
            with pytest.raises(StreamReset) as caught:
                await asyncio.wait_for(a.read(10), 10)
        assert caught.value.code == "cancelled" and caught.value.authenticated is True
        assert caught.value.reason == "the host gave up"

    arun(main())  # type: ignore[operator]


def test_a_clean_end_is_still_a_clean_end(arun: object) -> None:
    async def main() -> None:
        dialer, host = _handshakes()
        async with MemoryCircuit(dialer, host) as (a, b):
            payload = os.urandom(300_000)
            sender = asyncio.create_task(_send(a, payload))
            got, error = await asyncio.wait_for(_read_to_end(b), 10)
            await sender
            b.write_eof()
            assert await asyncio.wait_for(a.read(), 10) == b""
        assert error is None and got == payload

    arun(main())  # type: ignore[operator]


async def _tcp_pair() -> tuple[
    asyncio.StreamReader, asyncio.StreamWriter, asyncio.StreamReader, asyncio.StreamWriter
]:
    """A connected loopback TCP pair: (app side reader/writer, relay side reader/writer)."""
    accepted: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
        asyncio.get_running_loop().create_future()
    )

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result((reader, writer))

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    app_reader, app_writer = await asyncio.open_connection("127.0.0.1", port)
    relay_reader, relay_writer = await asyncio.wait_for(accepted, 10)
    server.close()
    return app_reader, app_writer, relay_reader, relay_writer


async def _app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes) -> str:
    """A local app sending `payload` and reading until the connection ends: how it ended."""

    async def send() -> None:
        with contextlib.suppress(ConnectionError):
            writer.write(payload)
            await writer.drain()

    sender = asyncio.create_task(send())
    try:
        while await reader.read(65536):
            pass
    except ConnectionResetError:
        return "reset"
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        writer.close()
    return "eof"


def test_forged_reset_reaches_local_tcp_apps_as_rst_not_fin(arun: object) -> None:
    async def main() -> None:
        dialer, host = _handshakes()
        cut = TruncateAndReset(KEEP, ErrorCode.NO_ERROR, "all done")
        async with MemoryCircuit(dialer, host, hook=cut) as (a, b):
            client_r, client_w, near_r, near_w = await _tcp_pair()  # the intercepted app
            server_r, server_w, far_r, far_w = await _tcp_pair()  # the hosted service
            relays = [
                asyncio.create_task(relay(a, near_r, near_w)),
                asyncio.create_task(relay(b, far_r, far_w)),
            ]
            endings = await asyncio.wait_for(
                asyncio.gather(
                    _app(client_r, client_w, os.urandom(SIZE)),
                    _app(server_r, server_w, os.urandom(SIZE)),
                ),
                20,
            )
            outcomes = await asyncio.wait_for(asyncio.gather(*relays), 10)
        assert endings == ["reset", "reset"], "a truncated flow ended with FIN at a local app"
        assert [o.reset_by for o in outcomes] == ["overlay", "overlay"]
        assert all(o.code == "no_error" for o in outcomes)

    arun(main())  # type: ignore[operator]
