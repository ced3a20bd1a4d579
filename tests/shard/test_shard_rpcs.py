"""Every RPC of the bundled shard as TGI's router uses it, the process lifecycle, and the CLI's refusals."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time

import grpc
import grpc.aio
from shard_helpers import MAX_PREFILL_TOKENS, Blocks, batch, expect_error, request, router_warmup_request

from tgi_async.launcher.processes import short_tmp_dir, tgi_async_command
from tgi_async.proto import ShardStub, pb

U64_MAX = (1 << 64) - 1


async def test_info_health_and_service_discovery(stub, bundled_shard):
    info = await stub.Info(pb.InfoRequest())
    assert not info.requires_padding and info.support_chunking and info.use_prefix_caching
    assert (info.block_size, info.speculate, info.attention_impl) == (16, 0, "paged")
    assert (info.dtype, info.device_type) == ("torch.float32", "cpu")
    assert not info.HasField("window_size")
    assert await stub.Health(pb.HealthRequest()) == pb.HealthResponse()
    urls = (await stub.ServiceDiscovery(pb.ServiceDiscoveryRequest())).urls
    assert list(urls) == [f"unix://{bundled_shard}"]


async def test_warmup_exactly_as_the_router_sends_it(stub, reference):
    # a batch cached before warmup does not survive it
    blocks = Blocks()
    text = "What time is it?"
    await stub.Prefill(
        pb.PrefillRequest(batch=batch(5, [request(1, text, blocks, len(reference.ids(text)))]))
    )

    response = await stub.Warmup(router_warmup_request(None, MAX_PREFILL_TOKENS, None))
    supported = response.max_supported_total_tokens
    assert supported % 16 == 0 and supported >= 4096
    # not given: chosen from the model's 4096 positions, as TGI's flash shards do
    assert (response.max_input_tokens, response.max_total_tokens) == (4095, 4096)
    await expect_error(
        stub.Decode(pb.DecodeRequest(batches=[pb.CachedBatch(id=5)])), grpc.StatusCode.NOT_FOUND
    )
    await expect_error(
        stub.Decode(pb.DecodeRequest(batches=[pb.CachedBatch(id=0)])), grpc.StatusCode.NOT_FOUND
    )

    # given (the launcher's defaults for a small model): echoed; several requests of id 0, one image chunk
    message = router_warmup_request(40, MAX_PREFILL_TOKENS, 100)
    assert len(message.batch.requests) == 2
    response = await stub.Warmup(message)
    assert (response.max_input_tokens, response.max_total_tokens) == (40, 100)
    assert response.max_supported_total_tokens == supported
    response = await stub.Warmup(router_warmup_request(10, MAX_PREFILL_TOKENS, 20, max_batch_size=3))
    assert (response.max_input_tokens, response.max_total_tokens) == (10, 20)


async def test_router_health_check_prefill_in_block_zero(stub):
    # TGI's router checks model health with this exact request in block 0, which it never hands out
    message = pb.Request(
        id=U64_MAX,
        inputs="liveness",
        input_chunks=pb.Input(chunks=[pb.InputChunk(text="liveness")]),
        truncate=1,
        add_special_tokens=False,
        parameters=pb.NextTokenChooserParameters(temperature=1, top_p=1, typical_p=1, repetition_penalty=1),
        stopping_parameters=pb.StoppingCriteriaParameters(max_new_tokens=1),
        blocks=[0],
        slots=[0],
    )
    health = pb.Batch(id=U64_MAX, requests=[message], size=1, max_tokens=2, max_blocks=1)
    response = await stub.Prefill(pb.PrefillRequest(batch=health))
    (generation,) = response.generations
    assert generation.request_id == U64_MAX and generation.generated_text.generated_tokens == 1
    assert generation.generated_text.finish_reason == pb.FINISH_REASON_LENGTH
    assert not response.HasField("batch")


async def test_cached_batch_fields_filter_and_clear_cache(stub, reference):
    blocks = Blocks()
    texts = {1: "Hello", 2: "a b c d e f", 3: "What time is it?"}
    requests = [request(i, t, blocks, len(reference.ids(t)), max_new_tokens=20) for i, t in texts.items()]
    response = await stub.Prefill(pb.PrefillRequest(batch=batch(7, requests)))
    cached = response.batch
    assert (cached.id, list(cached.request_ids), cached.size) == (7, [1, 2, 3], 3)
    assert cached.max_tokens == 16 * sum(len(r.blocks) for r in requests)
    assert cached.current_tokens == 3
    assert response.total_ns >= response.forward_ns > 0 and response.decode_ns > 0

    response = await stub.FilterBatch(pb.FilterBatchRequest(batch_id=7, request_ids=[3]))
    assert (list(response.batch.request_ids), response.batch.size) == ([3], 1)
    assert response.batch.max_tokens == 16 * len(requests[2].blocks)
    decoded = await stub.Decode(pb.DecodeRequest(batches=[response.batch]))
    assert [g.request_id for g in decoded.generations] == [3]
    assert not decoded.HasField("concat_ns")

    await stub.ClearCache(pb.ClearCacheRequest(id=7))
    await expect_error(stub.Decode(pb.DecodeRequest(batches=[decoded.batch])), grpc.StatusCode.NOT_FOUND)
    await stub.ClearCache(pb.ClearCacheRequest(id=424242))  # unknown: not an error

    for batch_id in (8, 9):
        message = request(batch_id, "Hello", blocks, len(reference.ids("Hello")))
        await stub.Prefill(pb.PrefillRequest(batch=batch(batch_id, [message])))
    await stub.ClearCache(pb.ClearCacheRequest())
    for batch_id in (8, 9):
        missing = stub.Decode(pb.DecodeRequest(batches=[pb.CachedBatch(id=batch_id)]))
        await expect_error(missing, grpc.StatusCode.NOT_FOUND)


async def test_reusing_a_batch_id_replaces_the_batch(stub, reference):
    blocks = Blocks()
    prompt = len(reference.ids("Hello"))
    await stub.Prefill(pb.PrefillRequest(batch=batch(6, [request(61, "Hello", blocks, prompt, 10)])))
    response = await stub.Prefill(
        pb.PrefillRequest(batch=batch(6, [request(62, "Hello", blocks, prompt, 10)]))
    )
    decoded = await stub.Decode(pb.DecodeRequest(batches=[response.batch]))
    assert [g.request_id for g in decoded.generations] == [62]
    assert list(decoded.batch.request_ids) == [62]
    await stub.ClearCache(pb.ClearCacheRequest(id=6))


async def test_finished_requests_stay_until_filtered_and_are_not_computed(stub, reference):
    blocks = Blocks()
    requests = [
        request(71, "Hello", blocks, len(reference.ids("Hello")), 1),
        request(72, "the", blocks, len(reference.ids("the")), 5),
    ]
    response = await stub.Prefill(pb.PrefillRequest(batch=batch(70, requests)))
    assert response.generations[0].generated_text.generated_tokens == 1
    assert list(response.batch.request_ids) == [71, 72] and response.batch.current_tokens == 1
    # the router has not filtered 71 yet: it stays listed, produces nothing and needs no slot
    decoded = await stub.Decode(pb.DecodeRequest(batches=[response.batch]))
    assert [g.request_id for g in decoded.generations] == [72]
    assert list(decoded.batch.request_ids) == [71, 72]
    await stub.ClearCache(pb.ClearCacheRequest(id=70))


def test_stale_socket_replaced_and_sigterm_removes_the_socket(tiny_model_dir, tmp_path):
    # what a killed shard leaves behind: a socket file nobody listens on
    directory = short_tmp_dir("tgia-stale-")
    uds = os.path.join(directory, "shard")
    socket_path = f"{uds}-0"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(socket_path)
    stale.close()
    assert os.path.exists(socket_path)

    argv = tgi_async_command("shard", "serve", str(tiny_model_dir), "--uds-path", uds)
    with open(tmp_path / "shard.log", "wb") as log:
        shard = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        asyncio.run(_wait_for_info(socket_path))
        shard.send_signal(signal.SIGTERM)
        assert shard.wait(timeout=10) == 0
        assert not os.path.exists(socket_path)
    finally:
        if shard.poll() is None:
            shard.kill()
            shard.wait()


async def _wait_for_info(socket_path: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with grpc.aio.insecure_channel(f"unix://{socket_path}") as channel:
                await ShardStub(channel).Info(pb.InfoRequest(), timeout=2)
                return
        except grpc.aio.AioRpcError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        tgi_async_command("shard", "serve", *args),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_cli_refuses_what_the_bundled_shard_cannot_do(tiny_model_dir):
    # NOTE: logs go to stdout, as TGI's shard's do
    model = str(tiny_model_dir)
    result = run_cli(model, "--quantize", "gptq")
    assert result.returncode == 2
    assert "quantization gptq is not supported by the bundled shard; use TGI's shard" in result.stdout
    result = run_cli(model, env={"WORLD_SIZE": "2", "RANK": "1"})
    assert result.returncode == 2 and "no tensor parallelism" in result.stdout
    result = run_cli(model, "--lora-adapters", "some/adapter")
    assert result.returncode == 2 and "LoRA" in result.stdout
    result = run_cli(model, "--speculate", "2")
    assert result.returncode == 2 and "speculation" in result.stdout
    result = run_cli("no-such-org/no-such-model", env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    assert "MODEL_ID is not a local directory and the hub is unreachable" in result.stdout


async def test_truncate_keeps_the_last_tokens_and_special_tokens_are_optional(stub, reference):
    blocks = Blocks()
    text = "Many people made things here, and they took the long way back home."
    ids = reference.ids(text)
    plain = reference.tokenizer(text, add_special_tokens=False)["input_ids"]
    truncated = request(91, text, blocks, len(ids), 1, truncate=5, prefill_logprobs=True)
    no_bos = request(92, text, blocks, len(ids), 1, prefill_logprobs=True, add_special_tokens=False)
    response = await stub.Prefill(pb.PrefillRequest(batch=batch(90, [truncated, no_bos])))
    first, second = response.generations
    assert list(first.prefill_tokens.ids) == [ids[0], *plain[-4:]]
    assert list(second.prefill_tokens.ids) == plain
    assert not response.HasField("batch")


async def test_health_answers_while_a_long_step_runs(stub, reference):
    blocks = Blocks()
    text = " ".join(["the router sends a long prompt to the shard"] * 120)
    prompt = len(reference.ids(text))
    requests = [request(100 + i, text, blocks, prompt, 1) for i in range(4)]
    prefill = asyncio.ensure_future(stub.Prefill(pb.PrefillRequest(batch=batch(95, requests))))
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    await stub.Health(pb.HealthRequest())
    await stub.Info(pb.InfoRequest())
    answered = time.perf_counter() - started
    assert not prefill.done(), "the prefill was too short to show anything"
    assert answered < 0.1
    response = await prefill
    assert len(response.generations) == 4
