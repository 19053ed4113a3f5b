"""A gRPC service served dark (grpclib on overlay streams, no port) and called through the
overlay: unary and streaming calls with real protobuf messages, the proven caller in every
call's metadata (a client cannot forge it), strangers refused by the policy before the server
runs, and a stock grpcio client reaching the same dark service."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import context, running_router
from umbranet.sdk import Context, DialError
from umbranet.sdk.forward import relay
from umbranet.testing import LocalNetwork

pytest.importorskip("grpclib", reason="grpclib is not installed (umbranet[grpc])")

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpclib.client import StreamStreamMethod, UnaryStreamMethod, UnaryUnaryMethod
from grpclib.const import Cardinality, Handler
from grpclib.server import Server, Stream

from umbranet.integrations.grpc_host import GrpcHost, OverlayChannel, grpc_peer

ALICE = "spiffe://test.umbra/workload/alice"


def _messages() -> tuple[Any, Any]:
    """EchoRequest{text, repeat} and EchoReply{text, caller}: real protobuf classes, built
    from a descriptor as protoc would write it (no generated files to keep in step)."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="umbranet_test_echo.proto", package="umbratest", syntax="proto3"
    )
    field = descriptor_pb2.FieldDescriptorProto
    request = proto.message_type.add(name="EchoRequest")
    request.field.add(name="text", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    request.field.add(name="repeat", number=2, type=field.TYPE_INT32, label=field.LABEL_OPTIONAL)
    reply = proto.message_type.add(name="EchoReply")
    reply.field.add(name="text", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    reply.field.add(name="caller", number=2, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return tuple(
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"umbratest.{name}"))
        for name in ("EchoRequest", "EchoReply")
    )


EchoRequest, EchoReply = _messages()
SAY, COUNT, CHAT = "/umbratest.Echo/Say", "/umbratest.Echo/Count", "/umbratest.Echo/Chat"


class Echo:
    """The service, as protoc's grpclib plugin would have us write it."""

    async def say(self, stream: Stream[Any, Any]) -> None:
        request = await stream.recv_message()
        await stream.send_message(EchoReply(text=request.text, caller=grpc_peer(stream)))

    async def count(self, stream: Stream[Any, Any]) -> None:  # server streaming
        request = await stream.recv_message()
        for i in range(request.repeat):
            await stream.send_message(EchoReply(text=f"{request.text}-{i}", caller=""))

    async def chat(self, stream: Stream[Any, Any]) -> None:  # both ways, message by message
        async for request in stream:
            await stream.send_message(EchoReply(text=request.text.upper(), caller=""))

    def __mapping__(self) -> dict[str, Handler]:
        return {
            SAY: Handler(self.say, Cardinality.UNARY_UNARY, EchoRequest, EchoReply),
            COUNT: Handler(self.count, Cardinality.UNARY_STREAM, EchoRequest, EchoReply),
            CHAT: Handler(self.chat, Cardinality.STREAM_STREAM, EchoRequest, EchoReply),
        }


async def _hosted(network: LocalNetwork, test: Any) -> tuple[Any, dict[str, int]]:
    """Run `test()` while Echo is served dark as "echo"; its result and the host's counters."""
    async with running_router(network), context(network, "host", "server") as host:
        listener = await host.listen("echo").start()
        hosting = GrpcHost(Server([Echo()]), listener)
        serving = asyncio.get_running_loop().create_task(hosting.serve())
        try:
            result = await test()
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
            await listener.close()
        return result, hosting.statistics()


def test_unary_and_streaming_calls_through_the_overlay(network, arun) -> None:
    async def test() -> tuple[Any, list[Any], list[str], Any]:
        async with context(network, "alice", "client") as alice:
            async with OverlayChannel(alice, "echo") as channel:
                unary = await UnaryUnaryMethod(channel, SAY, EchoRequest, EchoReply)(
                    EchoRequest(text="hello")
                )
                counted = await UnaryStreamMethod(channel, COUNT, EchoRequest, EchoReply)(
                    EchoRequest(text="n", repeat=3)
                )
                chat = StreamStreamMethod(channel, CHAT, EchoRequest, EchoReply)
                replies = []
                async with chat.open() as call:  # each reply before the next request
                    for word in ("one", "two"):
                        await call.send_message(EchoRequest(text=word))
                        replies.append((await call.recv_message()).text)
                    await call.end()
                    assert await call.recv_message() is None
                # A caller's own umbranet-peer metadata is dropped, the proven one written.
                forged = await UnaryUnaryMethod(channel, SAY, EchoRequest, EchoReply)(
                    EchoRequest(text="me"), metadata={"umbranet-peer": "spiffe://evil/x"}
                )
            return unary, counted, replies, forged

    (unary, counted, replies, forged), stats = arun(_hosted(network, test))
    assert (unary.text, unary.caller) == ("hello", ALICE)
    assert [r.text for r in counted] == ["n-0", "n-1", "n-2"]
    assert replies == ["ONE", "TWO"]
    assert forged.caller == ALICE
    assert stats["accepted"] == 1  # one channel, one overlay stream, four calls
    assert stats["calls"] == 4
    assert stats["spoofed_metadata"] == 1


def test_a_caller_the_policy_refuses_never_reaches_the_server(network, arun) -> None:
    async def test() -> str:
        mallory = context(network, "mallory", "nobody")
        async with mallory, OverlayChannel(mallory, "echo") as channel:
            with pytest.raises(DialError) as info:
                await UnaryUnaryMethod(channel, SAY, EchoRequest, EchoReply)(
                    EchoRequest(text="let me in")
                )
            return info.value.code

    code, stats = arun(_hosted(network, test))
    assert code == "not_authorized"
    assert stats.get("accepted", 0) == 0
    assert stats.get("calls", 0) == 0


def test_a_grpcio_client_reaches_the_dark_service(network, arun, tmp_path: Path) -> None:
    """grpcio (the C-core client) cannot take a socket, but it dials Unix sockets: a private
    one whose every connection is relayed to a fresh overlay dial stands in for the port."""
    grpc = pytest.importorskip("grpc", reason="grpcio is not installed")
    path = tmp_path / "echo.sock"

    def call() -> Any:
        with grpc.insecure_channel(f"unix:{path}") as channel:
            say = channel.unary_unary(
                SAY,
                request_serializer=EchoRequest.SerializeToString,
                response_deserializer=EchoReply.FromString,
            )
            return say(EchoRequest(text="from grpcio"), timeout=10)

    async def test() -> Any:
        async with context(network, "alice", "client") as alice:
            server = await asyncio.start_unix_server(
                lambda r, w: _relay_to(alice, "echo", r, w), path=str(path)
            )
            async with server:
                return await asyncio.to_thread(call)

    reply, stats = arun(_hosted(network, test))
    assert (reply.text, reply.caller) == ("from grpcio", ALICE)
    assert stats["calls"] == 1


async def _relay_to(
    ctx: Context, service: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        stream = await ctx.dial(service)
    except DialError:
        writer.close()
        return
    with contextlib.suppress(ConnectionError):
        await relay(stream, reader, writer)
