"""A real grpcio server (grpc.aio) of helloworld.Greeter, on 127.0.0.1 port 0.

The stubs are generated at test time by grpcio-tools from the proto below
into a folder of the caller's (nothing generated is checked in):

    async with Greeter(tmp_path) as g:
        ... f"http://127.0.0.1:{g.port}" ...

SayHellos streams three answers back; Collect greets every name it is
streamed at once. SayHello answers "Hello, <name>" with the request's x-client-id metadata back
as initial metadata `x-seen-client-id`, and the deadline it saw as trailing
metadata `x-time-remaining` (seconds, or "none"). Names that misbehave:
"fail" -> INVALID_ARGUMENT "bad name"; "slow" -> answers after 2 s (unless
the call is cancelled first: `cancelled` counts those).

`frame()` / `unframe()` are gRPC's message framing (a flag byte and a 4-byte
length), for clients that build the body by hand.
"""

from __future__ import annotations

import asyncio
import importlib
import struct
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
from grpc_tools import protoc

PROTO = """
syntax = "proto3";
package helloworld;

service Greeter {
  rpc SayHello (HelloRequest) returns (HelloReply) {}
  rpc SayHellos (HelloRequest) returns (stream HelloReply) {}
  rpc Collect (stream HelloRequest) returns (HelloReply) {}
}

message HelloRequest { string name = 1; }
message HelloReply { string message = 1; }
"""


def stubs(folder: Path) -> tuple[ModuleType, ModuleType]:
    """(helloworld_pb2, helloworld_pb2_grpc), generated into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "helloworld.proto").write_text(PROTO)
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{folder}",
            f"--python_out={folder}",
            f"--grpc_python_out={folder}",
            str(folder / "helloworld.proto"),
        ]
    )
    if code != 0:
        raise RuntimeError(f"protoc failed ({code})")
    sys.path.insert(0, str(folder))
    try:
        for name in ("helloworld_pb2", "helloworld_pb2_grpc"):
            sys.modules.pop(name, None)
        pb2 = importlib.import_module("helloworld_pb2")
        pb2_grpc = importlib.import_module("helloworld_pb2_grpc")
    finally:
        sys.path.remove(str(folder))
    return pb2, pb2_grpc


def frame(message: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(message)) + message


def unframe(data: bytes) -> list[bytes]:
    out = []
    while data:
        (size,) = struct.unpack(">I", data[1:5])
        out.append(data[5 : 5 + size])
        data = data[5 + size :]
    return out


class Greeter:
    def __init__(self, folder: Path) -> None:
        self.pb2, self.pb2_grpc = stubs(folder / "stubs")
        self.port = 0
        self.calls = 0
        self.cancelled = 0
        self._server: Any = None

    def _servicer(self) -> Any:
        greeter = self
        pb2 = self.pb2

        class Servicer(self.pb2_grpc.GreeterServicer):  # type: ignore[name-defined,misc]
            async def SayHello(self, request: Any, context: Any) -> Any:
                greeter.calls += 1
                metadata = dict(context.invocation_metadata())
                seen = metadata.get("x-client-id")
                if seen is not None:
                    await context.send_initial_metadata((("x-seen-client-id", seen),))
                remaining = context.time_remaining()
                context.set_trailing_metadata(
                    (("x-time-remaining", "none" if remaining is None else f"{remaining:.3f}"),)
                )
                if request.name == "fail":
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad name")
                if request.name == "slow":
                    try:
                        await asyncio.sleep(2)
                    except asyncio.CancelledError:
                        greeter.cancelled += 1
                        raise
                return pb2.HelloReply(message=f"Hello, {request.name}")

            async def SayHellos(self, request: Any, context: Any) -> Any:
                for i in range(3):
                    yield pb2.HelloReply(message=f"Hello #{i}, {request.name}")

            async def Collect(self, requests: Any, context: Any) -> Any:
                names = [r.name async for r in requests]
                return pb2.HelloReply(message="Hello, " + " and ".join(names))

        return Servicer()

    async def __aenter__(self) -> Greeter:
        self._server = grpc.aio.server()
        self.pb2_grpc.add_GreeterServicer_to_server(self._servicer(), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._server.stop(grace=None)
