"""Grammars on the bundled shard over real gRPC: JSON schemas and regexes, greedy and seeded, all valid.

The tiny model is random: left alone it never writes JSON, so every valid document below is the grammar's
doing. Requests join and leave the batch midway (FilterBatch, concatenation, chunked prefill) and must keep
their grammar state.
"""

from __future__ import annotations

import copy
import json
import re

import grpc
import pytest
from shard_helpers import (
    GREEDY,
    Blocks,
    Outputs,
    batch,
    decode_until_done,
    expect_error,
    filter_finished,
    request,
)

from benchmarks.grammar_cases import TOOL_REGEX, TOOL_SCHEMA
from tgi_async.proto import pb
from tgi_async.shard.grammar import THREADED_MASK_ROWS

PROMPT = "Answer in JSON: what is the weather like?"
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}
CODE = r"[A-Z]{2}-[0-9]{3}( [a-z]{1,4})?"
# NOTE: TGI's tool grammar leaves strings unbounded, where a random model may ramble past max_new_tokens:
# the seeded runs use it with the location bounded (same $functions / $ref structure).
BOUNDED_TOOL_SCHEMA = copy.deepcopy(TOOL_SCHEMA)
for _function in BOUNDED_TOOL_SCHEMA["$functions"].values():
    if "location" in _function["properties"]:
        _function["properties"]["location"]["maxLength"] = 12
_UNBOUNDED_STRING = r'([^"\\\x00-\x1F\x7F-\x9F]|\\["\\])*"'
assert _UNBOUNDED_STRING in TOOL_REGEX
BOUNDED_TOOL_REGEX = TOOL_REGEX.replace(_UNBOUNDED_STRING, _UNBOUNDED_STRING[:-2] + '{0,12}"')


def grammar(kind: str, seed: int | None = None, **extra) -> pb.NextTokenChooserParameters:
    """Parameters with a grammar: `kind` "person" (JSON schema), "tool" (TGI's tool schema), "tool-regex"
    (the regex TGI's router sends for it) or "code" (regex); seeded sampling when `seed` is given."""
    text, grammar_type = {
        "person": (json.dumps(PERSON), pb.GRAMMAR_TYPE_JSON),
        "tool": (json.dumps(TOOL_SCHEMA), pb.GRAMMAR_TYPE_JSON),
        "tool-regex": (TOOL_REGEX, pb.GRAMMAR_TYPE_REGEX),
        "bounded-tool": (json.dumps(BOUNDED_TOOL_SCHEMA), pb.GRAMMAR_TYPE_JSON),
        "bounded-tool-regex": (BOUNDED_TOOL_REGEX, pb.GRAMMAR_TYPE_REGEX),
        "code": (CODE, pb.GRAMMAR_TYPE_REGEX),
    }[kind]
    parameters = pb.NextTokenChooserParameters()
    parameters.CopyFrom(GREEDY)
    parameters.grammar, parameters.grammar_type = text, grammar_type
    if seed is not None:
        parameters.do_sample, parameters.seed, parameters.temperature = True, seed, 1.5
    for name, value in extra.items():
        setattr(parameters, name, value)
    return parameters


def valid(kind: str, text: str) -> bool:
    if kind in ("code",):
        return re.fullmatch(CODE, text) is not None
    if kind in ("tool-regex", "bounded-tool-regex"):
        pattern = TOOL_REGEX if kind == "tool-regex" else BOUNDED_TOOL_REGEX
        return re.fullmatch(pattern, text) is not None
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        return False
    if kind == "person":
        return (
            set(document) == {"name", "age", "tags"}
            and isinstance(document["name"], str)
            and len(document["name"]) <= 6
            and type(document["age"]) is int
            and 0 <= document["age"] <= 120
            and set(document["tags"]) <= {"a", "b"}
            and len(document["tags"]) <= 3
        )
    function = document.get("function", {})
    if kind == "bounded-tool" and len(function.get("location", "")) > 12:
        return False
    names = {"get_current_weather", "get_n_day_weather_forecast", "no_tool"}
    return set(document) <= {"function"} and (not document or function.get("_name") in names)


