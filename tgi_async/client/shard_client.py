"""One shard over grpc.aio: generate.v3 calls in, plain data out."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio

from tgi_async.client import convert
from tgi_async.client.types import CachedBatch, NewBatch, ShardInfo, StepResult, WarmupResult
from tgi_async.proto import ShardStub, call_order, pb
from tgi_async.proto.call_order import CallNumbers
from tgi_async.telemetry.grpc_tracing import client_interceptors

Metadata = Sequence[tuple[str, str]]
Response = Any  # a generate.v3 response message
T = TypeVar("T")

# Unbounded messages: prefill logprobs with top tokens for long prompts exceed gRPC's 4 MiB default.
CHANNEL_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]

# A 1x1 PNG sent as the first warmup request's image chunk, like TGI's router does (text models skip it).
WARMUP_IMAGE = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)


class ShardError(Exception):
    """A failed shard call: the gRPC status and the shard's message."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{method} failed ({code.name}): {details}")
        self.method = method
        self.code = code
        self.details = details

    @property
    def unavailable(self) -> bool:
        """No shard answers on the socket (it died, or never started)."""
        return self.code == grpc.StatusCode.UNAVAILABLE

    @property
    def timed_out(self) -> bool:
        return self.code == grpc.StatusCode.DEADLINE_EXCEEDED

    @property
    def not_found(self) -> bool:
        """The shard does not hold a batch the call named (TGI's shards say so in INTERNAL's text)."""
        return self.code == grpc.StatusCode.NOT_FOUND or "not found" in self.details.lower()


def uds_target(path_or_url: str) -> str:
    return path_or_url if path_or_url.startswith("unix:") else f"unix://{path_or_url}"


class ShardClient:
    """Client of one shard. Every method is one RPC; errors raise `ShardError`.

    `call_timeout`: seconds a call that reads or changes the shard's batches may take (gRPC deadline; None:
    none): a hung shard fails its calls instead of hanging every stream.
    """

    def __init__(self, url: str, call_timeout: float | None = None) -> None:
        self.url = uds_target(url)
        self.call_timeout = call_timeout
        self._channel = grpc.aio.insecure_channel(
            self.url, options=CHANNEL_OPTIONS, interceptors=client_interceptors()
        )
        self._stub = ShardStub(self._channel)
        self._numbers = CallNumbers()

    async def close(self) -> None:
        await self._channel.close()

    def _start(
        self, method: str, request, metadata: Metadata | None = None, deadline: bool = True
    ) -> grpc.aio.UnaryUnaryCall:
        """Start an RPC that reads or changes the shard's batches, with the next call number (call_order).

        NOTE: synchronous on purpose: grpc.aio queues the RPC's task right here, so it goes out before
        whatever the caller schedules next (the scheduler wakes the previous step's streams after this)."""
        metadata = (*(metadata or ()), self._numbers.next())
        timeout = self.call_timeout if deadline else None
        return getattr(self._stub, method)(request, metadata=metadata, timeout=timeout)

    async def _finish(
        self, method: str, call: Awaitable[Response], convert_response: Callable[[Response], T]
    ) -> T:
        try:
            response = await call
        except grpc.aio.AioRpcError as exc:
            raise ShardError(method, exc.code(), exc.details() or "") from None
        return convert_response(response)

    async def _call(self, method: str, request):
        return await self._finish(method, getattr(self._stub, method)(request), _same)

    async def info(self) -> ShardInfo:
        call = self._stub.Info(pb.InfoRequest())
        info = convert.shard_info_from_pb(await self._finish("Info", call, _same))
        ordered = call_order.announces_ordering(await call.initial_metadata())
        return dataclasses.replace(info, orders_calls=ordered)

    async def health(self, timeout: float | None = None) -> None:
        await self._finish("Health", self._stub.Health(pb.HealthRequest(), timeout=timeout), _same)

    def fence(self) -> Awaitable[None]:
        """A Health call started now, in the order of the calls that change batches: a shard that runs calls
        one at a time answers it only once every call it received before has started (see Pipeline)."""
        return self._finish("Health", self._start("Health", pb.HealthRequest()), _nothing)

    async def service_discovery(self) -> list[str]:
        return list((await self._call("ServiceDiscovery", pb.ServiceDiscoveryRequest())).urls)

    def clear_cache(self, batch_id: int | None = None, metadata: Metadata | None = None) -> Awaitable[None]:
        request = pb.ClearCacheRequest() if batch_id is None else pb.ClearCacheRequest(id=batch_id)
        return self._finish("ClearCache", self._start("ClearCache", request, metadata), _nothing)

    def filter_batch(
        self, batch_id: int, request_ids: Sequence[int], metadata: Metadata | None = None
    ) -> Awaitable[CachedBatch | None]:
        request = pb.FilterBatchRequest(batch_id=batch_id, request_ids=list(request_ids))
        return self._finish("FilterBatch", self._start("FilterBatch", request, metadata), _filtered_batch)

    async def warmup(
        self,
        max_input_tokens: int | None,
        max_prefill_tokens: int,
        max_total_tokens: int | None,
        max_batch_size: int | None,
    ) -> WarmupResult:
        request = warmup_request(max_input_tokens, max_prefill_tokens, max_total_tokens, max_batch_size)
        # NOTE: no deadline: TGI's shards profile memory and capture CUDA graphs here (minutes on big models)
        call = self._start("Warmup", request, deadline=False)
        return await self._finish("Warmup", call, convert.warmup_from_pb)

    def prefill(
        self, batch: NewBatch, cached_batch: CachedBatch | None = None, metadata: Metadata | None = None
    ) -> Awaitable[StepResult]:
        request = pb.PrefillRequest(batch=convert.batch_to_pb(batch))
        if cached_batch is not None:
            request.cached_batch.CopyFrom(convert.cached_batch_to_pb(cached_batch))
        call = self._start("Prefill", request, metadata)
        return self._finish("Prefill", call, convert.step_result_from_pb)

    def decode(
        self, batches: Sequence[CachedBatch], metadata: Metadata | None = None
    ) -> Awaitable[StepResult]:
        request = pb.DecodeRequest(batches=[convert.cached_batch_to_pb(b) for b in batches])
        return self._finish("Decode", self._start("Decode", request, metadata), convert.step_result_from_pb)


