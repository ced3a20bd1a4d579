"""The strict shard compiles each grammar as TGI's shards do: one that does not compile fails its batch."""

from __future__ import annotations

import json

import pytest

from tgi_async.proto import pb
from tgi_async.strict_shard.batch import checked_grammar


def parameters(grammar: str, kind: int) -> pb.NextTokenChooserParameters:
    return pb.NextTokenChooserParameters(grammar=grammar, grammar_type=kind)


def test_grammars_that_compile_are_kept_as_received() -> None:
    schema = json.dumps({"properties": {"a": {"type": "integer"}}})
    for grammar, kind in (("(yes|no)", pb.GRAMMAR_TYPE_REGEX), (schema, pb.GRAMMAR_TYPE_JSON), ("", 0)):
        assert checked_grammar(parameters(grammar, kind)) == (kind, grammar)
    # TGI's shards apply no grammar when it is empty, whatever its type
    assert checked_grammar(parameters("", pb.GRAMMAR_TYPE_REGEX)) == (pb.GRAMMAR_TYPE_REGEX, "")


@pytest.mark.parametrize(
    ("grammar", "kind"),
    [("(a", pb.GRAMMAR_TYPE_REGEX), ("{", pb.GRAMMAR_TYPE_JSON), ('{"type": "nope"}', pb.GRAMMAR_TYPE_JSON)],
)
def test_a_grammar_that_does_not_compile_is_a_value_error(grammar: str, kind: int) -> None:
    with pytest.raises(ValueError, match="grammar does not compile: "):
        checked_grammar(parameters(grammar, kind))