def grammar_request(request_id: int, blocks: Blocks, reference, parameters, max_new_tokens: int = 160, **kw):
    return request(
        request_id, PROMPT, blocks, len(reference.ids(PROMPT)), max_new_tokens, parameters=parameters, **kw
    )


async def generate(stub, batch_id: int, requests: list[pb.Request]) -> Outputs:
    outputs = Outputs()
    response = await stub.Prefill(pb.PrefillRequest(batch=batch(batch_id, requests)))
    outputs.add(response.generations)
    cached = await filter_finished(stub, response.batch if response.HasField("batch") else None, outputs)
    await decode_until_done(stub, cached, outputs)
    return outputs


def check_finished(outputs: Outputs, kinds: dict[int, str], eos: int) -> None:
    """Every grammar request ended on EOS (its grammar complete) with a text its grammar accepts."""
    for request_id, kind in kinds.items():
        done = outputs.finished[request_id]
        assert done.finish_reason == pb.FINISH_REASON_EOS_TOKEN, (request_id, done)
        assert outputs.tokens[request_id][-1] == eos
        assert valid(kind, done.text), (request_id, kind, done.text)


@pytest.mark.parametrize("kind", ["person", "bounded-tool", "bounded-tool-regex", "code"])
async def test_greedy_and_seeded_outputs_obey_the_grammar(stub, reference, kind):
    blocks = Blocks()
    # greedy, then 17 seeds, all in one batch (over THREADED_MASK_ROWS: masks computed during the forward)
    seeds = [None, *range(1, 18)]
    assert len(seeds) >= THREADED_MASK_ROWS
    requests = [grammar_request(i, blocks, reference, grammar(kind, seed)) for i, seed in enumerate(seeds)]
    outputs = await generate(stub, 300, requests)
    check_finished(outputs, dict.fromkeys(range(len(seeds)), kind), reference.eos)
    texts = {outputs.finished[i].text for i in range(1, len(seeds))}
    assert len(texts) > 1, "seeded sampling should vary within the grammar"


@pytest.mark.parametrize("kind", ["tool", "tool-regex"])
async def test_tgi_tool_grammars_as_tgi_sends_them(stub, reference, kind):
    """TGI's tool grammar exactly: as a JSON schema ($functions, $ref) and as the regex TGI's router sends."""
    blocks = Blocks()
    outputs = await generate(stub, 305, [grammar_request(1, blocks, reference, grammar(kind))])
    check_finished(outputs, {1: kind}, reference.eos)
    assert json.loads(outputs.finished[1].text)["function"]["_name"]


async def test_seeded_grammar_output_is_reproducible(stub, reference):
    blocks = Blocks()
    first = await generate(stub, 301, [grammar_request(1, blocks, reference, grammar("person", seed=7))])
    # the same seed again, now beside other requests: the same text
    others = [grammar_request(i, blocks, reference, GREEDY, ignore_eos=True) for i in (2, 3)]
    second = await generate(
        stub, 302, [*others, grammar_request(1, blocks, reference, grammar("person", seed=7))]
    )
    assert second.finished[1].text == first.finished[1].text
    assert second.finished[1].seed == 7


