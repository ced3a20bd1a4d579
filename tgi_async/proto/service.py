"""Client stub and server registration for generate.v3.TextGenerationService, built from the descriptor."""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio

from tgi_async.proto import generate_pb2 as pb

_SERVICE = pb.DESCRIPTOR.services_by_name["TextGenerationService"]
SERVICE_NAME = _SERVICE.full_name  # "generate.v3.TextGenerationService"

# method name -> (request class, response class), in the proto's order
METHODS: dict[str, tuple[type, type]] = {
    m.name: (getattr(pb, m.input_type.name), getattr(pb, m.output_type.name)) for m in _SERVICE.methods
}


def method_path(name: str) -> str:
    """The gRPC path of a method, e.g. `/generate.v3.TextGenerationService/Decode`."""
    return f"/{SERVICE_NAME}/{name}"


class ShardStub:
    """grpc.aio client stub: one awaitable attribute per RPC (`await stub.Decode(request, metadata=...)`)."""

    Info: grpc.aio.UnaryUnaryMultiCallable
    Health: grpc.aio.UnaryUnaryMultiCallable
    ServiceDiscovery: grpc.aio.UnaryUnaryMultiCallable
    ClearCache: grpc.aio.UnaryUnaryMultiCallable
    FilterBatch: grpc.aio.UnaryUnaryMultiCallable
    Warmup: grpc.aio.UnaryUnaryMultiCallable
    Prefill: grpc.aio.UnaryUnaryMultiCallable
    Decode: grpc.aio.UnaryUnaryMultiCallable

    def __init__(self, channel: grpc.aio.Channel) -> None:
        for name, (request_cls, response_cls) in METHODS.items():
            callable_ = channel.unary_unary(
                method_path(name),
                request_serializer=request_cls.SerializeToString,
                response_deserializer=response_cls.FromString,
            )
            setattr(self, name, callable_)


def add_servicer(server: grpc.aio.Server, servicer: Any) -> None:
    """Register `servicer` (an object with one `async def Name(request, context)` per RPC) on `server`."""
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name),
            request_deserializer=request_cls.FromString,
            response_serializer=response_cls.SerializeToString,
        )
        for name, (request_cls, response_cls) in METHODS.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
