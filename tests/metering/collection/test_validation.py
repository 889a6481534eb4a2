"""Strict reading of cost answers: the batch's shape, each entry's cost, unknown and duplicate IDs."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from metering.collection.errors import ProviderUnavailable
from metering.collection.validation import judge_cost, read_answer

CEILING = 100_000_000_000


def _read(body: bytes | str, asked: set[str] = frozenset({"a", "b", "c"})):
    return read_answer(
        body.encode() if isinstance(body, str) else body, asked=set(asked), ceiling=CEILING, provider="p"
    )


class TestShape:
    @pytest.mark.parametrize(
        "body",
        [
            '{"requests": [{"requestId": "a", "costNanoUsd": 1}',  # truncated
            "<html><body>Maintenance</body></html>",
            "",
            '["requests"]',
            '{"requests": {"a": 1}}',
            '{"costs": []}',
            "null",
        ],
    )
    def test_a_body_that_is_not_the_protocol_fails_the_batch(self, body: str) -> None:
        with pytest.raises(ProviderUnavailable) as caught:
            _read(body)
        assert caught.value.kind == "bad_response"

    def test_empty_requests_list_means_every_id_is_missing(self) -> None:
        answer = _read('{"requests": []}')
        assert answer.costs == {} and answer.missing(["a", "b"]) == ["a", "b"]


class TestEntries:
    def test_integer_costs_are_taken_exactly(self) -> None:
        answer = _read(
            '{"requests": [{"requestId": "a", "costNanoUsd": 0}, {"requestId": "b", "costNanoUsd": 100000000000}]}'
        )
        assert answer.costs == {"a": 0, "b": 100_000_000_000}
        assert answer.missing(["a", "b", "c"]) == ["c"]

    @pytest.mark.parametrize(
        ("literal", "kind"),
        [
            ("true", "bool"),
            ("false", "bool"),
            ("1.5", "float"),
            ("100.0", "float"),
            ("1e3", "float"),
            ('"100"', "string"),
            ("null", "null"),
            ("NaN", "non_finite"),
            ("Infinity", "non_finite"),
            ("-Infinity", "non_finite"),
            ("-1", "negative"),
            ("100000000001", "over_ceiling"),
            ("123456789012345678901234567890", "over_ceiling"),
            ("[1]", "other"),
        ],
    )
    def test_a_bad_cost_quarantines_that_entry_only(self, literal: str, kind: str) -> None:
        body = (
            f'{{"requests": [{{"requestId": "a", "costNanoUsd": {literal}}}, {{"requestId": "b", "costNanoUsd": 7}}]}}'
        )
        answer = _read(body)
        assert answer.costs == {"b": 7}
        assert answer.quarantined["a"][0] == kind

    def test_an_entry_without_a_cost_is_quarantined(self) -> None:
        answer = _read('{"requests": [{"requestId": "a"}]}')
        assert answer.quarantined == {"a": ("missing", "answer has no costNanoUsd")}

    def test_unknown_ids_are_ignored_and_reported(self) -> None:
        answer = _read('{"requests": [{"requestId": "zz", "costNanoUsd": 5}, {"requestId": "a", "costNanoUsd": 6}]}')
        assert answer.costs == {"a": 6}
        assert answer.unknown_ids == ["zz"]

    def test_for_a_duplicate_id_the_first_answer_wins(self) -> None:
        body = '{"requests": [{"requestId": "a", "costNanoUsd": 6}, {"requestId": "a", "costNanoUsd": 9}, {"requestId": "b", "costNanoUsd": 1.5}, {"requestId": "b", "costNanoUsd": 2}]}'
        answer = _read(body)
        assert answer.costs == {"a": 6}
        assert answer.quarantined["b"][0] == "float"
        assert answer.duplicate_ids == ["a", "b"]

    def test_entries_without_a_string_id_are_counted_and_skipped(self) -> None:
        answer = _read('{"requests": [{"requestId": 5, "costNanoUsd": 6}, "a", {"costNanoUsd": 1}]}')
        assert answer.malformed_entries == 3 and answer.costs == {}


class TestProperties:
    @given(st.integers(min_value=0, max_value=CEILING))
    def test_every_integer_within_the_ceiling_is_accepted_exactly(self, cost: int) -> None:
        answer = _read(orjson.dumps({"requests": [{"requestId": "a", "costNanoUsd": cost}]}))
        assert answer.costs == {"a": cost}

    @given(st.one_of(st.integers(max_value=-1), st.integers(min_value=CEILING + 1)))
    def test_integers_out_of_range_are_quarantined(self, cost: int) -> None:
        answer = _read(json.dumps({"requests": [{"requestId": "a", "costNanoUsd": cost}]}))
        assert answer.costs == {} and answer.quarantined["a"][0] in ("negative", "over_ceiling")

    @given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.text(), st.none()))
    def test_anything_but_an_integer_is_never_charged(self, value: object) -> None:
        body = json.dumps({"requests": [{"requestId": "a", "costNanoUsd": value}]}).encode()
        answer = _read(body)
        assert answer.costs == {}
        assert judge_cost(value, ceiling=CEILING) is not None

    @given(
        st.lists(
            st.tuples(st.sampled_from(["a", "b", "c", "x", "y"]), st.integers(min_value=0, max_value=CEILING)),
            max_size=20,
        )
    )
    def test_first_occurrence_wins_and_unknown_ids_never_priced(self, entries: list[tuple[str, int]]) -> None:
        body = orjson.dumps({"requests": [{"requestId": rid, "costNanoUsd": cost} for rid, cost in entries]})
        answer = _read(body)
        first: dict[str, int] = {}
        for rid, cost in entries:
            first.setdefault(rid, cost)
        assert answer.costs == {rid: cost for rid, cost in first.items() if rid in {"a", "b", "c"}}
        assert set(answer.unknown_ids) == {rid for rid, _ in entries if rid not in {"a", "b", "c"}}