async def test_grammar_state_survives_filter_and_concatenation(stub, reference):
    """Plain requests finish early (filtered out), grammar requests join a running batch (concatenated),
    one with a prompt long enough to be chunked: every grammar output is still valid."""
    blocks = Blocks()
    short = [
        grammar_request(i, blocks, reference, GREEDY, max_new_tokens=3, ignore_eos=True) for i in (10, 11)
    ]
    first = [grammar_request(12, blocks, reference, grammar("person", seed=3)), *short]
    first.append(grammar_request(13, blocks, reference, grammar("code")))
    outputs = Outputs()
    response = await stub.Prefill(pb.PrefillRequest(batch=batch(310, first)))
    outputs.add(response.generations)
    cached = response.batch
    for _ in range(4):
        response = await stub.Decode(pb.DecodeRequest(batches=[cached]))
        outputs.add(response.generations)
        cached = await filter_finished(stub, response.batch, outputs)
    assert {10, 11} <= set(outputs.finished) and 12 not in outputs.finished
    long_prompt = PROMPT * 12  # over the 64-token prefill budget: chunked
    tool_with_seed = grammar("bounded-tool", 5)
    joining = [
        request(14, long_prompt, blocks, len(reference.ids(long_prompt)), 160, parameters=tool_with_seed),
        grammar_request(15, blocks, reference, grammar("bounded-tool-regex", 6)),
    ]
    response = await stub.Prefill(pb.PrefillRequest(batch=batch(311, joining), cached_batch=cached))
    outputs.add(response.generations)
    cached = await filter_finished(stub, response.batch if response.HasField("batch") else None, outputs)
    await decode_until_done(stub, cached, outputs)
    kinds = {12: "person", 13: "code", 14: "bounded-tool", 15: "bounded-tool-regex"}
    check_finished(outputs, kinds, reference.eos)


async def test_mixed_batch_plain_rows_are_unchanged(stub, reference):
    """A plain greedy request generates the same tokens beside grammar requests as alone."""
    blocks = Blocks()
    alone = await generate(stub, 320, [grammar_request(1, blocks, reference, GREEDY, max_new_tokens=12)])
    mixed = await generate(
        stub,
        321,
        [
            grammar_request(2, blocks, reference, grammar("person")),
            grammar_request(1, blocks, reference, GREEDY, max_new_tokens=12),
            grammar_request(3, blocks, reference, grammar("code", seed=4)),
        ],
    )
    assert mixed.tokens[1] == alone.tokens[1]
    check_finished(mixed, {2: "person", 3: "code"}, reference.eos)


async def test_grammar_end_allows_only_eos_even_when_eos_is_ignored(stub, reference):
    blocks = Blocks()
    parameters = grammar("code")
    outputs = await generate(
        stub, 330, [grammar_request(1, blocks, reference, parameters, max_new_tokens=24, ignore_eos=True)]
    )
    tokens = outputs.tokens[1]
    text = reference.tokenizer.decode(tokens, skip_special_tokens=True)
    assert re.fullmatch(CODE, text), text
    first_eos = tokens.index(reference.eos)
    assert tokens[first_eos:] == [reference.eos] * (len(tokens) - first_eos)


@pytest.mark.parametrize(
    ("text", "grammar_type", "fragment"),
    [
        ("[A-Z", pb.GRAMMAR_TYPE_REGEX, "invalid grammar (regex)"),
        ("{not json", pb.GRAMMAR_TYPE_JSON, "invalid grammar (JSON schema)"),
        ('{"$ref": "#/nowhere"}', pb.GRAMMAR_TYPE_JSON, "invalid grammar (JSON schema)"),
    ],
)
async def test_invalid_grammar_fails_only_the_prefill(stub, reference, text, grammar_type, fragment):
    blocks = Blocks()
    running = await stub.Prefill(
        pb.PrefillRequest(batch=batch(340, [grammar_request(1, blocks, reference, grammar("person"))]))
    )
    bad = grammar("code")
    bad.grammar, bad.grammar_type = text, grammar_type
    message = pb.PrefillRequest(
        batch=batch(341, [grammar_request(2, blocks, reference, bad)]), cached_batch=running.batch
    )
    details = await expect_error(
        stub.Prefill(message), grpc.StatusCode.INVALID_ARGUMENT, "request 2", fragment
    )
    assert "Traceback" not in details
    outputs = Outputs()
    outputs.add(running.generations)
    await decode_until_done(stub, running.batch, outputs)
    check_finished(outputs, {1: "person"}, reference.eos)