def _same(response):
    return response


def _nothing(response) -> None:
    return None


def _filtered_batch(response: pb.FilterBatchResponse) -> CachedBatch | None:
    return convert.cached_batch_from_pb(response.batch) if response.HasField("batch") else None


def warmup_request(
    max_input_tokens: int | None,
    max_prefill_tokens: int,
    max_total_tokens: int | None,
    max_batch_size: int | None,
) -> pb.WarmupRequest:
    """The Warmup TGI's router sends: `_test ` prompts filling max_prefill_tokens, heavy sampling settings.

    NOTE: blocks/slots stay empty (the shard places warmup requests itself), and every request has id 0.
    """
    requests = []
    n_tokens = 0
    while n_tokens < max_prefill_tokens:
        truncate = max_prefill_tokens - n_tokens
        if max_input_tokens is not None:
            truncate = min(truncate, max_input_tokens)
        text = "_test " * truncate
        chunks = [pb.InputChunk(text=text)]
        if n_tokens == 0:
            chunks.append(pb.InputChunk(image=pb.Image(data=WARMUP_IMAGE, mimetype="image/png")))
        max_new_tokens = max_total_tokens - truncate if max_total_tokens is not None else 1
        requests.append(
            pb.Request(
                id=0,
                inputs=text,
                input_chunks=pb.Input(chunks=chunks),
                truncate=truncate,
                add_special_tokens=True,
                parameters=pb.NextTokenChooserParameters(
                    temperature=0.9,
                    top_k=10,
                    top_p=0.9,
                    typical_p=0.9,
                    do_sample=False,
                    seed=0,
                    repetition_penalty=1.2,
                    frequency_penalty=0.1,
                    watermark=True,
                ),
                stopping_parameters=pb.StoppingCriteriaParameters(
                    max_new_tokens=max_new_tokens, ignore_eos_token=True
                ),
                prefill_logprobs=True,
                top_n_tokens=20,
            )
        )
        n_tokens += truncate
        if max_batch_size is not None and len(requests) == max_batch_size:
            break
    batch = pb.Batch(id=0, requests=requests, size=len(requests), max_tokens=0, max_blocks=0)
    request = pb.WarmupRequest(batch=batch, max_prefill_tokens=max_prefill_tokens)
    if max_input_tokens is not None:
        request.max_input_tokens = max_input_tokens
    if max_total_tokens is not None:
        request.max_total_tokens = max_total_tokens
    return request
