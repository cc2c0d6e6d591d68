"""A real grpcio server with the four kinds of call, and its stubs, made by
grpcio-tools from echo.proto when a test session first asks for them.

`EchoServer` records what the gateway made of each call: the metadata the
server saw, the deadline it was given and the calls that were cancelled.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
from grpc_tools import protoc

PROTO = Path(__file__).with_name("echo.proto")


def stubs(folder: Path) -> tuple[ModuleType, ModuleType]:
    """(echo_pb2, echo_pb2_grpc), generated into `folder` and imported."""
    if "echo_pb2_grpc" not in sys.modules:
        folder.mkdir(parents=True, exist_ok=True)
        code = protoc.main([
            "grpc_tools.protoc", f"-I{PROTO.parent}", f"--python_out={folder}",
            f"--grpc_python_out={folder}", str(PROTO),
        ])  # fmt: skip
        if code != 0:
            raise RuntimeError(f"grpc_tools.protoc failed with {code}")
        sys.path.insert(0, str(folder))
    return importlib.import_module("echo_pb2"), importlib.import_module("echo_pb2_grpc")


@dataclass
class Seen:
    """What the server saw of one call."""

    method: str
    metadata: dict[str, str]
    time_remaining: float | None
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class EchoServer:
    """A grpc.aio server of echo.Echo on 127.0.0.1 (h2c), port chosen by the kernel.

    A note whose text is "fail:<code>:<message>" is answered with that status;
    "trailer:<value>" adds a trailing metadata entry `x-trailer`; every call
    sends back an initial metadata entry `x-echo-meta` with the client's
    `x-meta`, and the `x-user-id` the gateway forwarded."""

    def __init__(self, folder: Path) -> None:
        self.pb2, self.pb2_grpc = stubs(folder)
        self.port = 0
        self.calls: list[Seen] = []
        self._server: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> EchoServer:
        self._server = grpc.aio.server()
        self.pb2_grpc.add_EchoServicer_to_server(_Servicer(self), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._server.stop(grace=None)

    async def enter(self, method: str, context: grpc.aio.ServicerContext) -> Seen:
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        seen = Seen(method, metadata, context.time_remaining())
        self.calls.append(seen)
        context.add_done_callback(lambda ctx: _finished(seen, ctx))
        await context.send_initial_metadata(
            (("x-echo-meta", metadata.get("x-meta", "")),
             ("x-echo-user", metadata.get("x-user-id", "")))
        )  # fmt: skip
        return seen


def _finished(seen: Seen, context: Any) -> None:
    if context.cancelled():
        seen.cancelled.set()
    seen.done.set()


class _Servicer:
    def __init__(self, server: EchoServer) -> None:
        self.server = server
        self.Note = server.pb2.Note

    async def _answer(self, note: Any, context: grpc.aio.ServicerContext) -> Any:
        if note.delay_ms:
            await asyncio.sleep(note.delay_ms / 1000)
        if note.text.startswith("fail:"):
            _, code, message = note.text.split(":", 2)
            await context.abort(grpc.StatusCode[code], message)
        if note.text.startswith("trailer:"):
            context.set_trailing_metadata((("x-trailer", note.text[8:]),))
        return self.Note(text=note.text, count=note.count)

    async def Unary(self, note: Any, context: grpc.aio.ServicerContext) -> Any:
        await self.server.enter("Unary", context)
        return await self._answer(note, context)

    async def ServerStream(
        self, note: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        seen = await self.server.enter("ServerStream", context)
        try:
            for i in range(note.count):
                if note.delay_ms:
                    await asyncio.sleep(note.delay_ms / 1000)
                yield self.Note(text=f"{note.text}-{i}", count=i)
        except asyncio.CancelledError:
            seen.cancelled.set()  # grpcio cancels the handler when the call is cancelled
            raise

    async def ClientStream(
        self, notes: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> Any:
        await self.server.enter("ClientStream", context)
        texts = [note.text async for note in notes]
        return self.Note(text="".join(texts), count=len(texts))

    async def Bidi(
        self, notes: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        await self.server.enter("Bidi", context)
        async for note in notes:
            yield await self._answer(note, context)
