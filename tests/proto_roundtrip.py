"""Exercise tgi_async.proto under whatever protobuf/grpcio this interpreter has; print a JSON report.

Run by tests/test_proto_compat.py with the main venv and with TGI's image pins (.venv-oldpins), so it imports
only the standard library, protobuf, grpcio and tgi_async.proto (no pytest, no torch). Exits non-zero on any
mismatch. Usage: `PYTHONPATH=<repo> python tests/proto_roundtrip.py`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import sys
import tempfile

import grpc
import grpc.aio
from google.protobuf import __version__ as protobuf_version
from google.protobuf.descriptor import FieldDescriptor

from tgi_async.proto import ShardStub, add_servicer, pb

_SCALARS = {
    FieldDescriptor.TYPE_BOOL: lambda i: True,
    FieldDescriptor.TYPE_STRING: lambda i: f"s{i}-é",
    FieldDescriptor.TYPE_BYTES: lambda i: bytes([i, 0, 255]),
    FieldDescriptor.TYPE_FLOAT: lambda i: 0.5 + i,
    FieldDescriptor.TYPE_UINT32: lambda i: 4_000_000_000 - i,
    FieldDescriptor.TYPE_UINT64: lambda i: 2**63 + i,
    FieldDescriptor.TYPE_INT32: lambda i: -i - 1,
    FieldDescriptor.TYPE_ENUM: lambda i: 2,
}


def _is_repeated(field: FieldDescriptor) -> bool:
    # NOTE: `label` is gone in protobuf 7; `is_repeated` is missing in 5.29.
    is_repeated = getattr(field, "is_repeated", None)
    return is_repeated if is_repeated is not None else field.label == FieldDescriptor.LABEL_REPEATED


def populate(message, depth: int = 0) -> None:
    """Set every field of `message` (recursively, two items per repeated field) to a non-default value."""
    for index, field in enumerate(message.DESCRIPTOR.fields, start=1):
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth > 4:
                continue
            if _is_repeated(field):
                for _ in range(2):
                    populate(getattr(message, field.name).add(), depth + 1)
            else:
                populate(getattr(message, field.name), depth + 1)
                getattr(message, field.name).SetInParent()
            continue
        value = _SCALARS[field.type](index)
        if _is_repeated(field):
            getattr(message, field.name).extend([value, value])
        else:
            setattr(message, field.name, value)


def check_messages() -> dict[str, str]:
    """Build, serialize and parse every message kind; return sha256 of each deterministic encoding."""
    digests = {}
    for name, descriptor in pb.DESCRIPTOR.message_types_by_name.items():
        cls = getattr(pb, name)
        message = cls()
        populate(message)
        data = message.SerializeToString(deterministic=True)
        parsed = cls.FromString(data)
        assert parsed == message, name
        assert parsed.SerializeToString(deterministic=True) == data, name
        if descriptor.fields:
            assert data, f"{name} serialized to nothing"
        for field in descriptor.fields:
            if field.containing_oneof is not None and field.containing_oneof.name == f"_{field.name}":
                assert parsed.HasField(field.name), f"{name}.{field.name} lost its presence"
        digests[name] = hashlib.sha256(data).hexdigest()
    chunk = pb.InputChunk.FromString(pb.InputChunk(text="hi").SerializeToString())
    assert chunk.WhichOneof("chunk") == "text"
    return digests


class EchoServicer:
    """A shard stand-in: answers each RPC with data derived from its request."""

    def __init__(self, socket_url: str) -> None:
        self.socket_url = socket_url
        self.metadata: dict[str, str] = {}

    async def Info(self, request, context):
        return pb.InfoResponse(requires_padding=True, dtype="float32", device_type="cpu", block_size=16)

    async def Health(self, request, context):
        self.metadata = {key: value for key, value in context.invocation_metadata()}
        return pb.HealthResponse()

    async def ServiceDiscovery(self, request, context):
        return pb.ServiceDiscoveryResponse(urls=[self.socket_url])

    async def ClearCache(self, request, context):
        if request.HasField("id") and request.id == 404:
            await context.abort(grpc.StatusCode.INTERNAL, "batch 404 not found")
        return pb.ClearCacheResponse()

    async def FilterBatch(self, request, context):
        ids = list(request.request_ids)
        return pb.FilterBatchResponse(
            batch=pb.CachedBatch(id=request.batch_id, request_ids=ids, size=len(ids))
        )

    async def Warmup(self, request, context):
        return pb.WarmupResponse(max_input_tokens=request.max_input_tokens, max_total_tokens=4096)

    async def Prefill(self, request, context):
        generations = [
            pb.Generation(
                request_id=r.id,
                tokens=pb.Tokens(
                    ids=[7], logprobs=[-0.25], texts=[r.input_chunks.chunks[0].text], is_special=[False]
                ),
            )
            for r in request.batch.requests
        ]
        ids = [r.id for r in request.batch.requests]
        batch = pb.CachedBatch(id=request.batch.id, request_ids=ids, size=len(ids), current_tokens=len(ids))
        return pb.PrefillResponse(generations=generations, batch=batch, forward_ns=1, total_ns=2)

    async def Decode(self, request, context):
        ids = [i for batch in request.batches for i in batch.request_ids]
        generations = [
            pb.Generation(
                request_id=i,
                tokens=pb.Tokens(ids=[2], logprobs=[0.0], texts=["</s>"], is_special=[True]),
                generated_text=pb.GeneratedText(
                    text="done", generated_tokens=2, finish_reason=pb.FINISH_REASON_EOS_TOKEN
                ),
            )
            for i in ids
        ]
        return pb.DecodeResponse(generations=generations, total_ns=3)


async def check_grpc() -> list[str]:
    """A grpc.aio server and client, both from our service table, over a Unix socket; every RPC once."""
    directory = tempfile.mkdtemp(prefix="tgia-proto-", dir=os.environ.get("TGI_ASYNC_TMP_ROOT") or "/tmp")
    url = f"unix://{os.path.join(directory, 'shard-0')}"
    servicer = EchoServicer(url)
    server = grpc.aio.server()
    add_servicer(server, servicer)
    server.add_insecure_port(url)
    await server.start()
    done = []
    try:
        async with grpc.aio.insecure_channel(url) as channel:
            stub = ShardStub(channel)
            info = await stub.Info(pb.InfoRequest(), timeout=10)
            assert info.requires_padding and info.block_size == 16 and not info.HasField("window_size")
            done.append("Info")

            await stub.Health(pb.HealthRequest(), metadata=(("traceparent", "00-abc-def-01"),), timeout=10)
            assert servicer.metadata.get("traceparent") == "00-abc-def-01"
            done.append("Health")

            urls = (await stub.ServiceDiscovery(pb.ServiceDiscoveryRequest(), timeout=10)).urls
            assert list(urls) == [url]
            done.append("ServiceDiscovery")

            warmup = await stub.Warmup(
                pb.WarmupRequest(max_input_tokens=100, max_prefill_tokens=200), timeout=10
            )
            assert not warmup.HasField("max_supported_total_tokens") and warmup.max_input_tokens == 100
            done.append("Warmup")

            requests = [
                pb.Request(id=i, input_chunks=pb.Input(chunks=[pb.InputChunk(text=f"prompt {i}")]))
                for i in (1, 2)
            ]
            batch = pb.Batch(id=5, requests=requests, size=2, max_tokens=64)
            prefill = await stub.Prefill(pb.PrefillRequest(batch=batch), timeout=10)
            assert [g.tokens.texts[0] for g in prefill.generations] == ["prompt 1", "prompt 2"]
            assert prefill.HasField("batch") and list(prefill.batch.request_ids) == [1, 2]
            done.append("Prefill")

            decode = await stub.Decode(pb.DecodeRequest(batches=[prefill.batch]), timeout=10)
            assert not decode.HasField("batch")
            assert all(
                g.generated_text.finish_reason == pb.FINISH_REASON_EOS_TOKEN for g in decode.generations
            )
            done.append("Decode")

            kept = await stub.FilterBatch(pb.FilterBatchRequest(batch_id=5, request_ids=[2]), timeout=10)
            assert list(kept.batch.request_ids) == [2]
            done.append("FilterBatch")

            await stub.ClearCache(pb.ClearCacheRequest(), timeout=10)
            try:
                await stub.ClearCache(pb.ClearCacheRequest(id=404), timeout=10)
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.INTERNAL and "404" in (error.details() or "")
            else:
                raise AssertionError("ClearCache(404) did not fail")
            done.append("ClearCache")
    finally:
        await server.stop(grace=None)
        shutil.rmtree(directory, ignore_errors=True)
    return done


def main() -> int:
    report = {
        "python": sys.version.split()[0],
        "protobuf": protobuf_version,
        "grpcio": grpc.__version__,
        "torch_imported": "torch" in sys.modules,
        "messages": check_messages(),
        "rpcs": asyncio.run(check_grpc()),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
