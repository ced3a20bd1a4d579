"""The overlapped step pipeline, in process: the same answers as one forward at a time across everything a
router does (a decode sent before the router read a finish, FilterBatch, Prefill with a cached batch and a
chunked prompt, Decode concatenating batches); speculative writes only in the slots a request was given."""

from __future__ import annotations

import gc

import pytest
import torch
from shard_helpers import MAX_PREFILL_TOKENS, Blocks, batch, request, router_warmup_request

from tgi_async.proto import pb
from tgi_async.shard.engine import Engine, EngineConfig
from tgi_async.shard.server import ShardService
from tgi_async.shard.step_inputs import PreparedStep

LONG_PROMPT = " ".join(["the router sends a long prompt to the shard in several chunks of tokens"] * 6)
TEXTS = {
    1: "Hello",
    2: "The cache block slot async decode prefill stream latency router shard queue kernel tensor model",
    3: "Many people made things here, and they took the long way back home.",
    4: "a b c d e f",
    5: "What time is it?",
    6: "the",
}
SAMPLED = pb.NextTokenChooserParameters(
    temperature=0.8, top_k=20, top_p=0.9, typical_p=1.0, do_sample=True, seed=7, repetition_penalty=1.0
)
PENALIZED = pb.NextTokenChooserParameters(temperature=1.0, top_p=1.0, typical_p=1.0, repetition_penalty=1.3)


@pytest.fixture(scope="module")
def services(tiny_model_dir):
    """Two in-process shards on the tiny model: overlap on and off."""
    made = {}
    for overlap in (True, False):
        config = EngineConfig(str(tiny_model_dir), overlap=overlap, kv_cache_max_bytes=16 << 20)
        service = ShardService(Engine(config), [])
        service._warmup(router_warmup_request(None, MAX_PREFILL_TOKENS, None))
        made[overlap] = service
    yield made
    for service in made.values():
        service.engine.pipeline.close()
        service.executor.shutdown()


class Router:
    """Drives a ShardService's handlers as TGI's router does; records every step's generations."""

    def __init__(self, service: ShardService, reference):
        self.service, self.reference, self.blocks = service, reference, Blocks(num_blocks=400)
        self.steps: list[list[pb.Generation]] = []
        self.finished: set[int] = set()
        self.slots: set[int] = set()

    def request(self, i: int, text: str, max_new: int, **fields) -> pb.Request:
        message = request(i, text, self.blocks, len(self.reference.ids(text)), max_new, **fields)
        self.slots.update(message.slots)
        return message

    def _record(self, response) -> pb.CachedBatch | None:
        self.steps.append(list(response.generations))
        self.finished.update(g.request_id for g in response.generations if g.HasField("generated_text"))
        return response.batch if response.HasField("batch") else None

    def prefill(self, batch_id: int, requests, cached: pb.CachedBatch | None = None):
        message = pb.PrefillRequest(batch=batch(batch_id, requests))
        if cached is not None:
            message.cached_batch.CopyFrom(cached)
        return self._record(self.service._prefill(message))

    def decode(self, *cached: pb.CachedBatch):
        return self._record(self.service._decode(pb.DecodeRequest(batches=list(cached))))

    def filter(self, cached: pb.CachedBatch | None) -> pb.CachedBatch | None:
        if cached is None:
            return None
        keep = [i for i in cached.request_ids if i not in self.finished]
        if not keep:
            self.service._clear_cache(pb.ClearCacheRequest(id=cached.id))
            return None
        if len(keep) == len(cached.request_ids):
            return cached
        request = pb.FilterBatchRequest(batch_id=cached.id, request_ids=keep)
        return self.service._filter_batch(request).batch


def stop_after(reference, text: str, tokens: int) -> str:
    """A stop sequence that ends `text`'s greedy continuation at its `tokens`-th token (or the next one that
    adds text): the shortest suffix of the output so far not seen earlier in it."""
    ids = [reference.ids(text)[-1], *reference.greedy(text, 20)]
    head = len(reference.tokenizer.decode(ids[:1]))
    for k in range(tokens, len(ids)):
        full = reference.tokenizer.decode(ids[: k + 1])[head:]
        if len(full) > len(reference.tokenizer.decode(ids[:k])[head:]):
            return next(full[s:] for s in range(len(full) - 1, -1, -1) if full[s:] not in full[:-1])
    raise AssertionError("the greedy continuation adds no text")


