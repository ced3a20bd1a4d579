"""Grammar requests in both schedulers: scheduled like any other request (their tokens are what they cost),
their grammar fields carried to the shard unchanged, a grammar the shard cannot compile failing its batch."""

from __future__ import annotations

from dataclasses import replace

from tests.scheduler.strict_client import length_tokenizer, serve_waves, strict
from tgi_async.proto import pb
from tgi_async.scheduler.request import GenerateRequest, SamplingParameters, StoppingParameters


def request(length: int, grammar: str = "", grammar_type: str = "none") -> GenerateRequest:
    text = f"g{grammar_type}:{length}"
    return GenerateRequest(
        inputs=text,
        input_length=length,
        sampling=SamplingParameters(grammar=grammar, grammar_type=grammar_type),  # type: ignore[arg-type]
        stopping=StoppingParameters(max_new_tokens=4),
        input_ids=tuple(length_tokenizer(text, 0, True)),
    )


async def test_grammar_requests_are_scheduled_like_others_and_reach_the_shard() -> None:
    for policy in ("async", "sync"):
        for kind in ("flashinfer", "padded"):
            shard = strict(kind)
            plain = [request(10 + i) for i in range(4)]
            regex = [request(20 + i, r"(yes|no)\d", "regex") for i in range(4)]
            json_ = [request(30 + i, '{"properties": {"a": {"type": "integer"}}}', "json") for i in range(4)]
            (results,) = await serve_waves(shard, policy, [plain + regex + json_])
            assert all(how == "end" for _, how in results), (policy, kind, results)
            grammars = sorted((r.parameters.grammar_type, r.parameters.grammar) for r in shard.shard.received)
            assert grammars == sorted(
                [(pb.GRAMMAR_TYPE_NONE, "")] * 4
                + [(pb.GRAMMAR_TYPE_REGEX, r"(yes|no)\d")] * 4
                + [(pb.GRAMMAR_TYPE_JSON, '{"properties": {"a": {"type": "integer"}}}')] * 4
            )


async def test_a_grammar_the_shard_cannot_compile_fails_its_batch_only() -> None:
    for policy in ("async", "sync"):
        shard = strict("flashinfer")
        bad = replace(request(12), sampling=SamplingParameters(grammar="(a", grammar_type="regex"))
        waves = await serve_waves(shard, policy, [[bad], [request(14)]])
        assert [how for _, how in waves[0]] == ["error"], waves
        assert [how for _, how in waves[1]] == ["end"], waves
