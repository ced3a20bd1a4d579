"""Decode steps on static shapes (tgi_async/shard/decode_graphs.py; on CPU the graphs' buffers run eagerly):
padding a batch to its bucket and its keys to a context bucket changes no answer, padding rows write only the
scratch slot, and every sampler (seeded, top-n, penalties) reads the graphs' logits as it reads eager ones."""

from __future__ import annotations

import pytest
import torch
from shard_helpers import MAX_PREFILL_TOKENS, router_warmup_request
from test_step_pipeline import PENALIZED, SAMPLED, TEXTS, Router, scenario, tokens

from tgi_async.shard.engine import Engine, EngineConfig
from tgi_async.shard.server import ShardService

MIN_CONTEXT = 16  # small, so the tests' contexts cross buckets


@pytest.fixture(scope="module")
def services(tiny_model_dir):
    """Two in-process shards on the tiny model, both overlapped: decode graphs on and off."""
    made = {}
    for graphs in (True, False):
        config = EngineConfig(str(tiny_model_dir), cuda_graphs=graphs, kv_cache_max_bytes=16 << 20)
        service = ShardService(Engine(config), [])
        service._warmup(router_warmup_request(None, MAX_PREFILL_TOKENS, None))
        if graphs:
            service.engine.graphs.min_context = MIN_CONTEXT
        made[graphs] = service
    yield made
    for service in made.values():
        service.engine.pipeline.close()
        service.executor.shutdown()


def clear_keys(service: ShardService) -> None:
    for layer in range(len(service.engine.cache.keys)):
        service.engine.cache.keys[layer].zero_()


def test_padded_static_shapes_answer_every_step_as_eager_decodes(services, reference):
    graphs = services[True].engine.graphs
    before = graphs.steps
    routers = {}
    for on, service in services.items():
        clear_keys(service)
        routers[on] = Router(service, reference)
        scenario(routers[on])
    with_graphs, eager = routers[True], routers[False]
    assert len(with_graphs.steps) == len(eager.steps)
    for step_a, step_b in zip(with_graphs.steps, eager.steps, strict=True):
        assert [g.request_id for g in step_a] == [g.request_id for g in step_b]
        for a, b in zip(step_a, step_b, strict=True):
            assert list(a.tokens.ids) == list(b.tokens.ids)
            assert a.generated_text == b.generated_text
            assert torch.allclose(
                torch.tensor(list(a.tokens.logprobs)), torch.tensor(list(b.tokens.logprobs)), atol=1e-5
            )
    produced = tokens(with_graphs)
    for i in (1, 2, 5, 6):
        assert produced[i] == reference.greedy(TEXTS[i], len(produced[i]))
    assert graphs.steps > before  # once the sampled request left the batch
    # padding rows wrote the scratch slot and nothing else outside the slots the router gave
    cache = services[True].engine.cache
    written = set(cache.keys[0].flatten(1).abs().sum(dim=1).nonzero()[:, 0].tolist())
    assert cache.scratch_slot in written
    assert written - {cache.scratch_slot} <= with_graphs.slots


def test_sampled_top_n_and_penalized_decodes_answer_as_eager_ones(services, reference):
    produced = {}
    for on, service in services.items():
        graphs_before = service.engine.graphs.steps if on else 0
        router = Router(service, reference)
        a = router.prefill(9, [router.request(31, TEXTS[2], 12, parameters=SAMPLED, top_n_tokens=2)])
        b = router.prefill(10, [router.request(32, TEXTS[5], 12, parameters=PENALIZED)])
        for cached in (a, b):
            while cached is not None:
                cached = router.filter(router.decode(cached))
        produced[on] = [
            (g.request_id, list(g.tokens.ids), [list(t.ids) for t in g.top_tokens])
            for s in router.steps
            for g in s
        ]
        if on:
            assert service.engine.graphs.steps - graphs_before == 22  # 11 decodes of each
    assert produced[True] == produced[False]


def test_a_greedy_batch_crosses_context_buckets_padded_to_its_batch_bucket(services, reference):
    graphs = services[True].engine.graphs
    router = Router(services[True], reference)
    texts = [TEXTS[2], TEXTS[3], TEXTS[6]]  # 3 rows: padded to 4
    before = graphs.steps
    cached = router.prefill(11, [router.request(40 + i, text, 40) for i, text in enumerate(texts)])
    while cached is not None:
        cached = router.filter(router.decode(cached))
    services[True].engine.pipeline.settle()
    assert graphs.steps - before == 39  # every decode step (the prefill's token is the first of 40)
    produced = tokens(router)
    for i, text in enumerate(texts):
        assert produced[40 + i] == reference.greedy(text, 40)
    contexts = {keys for rows, keys in graphs.shapes if rows == 4}
    assert {32, 64} <= contexts  # prompts of 5-20 tokens + 40 new ones, in power-of-two buckets


def test_shapes_past_the_key_budget_run_eagerly(services, reference):
    graphs = services[True].engine.graphs
    graphs.max_keys = 2 * 32  # the 2-row batch fits while its contexts are within 32 keys, then runs eagerly
    try:
        router = Router(services[True], reference)
        before = graphs.steps
        cached = router.prefill(
            13, [router.request(70 + i, text, 30) for i, text in enumerate([TEXTS[2], TEXTS[6]])]
        )
        while cached is not None:
            cached = router.filter(router.decode(cached))
        services[True].engine.pipeline.settle()
    finally:
        graphs.max_keys = 1 << 20
    ran = graphs.steps - before
    assert 0 < ran < 29  # the first steps on graphs, the rest eagerly
    assert tokens(router)[70] == reference.greedy(TEXTS[2], 30)