def scenario(router: Router) -> None:
    stop = stop_after(router.reference, TEXTS[3], 3)
    a = router.prefill(
        1,
        [
            router.request(1, TEXTS[1], 4),
            router.request(2, TEXTS[2], 24),
            router.request(3, TEXTS[3], 20, stop=[stop]),
            router.request(4, TEXTS[4], 16, parameters=SAMPLED, top_n_tokens=3),
        ],
    )
    # a pipelined router asks for the next step before reading the finishes of the previous one
    for _ in range(4):
        a = router.decode(a)
    a = router.filter(a)
    # a chunked prompt joins the running batch through Prefill with a cached batch, then continues on Decode
    long = router.request(50, LONG_PROMPT, 6, chunk_len=20, prefill_logprobs=True)
    a = router.prefill(2, [long], cached=a)
    while 50 not in {g.request_id for g in router.steps[-1]}:
        a = router.filter(router.decode(a))
    # a batch prefilled on its own joins through Decode([a, c])
    c = router.prefill(3, [router.request(5, TEXTS[5], 9), router.request(6, TEXTS[6], 12)])
    a = router.decode(a, c)
    for step in range(200):
        if a is None:
            break
        a = router.decode(a)
        if step % 3:
            a = router.filter(a)
    assert a is None


def tokens(router: Router) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for step in router.steps:
        for g in step:
            out.setdefault(g.request_id, []).extend(g.tokens.ids)
    return out


def test_overlap_answers_every_step_as_one_forward_at_a_time(services, reference):
    routers = {}
    for overlap, service in services.items():
        for layer in range(len(service.engine.cache.keys)):
            service.engine.cache.keys[layer].zero_()
        routers[overlap] = Router(service, reference)
        scenario(routers[overlap])
    on, off = routers[True], routers[False]
    assert len(on.steps) == len(off.steps)
    for step_on, step_off in zip(on.steps, off.steps, strict=True):
        assert [g.request_id for g in step_on] == [g.request_id for g in step_off]
        for g_on, g_off in zip(step_on, step_off, strict=True):
            assert list(g_on.tokens.ids) == list(g_off.tokens.ids)
            assert list(g_on.tokens.texts) == list(g_off.tokens.texts)
            assert g_on.generated_text == g_off.generated_text
            assert [list(t.ids) for t in g_on.top_tokens] == [list(t.ids) for t in g_off.top_tokens]
            assert torch.allclose(
                torch.tensor(list(g_on.tokens.logprobs)), torch.tensor(list(g_off.tokens.logprobs)), atol=1e-5
            )
    produced = tokens(on)
    for i in (1, 2, 5, 6):
        assert produced[i] == reference.greedy(TEXTS[i], len(produced[i]))
    assert produced[50] == reference.greedy(LONG_PROMPT, 6)
    # request 3 stopped on its stop sequence mid-way; the steps after it never mention it
    ends = [(k, g) for k, step in enumerate(on.steps) for g in step if g.HasField("generated_text")]
    finish = {g.request_id: (k, g) for k, g in ends}
    finished_at, last = finish[3]
    assert last.generated_text.finish_reason == pb.FINISH_REASON_STOP_SEQUENCE
    assert finished_at < 4  # inside the four decodes sent before the router filtered
    assert all(g.request_id != 3 for step in on.steps[finished_at + 1 :] for g in step)
    # every key written since warmup lies in a slot the router gave a request (nothing past a request's slots)
    for service, router in ((services[True], on), (services[False], off)):
        written = service.engine.cache.keys[0].flatten(1).abs().sum(dim=1).nonzero()[:, 0].tolist()
        assert written and set(written) <= router.slots
    assert services[True].engine.pipeline.pending == 0


def test_speculation_runs_ahead_and_is_forgotten_with_its_batch(services, reference):
    on, off = Router(services[True], reference), Router(services[False], reference)
    for router in (on, off):
        a = router.prefill(7, [router.request(11, TEXTS[2], 10), router.request(12, TEXTS[5], 10)])
        a = router.decode(a)
    assert services[True].engine.pipeline.pending == 2  # both requests' next forward already submitted
    assert services[False].engine.pipeline.pending == 0
    services[True]._clear_cache(pb.ClearCacheRequest(id=7))
    assert services[True].engine.pipeline.pending == 0
    services[False]._clear_cache(pb.ClearCacheRequest(id=7))


def test_a_batch_whose_sampler_reads_histories_runs_one_forward_at_a_time(services, reference):
    results = {}
    for overlap, service in services.items():
        router = Router(service, reference)
        a = router.prefill(8, [router.request(21, TEXTS[2], 12, parameters=PENALIZED)])
        for _ in range(3):
            a = router.decode(a)
            assert service.engine.pipeline.pending == 0
        while a is not None:
            a = router.filter(router.decode(a))
        results[overlap] = tokens(router)
    assert results[True] == results[False]


def test_a_long_overlapped_decode_keeps_a_bounded_number_of_steps_alive(services, reference):
    """Each speculative step takes its input ids from the step before; that link must not keep every earlier
    step (inputs, outputs, layouts) alive for as long as the batch decodes."""
    router = Router(services[True], reference)
    a = router.prefill(12, [router.request(61, TEXTS[2], 120), router.request(62, TEXTS[5], 120)])
    for _ in range(100):
        a = router.decode(a)
    gc.collect()
    alive = sum(type(o) is PreparedStep for o in gc.get_objects())
    assert alive <= 4, f"{alive} prepared steps alive after 100 decodes"
    while a is not None:
        a = router.filter(router.decode(a))
