"""StoppingCriteria: TGI's order (length, EOS, stop sequences) and its tail-of-output stop matching."""

from __future__ import annotations

import pytest

from tgi_async.proto import pb
from tgi_async.shard.stopping import StoppingCriteria

EOS = 2


def feed(criteria: StoppingCriteria, pieces: list[tuple[int, str]]) -> list[tuple[bool, int | None]]:
    return [criteria(token, text) for token, text in pieces]


def test_length_stops_at_max_new_tokens():
    criteria = StoppingCriteria.from_pb(pb.StoppingCriteriaParameters(max_new_tokens=3), {EOS})
    assert feed(criteria, [(5, "a"), (6, "b"), (7, "c")]) == [
        (False, None),
        (False, None),
        (True, pb.FINISH_REASON_LENGTH),
    ]
    assert criteria.current_tokens == 3


def test_length_wins_over_eos_on_the_last_token():
    criteria = StoppingCriteria(2, {EOS})
    assert feed(criteria, [(5, "a"), (EOS, "</s>")])[-1] == (True, pb.FINISH_REASON_LENGTH)


def test_eos_stops_unless_ignored():
    criteria = StoppingCriteria.from_pb(pb.StoppingCriteriaParameters(max_new_tokens=10), {EOS, 9})
    assert feed(criteria, [(5, "a"), (9, "")]) == [(False, None), (True, pb.FINISH_REASON_EOS_TOKEN)]
    ignoring = StoppingCriteria.from_pb(
        pb.StoppingCriteriaParameters(max_new_tokens=10, ignore_eos_token=True), {EOS}
    )
    assert feed(ignoring, [(EOS, "</s>"), (EOS, "</s>")]) == [(False, None), (False, None)]


def test_stop_sequence_spanning_tokens():
    params = pb.StoppingCriteriaParameters(max_new_tokens=20, stop_sequences=["world", "zzz"])
    criteria = StoppingCriteria.from_pb(params, {EOS})
    results = feed(criteria, [(1, "Hel"), (3, "lo wor"), (4, "ld")])
    assert results == [(False, None), (False, None), (True, pb.FINISH_REASON_STOP_SEQUENCE)]


def test_stop_sequence_must_end_the_output():
    criteria = StoppingCriteria(20, set(), ["world"])
    assert feed(criteria, [(1, "wor"), (3, "ldly"), (4, " and")]) == [(False, None)] * 3


def test_stop_sequence_before_a_final_newline_matches_as_in_tgi():
    # TGI matches the regex `stop$`, and `$` also matches just before a trailing newline.
    criteria = StoppingCriteria(20, set(), ["Observation:"])
    assert criteria(1, "Observation:\n") == (True, pb.FINISH_REASON_STOP_SEQUENCE)
    other = StoppingCriteria(20, set(), ["Observation:"])
    assert other(1, "Observation:\n\n") == (False, None)


def test_stop_sequence_with_regex_characters_is_literal():
    criteria = StoppingCriteria(20, set(), ["a.b*"])
    assert criteria(1, "axbb") == (False, None)
    assert criteria(1, " a.b*") == (True, pb.FINISH_REASON_STOP_SEQUENCE)


def test_long_stop_sequence_and_bounded_window():
    stop = "x" * 500 + "END"
    criteria = StoppingCriteria(100_000, set(), [stop])
    for _ in range(5000):
        assert criteria(1, "x") == (False, None)
        # The window only ever holds a few times the longest stop sequence.
        assert len(criteria._window) <= 4 * (len(stop) + 1)
    assert criteria(1, "EN") == (False, None)
    assert criteria(1, "D") == (True, pb.FINISH_REASON_STOP_SEQUENCE)


def test_max_new_tokens_zero_is_rejected():
    with pytest.raises(ValueError, match="max_new_tokens"):
        StoppingCriteria.from_pb(pb.StoppingCriteriaParameters(max_new_tokens=0), {EOS})
