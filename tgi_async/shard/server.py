"""The bundled shard's gRPC service (generate.v3) on `unix://{uds_path}-{rank}`.

Model work and every RPC that reads or changes cached batches run on ONE worker thread, in the order the
router numbered them (tgi_async/proto/call_order.py; arrival order without numbers), so they are serialized
and the event loop stays free: Health, Info and ServiceDiscovery answer at once, even
during a long step. Each operation validates everything before it changes the cache, so a bad request gets
a clear gRPC status (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION) and leaves every batch as it was; an
unexpected failure (INTERNAL) drops only the batch it happened in.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import grpc.aio

from tgi_async.proto import add_servicer, call_order, pb
from tgi_async.shard.batch import BatchError, Limits, ShardBatch
from tgi_async.shard.call_order import CallOrder
from tgi_async.shard.engine import Engine

logger = logging.getLogger(__name__)

# NOTE: the router sends whole prompts (and warmup an image) in one message: lift gRPC's 4 MiB default.
MAX_MESSAGE_BYTES = (1 << 31) - 1


class NotFoundError(LookupError):
    """An unknown batch id (gRPC NOT_FOUND)."""


class NotReadyError(RuntimeError):
    """The shard cannot serve this yet (gRPC FAILED_PRECONDITION)."""


def socket_path(uds_path: str, rank: int) -> str:
    return f"{uds_path}-{rank}"


class ShardService:
    """The eight RPCs of generate.v3 over an Engine and a cache of batches by id."""

    def __init__(self, engine: Engine, server_urls: Sequence[str]):
        self.engine = engine
        self.server_urls = list(server_urls)
        self.batches: dict[int, ShardBatch] = {}  # owned by the model thread
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-model")
        self.order = CallOrder()

    # -- RPCs answered on the event loop -------------------------------------------------------------------

    async def Health(self, request: pb.HealthRequest, context) -> pb.HealthResponse:
        return pb.HealthResponse()

    async def Info(self, request: pb.InfoRequest, context) -> pb.InfoResponse:
        await context.send_initial_metadata(((call_order.ORDERED_KEY, "1"),))
        return self.engine.info()

    async def ServiceDiscovery(self, request, context) -> pb.ServiceDiscoveryResponse:
        return pb.ServiceDiscoveryResponse(urls=self.server_urls)

    # -- RPCs run on the model thread ------------------------------------------------------------------------

    async def ClearCache(self, request: pb.ClearCacheRequest, context) -> pb.ClearCacheResponse:
        return await self._on_model_thread(context, "ClearCache", self._clear_cache, request)

    async def FilterBatch(self, request: pb.FilterBatchRequest, context) -> pb.FilterBatchResponse:
        return await self._on_model_thread(context, "FilterBatch", self._filter_batch, request)

    async def Warmup(self, request: pb.WarmupRequest, context) -> pb.WarmupResponse:
        return await self._on_model_thread(context, "Warmup", self._warmup, request)

    async def Prefill(self, request: pb.PrefillRequest, context) -> pb.PrefillResponse:
        # NOTE: new grammars start compiling now, while this Prefill may still wait behind a Decode.
        self.engine.prefetch_grammars(request.batch)
        return await self._on_model_thread(context, "Prefill", self._prefill, request)

    async def Decode(self, request: pb.DecodeRequest, context) -> pb.DecodeResponse:
        return await self._on_model_thread(context, "Decode", self._decode, request)

    async def _on_model_thread(self, context, name: str, handler: Callable[[Any], Any], request: Any) -> Any:
        loop = asyncio.get_running_loop()
        # NOTE: submitted in the router's call order (no await between the turn and the submission); the
        # single model thread then runs them in that order.
        await self.order.turn(call_order.parse(context.invocation_metadata()))
        try:
            return await loop.run_in_executor(self.executor, handler, request)
        except BatchError as exc:
            code, message = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        except NotFoundError as exc:
            code, message = grpc.StatusCode.NOT_FOUND, str(exc)
        except NotReadyError as exc:
            code, message = grpc.StatusCode.FAILED_PRECONDITION, str(exc)
        except Exception as exc:
            logger.exception("%s failed", name)
            code, message = grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"
        logger.warning("%s: %s", name, message, extra={"code": code.name})
        await context.abort(code, message)

    def _clear_cache(self, request: pb.ClearCacheRequest) -> pb.ClearCacheResponse:
        if request.HasField("id"):
            self.batches.pop(request.id, None)
        else:
            self.batches.clear()
        return pb.ClearCacheResponse()

    def _filter_batch(self, request: pb.FilterBatchRequest) -> pb.FilterBatchResponse:
        batch = self._get(request.batch_id).filter(list(request.request_ids))
        self.batches[batch.id] = batch
        return pb.FilterBatchResponse(batch=batch.to_cached_batch())

    def _warmup(self, request: pb.WarmupRequest) -> pb.WarmupResponse:
        self.batches.clear()
        try:
            return self.engine.warmup(request)
        finally:
            self.batches.clear()

    def _prefill(self, request: pb.PrefillRequest) -> pb.PrefillResponse:
        start = time.perf_counter_ns()
        new = ShardBatch.from_pb(request.batch, self.engine.tokenizer, self._limits())
        concat_ns, merged = None, [new.id]
        if request.HasField("cached_batch"):
            cached = self._get(request.cached_batch.id)
            started = time.perf_counter_ns()
            batch = ShardBatch.concatenate([cached, new])
            concat_ns, merged = time.perf_counter_ns() - started, [cached.id]
        else:
            batch = new
        if not request.HasField("cached_batch") and new.id in self.batches:
            logger.warning("Prefill reuses batch id %d: the cached batch is replaced", new.id)
        return self._step_response(pb.PrefillResponse, start, merged, batch, concat_ns)

    def _decode(self, request: pb.DecodeRequest) -> pb.DecodeResponse:
        start = time.perf_counter_ns()
        ids = [b.id for b in request.batches]
        if not ids:
            raise BatchError("Decode needs at least one batch")
        if len(set(ids)) != len(ids):
            raise BatchError(f"Decode lists a batch more than once: {ids}")
        batches = [self._get(i) for i in ids]
        concat_ns = None
        if len(batches) > 1:
            started = time.perf_counter_ns()
            batch = ShardBatch.concatenate(batches)
            concat_ns = time.perf_counter_ns() - started
        else:
            batch = batches[0]
        return self._step_response(pb.DecodeResponse, start, ids, batch, concat_ns)

    def _step_response(self, response_cls, start: int, replaced: Sequence[int], batch: ShardBatch, concat_ns):
        """Check, then run one step of `batch` in place of `replaced`; answer with generations and timings."""
        batch.check_next_step()
        result, cached_batch = self._commit_and_step(replaced, batch)
        response = response_cls(
            generations=result.generations,
            batch=cached_batch,
            forward_ns=result.forward_ns,
            decode_ns=result.decode_ns,
            concat_ns=concat_ns,
        )
        # NOTE: last, so the handler's whole time counts, building its answer included (as TGI's does).
        response.total_ns = time.perf_counter_ns() - start
        return response

    def _commit_and_step(self, replaced: Sequence[int], batch: ShardBatch):
        """Put `batch` in place of the batches `replaced` and run its step; drop it if the step fails or if
        every request has finished."""
        for batch_id in replaced:
            self.batches.pop(batch_id, None)
        self.batches[batch.id] = batch
        try:
            result = self.engine.step(batch)
        except Exception:
            self.batches.pop(batch.id, None)
            raise
        if batch.all_finished:
            self.batches.pop(batch.id, None)
            return result, None
        return result, batch.to_cached_batch()

    def _get(self, batch_id: int) -> ShardBatch:
        batch = self.batches.get(batch_id)
        if batch is None:
            raise NotFoundError(f"batch {batch_id} not found in the shard's cache")
        return batch

    def _limits(self) -> Limits:
        limits = self.engine.limits()
        if limits is None:
            raise NotReadyError("the KV cache is not allocated yet: call Warmup first")
        return limits


async def serve(
    engine: Engine,
    uds_path: str,
    rank: int = 0,
    world_size: int = 1,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> None:
    """Serve until SIGTERM/SIGINT, then stop and remove the socket. `interceptors`: the tracing hook."""
    path = socket_path(uds_path, rank)
    if remove_socket(path):
        logger.warning("removed a stale socket", extra={"path": path})
    urls = [f"unix://{socket_path(uds_path, r)}" for r in range(world_size)]
    service = ShardService(engine, urls)
    server = grpc_server(service, path, interceptors)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await server.start()
    logger.info("Server started at unix://%s", path)
    try:
        await stop.wait()
        logger.info("shutting down")
    finally:
        await server.stop(grace=0.2)
        service.executor.shutdown(wait=False, cancel_futures=True)
        remove_socket(path)


def grpc_server(
    servicer: object, path: str, interceptors: Sequence[grpc.aio.ServerInterceptor] = ()
) -> grpc.aio.Server:
    """A grpc.aio server with `servicer` (generate.v3) on `unix://{path}`, messages unbounded."""
    server = grpc.aio.server(
        interceptors=list(interceptors),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    add_servicer(server, servicer)
    server.add_insecure_port(f"unix://{path}")
    return server


def remove_socket(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True
