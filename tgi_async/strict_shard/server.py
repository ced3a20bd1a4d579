"""The strict shard's gRPC service: generate.v3 on `unix://{uds_path}-0`, every call through the executor.

Errors come back as TGI's interceptor sends them: gRPC INTERNAL with the exception's text (a RuntimeError also
makes the process exit, from the executor). A call the router gave up on (deadline) still runs to its end.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Sequence
from typing import Any

import grpc

from tgi_async.proto import pb
from tgi_async.shard.server import grpc_server, remove_socket, socket_path
from tgi_async.strict_shard.executor import SerialExecutor
from tgi_async.strict_shard.shard import StrictShard

logger = logging.getLogger(__name__)


class StrictShardService:
    def __init__(self, shard: StrictShard, executor: SerialExecutor, server_urls: Sequence[str]) -> None:
        self.shard = shard
        self.executor = executor
        self.server_urls = list(server_urls)

    async def _call(self, name: str, context, run, request: Any = None) -> Any:
        try:
            return await self.executor.call(name, run, lambda: self.shard.lose(request))
        except Exception as exc:
            text = str(exc) if not isinstance(exc, KeyError) else str(exc.args[0])
            logger.error("Method %s encountered an error: %s", name, text)
            await context.abort(grpc.StatusCode.INTERNAL, text)

    async def Health(self, request, context) -> pb.HealthResponse:
        return await self._call("Health", context, pb.HealthResponse)

    async def Info(self, request, context) -> pb.InfoResponse:
        return await self._call("Info", context, self.shard.info)

    async def ServiceDiscovery(self, request, context) -> pb.ServiceDiscoveryResponse:
        return await self._call(
            "ServiceDiscovery", context, lambda: pb.ServiceDiscoveryResponse(urls=self.server_urls)
        )

    async def ClearCache(self, request, context) -> pb.ClearCacheResponse:
        return await self._call("ClearCache", context, lambda: self.shard.clear_cache(request))

    async def FilterBatch(self, request, context) -> pb.FilterBatchResponse:
        return await self._call("FilterBatch", context, lambda: self.shard.filter_batch(request), request)

    async def Warmup(self, request, context) -> pb.WarmupResponse:
        response = await self._call("Warmup", context, lambda: self.shard.warmup(request))
        logger.info(
            "Warmup: max_prefill_tokens=%d, max_supported_total_tokens=%s",
            request.max_prefill_tokens,
            response.max_supported_total_tokens if response.HasField("max_supported_total_tokens") else None,
        )
        return response

    async def Prefill(self, request, context) -> pb.PrefillResponse:
        for r in request.batch.requests:
            if r.parameters.grammar_type != pb.GRAMMAR_TYPE_NONE:  # for tests: what the router sent
                kind = pb.GrammarType.Name(r.parameters.grammar_type)
                logger.info("Prefill: request %d %s %s", r.id, kind, json.dumps(r.parameters.grammar))
        return await self._call("Prefill", context, lambda: self.shard.prefill(request), request)

    async def Decode(self, request, context) -> pb.DecodeResponse:
        return await self._call("Decode", context, lambda: self.shard.decode(request), request)


async def serve(shard: StrictShard, executor: SerialExecutor, uds_path: str) -> int:
    """Serve until SIGTERM/SIGINT (0) or a RuntimeError in a call (1, as TGI's shard), then stop and remove
    the socket."""
    path = socket_path(uds_path, 0)
    remove_socket(path)
    server = grpc_server(StrictShardService(shard, executor, [f"unix://{path}"]), path)
    stop = asyncio.Event()
    exit_code = 0

    def fatal() -> None:
        nonlocal exit_code
        exit_code = 1
        stop.set()

    executor.shutdown = fatal
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await server.start()
    logger.info(
        "Server started at unix://%s (strict shard, SIMULATED: profile %s, %s)",
        path,
        shard.profile.name,
        shard.profile.kind,
    )
    try:
        await stop.wait()
    finally:
        await server.stop(grace=0.2)
        remove_socket(path)
    return exit_code
