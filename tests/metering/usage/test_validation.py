"""The record checks and the body parser of usage ingest, including property tests of the validator."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metering.usage.errors import ValidationError
from metering.usage.validation import FIELDS, RecordInvalid, ValidRecord, check_record, check_records, parse_body

NOW = datetime(2026, 11, 22, 5, 0, tzinfo=UTC)
SKEW = 24 * 3600
LATEST = NOW + timedelta(seconds=SKEW)

printable = st.text(st.characters(codec="utf-8", categories=("L", "N", "P", "S")), min_size=1, max_size=40)
names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
counts = st.none() | st.integers(min_value=0, max_value=2**63 - 1)
instants = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2026, 11, 22), timezones=st.just(UTC))
offsets = st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59).map(lambda m: timedelta(minutes=m))


# Fewer examples than the default keep the suite fast; no deadline, as CI machines are shared.
fast = settings(max_examples=50, deadline=None)


@st.composite
def valid_records(draw: st.DrawFn) -> dict:
    return {
        "request_id": draw(printable),
        "provider": draw(names),
        "user": draw(names),
        "bill_to": draw(st.none() | names),
        "model": draw(printable),
        "task": draw(st.none() | printable),
        "custom_key": draw(st.booleans()),
        "started_at": draw(instants).isoformat().replace("+00:00", "Z"),
        "duration_ms": draw(counts),
        "hardware": draw(st.none() | printable),
        "input_tokens": draw(counts),
        "output_tokens": draw(counts),
        "hold_id": draw(st.none() | st.uuids().map(str)),
    }


def check(raw: object) -> ValidRecord:
    return check_record(0, raw, latest_start=LATEST, max_future_skew_seconds=SKEW)


def reason(raw: object) -> str:
    with pytest.raises(RecordInvalid) as caught:
        check(raw)
    return str(caught.value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


class TestValidRecords:
    @fast
    @given(valid_records())
    def test_every_valid_record_passes_and_is_normalised(self, raw: dict) -> None:
        record = check(raw)
        assert record.started_at.tzinfo is UTC
        assert (record.request_id, record.user, record.custom_key) == (
            raw["request_id"],
            raw["user"],
            raw["custom_key"],
        )
        assert len(record.content_hash) == 32

    @fast
    @given(valid_records(), offsets)
    def test_the_hash_ignores_the_zone_started_at_was_written_in(self, raw: dict, offset: timedelta) -> None:
        moment = datetime.fromisoformat(raw["started_at"]).astimezone(timezone(offset))
        shifted = raw | {"started_at": moment.isoformat()}
        assert check(shifted).content_hash == check(raw).content_hash

    @fast
    @given(valid_records(), st.sampled_from(sorted(FIELDS)))
    def test_the_hash_changes_with_any_field(self, raw: dict, name: str) -> None:
        value = raw[name]
        if name == "custom_key":
            changed = not value
        elif name == "started_at":
            changed = (datetime.fromisoformat(value) - timedelta(microseconds=1)).isoformat()
        elif name in ("duration_ms", "input_tokens", "output_tokens"):
            changed = 0 if value is None else (value - 1 if value else None)
        elif name in ("bill_to", "task", "hardware", "hold_id"):
            changed = "x" if value is None else None
        else:
            changed = value + "x"
        assert check(raw | {name: changed}).content_hash != check(raw).content_hash

    def test_absent_optionals_equal_nulls_and_false(self) -> None:
        full = {"request_id": "r", "provider": "p", "user": "u", "model": "m", "started_at": "2026-11-01T00:00:00Z"}
        nulls = full | {"bill_to": None, "task": None, "custom_key": None, "duration_ms": None, "hold_id": None}
        falses = nulls | {"custom_key": False}
        assert check(full).content_hash == check(nulls).content_hash == check(falses).content_hash


class TestRejectedRecords:
    @fast
    @given(valid_records(), st.sampled_from(["duration_ms", "input_tokens", "output_tokens"]), json_values)
    def test_counts_accept_only_non_negative_json_integers(self, raw: dict, name: str, value: object) -> None:
        raw = raw | {name: value}
        if value is None or (type(value) is int and 0 <= value < 2**63):
            assert getattr(check(raw), name) == value
        else:
            assert reason(raw).startswith(f"{name}: must be ")

    @fast
    @given(valid_records(), st.text(min_size=1, max_size=10).filter(lambda k: k not in FIELDS), json_values)
    def test_an_unknown_field_rejects_the_record(self, raw: dict, key: str, value: object) -> None:
        assert reason(raw | {key: value}) == f"unknown field(s): {key}"

    @fast
    @given(valid_records(), st.text(st.characters(categories=("Cc", "Cf", "Zl", "Zp", "Cs")), min_size=1, max_size=3))
    def test_control_characters_in_request_id_reject_it(self, raw: dict, junk: str) -> None:
        assert reason(raw | {"request_id": "a" + junk}) == "request_id: contains control or non-printable characters"

    @pytest.mark.parametrize(
        "value",
        [
            "2026-11-20T10:15:30",
            "2026-11-20",
            "20261120T101530Z",
            "2026-11-20T10:15Z",
            "2026-11-20T10:15:30+0200",
            "2026-W47-5T10:15:30Z",
            " 2026-11-20T10:15:30Z",
            "2026-11-20T10:15:30Z\n",
        ],
    )
    def test_started_at_must_be_rfc3339_with_a_zone(self, value: str) -> None:
        raw = {"request_id": "r", "provider": "p", "user": "u", "model": "m", "started_at": value}
        assert reason(raw).startswith("started_at: must be an RFC 3339 timestamp with a time zone")

    @pytest.mark.parametrize(
        "value", ["2026-11-20t10:15:30z", "2026-11-20 10:15:30+02:00", "2026-11-20T10:15:30.123456789-05:30"]
    )
    def test_rfc3339_variants_are_accepted(self, value: str) -> None:
        raw = {"request_id": "r", "provider": "p", "user": "u", "model": "m", "started_at": value}
        assert check(raw).started_at.tzinfo is UTC

    def test_started_at_up_to_the_skew_in_the_future_is_accepted(self) -> None:
        raw = {"request_id": "r", "provider": "p", "user": "u", "model": "m"}
        assert check(raw | {"started_at": "2026-11-23T05:00:00Z"}).started_at == LATEST
        assert reason(raw | {"started_at": "2026-11-23T05:00:00.000001Z"}) == (
            "started_at: '2026-11-23T05:00:00.000001Z' is more than 24 h in the future"
        )

    @settings(max_examples=100, deadline=None)
    @given(st.lists(json_values, min_size=1, max_size=10))
    def test_any_json_is_split_into_valid_and_rejected_without_raising(self, records: list) -> None:
        valid, rejected = check_records(records, now=NOW, max_future_skew_seconds=SKEW)
        assert sorted([r.index for r in valid] + [r.index for r in rejected]) == list(range(len(records)))
        assert all(orjson.dumps(r.as_dict()) for r in rejected)


class TestParseBody:
    def test_returns_the_records(self) -> None:
        assert parse_body(b'{"records": [1, {"a": 2}]}', max_records=5) == [1, {"a": 2}]

    @pytest.mark.parametrize(
        ("raw", "detail"),
        [
            (b"", "body is not valid JSON"),
            (b'{"records": [1]', "body is not valid JSON"),
            (b'{"records": [Infinity]}', "body is not valid JSON"),
            (b"\xff\xfe", "body is not valid JSON"),
            (b"null", 'body must be a JSON object {"records": [...]}, got null'),
            (b'"records"', 'body must be a JSON object {"records": [...]}, got a string'),
            (b'{"record": []}', 'body: "records" is missing'),
            (b'{"records": null}', 'body: "records" must be an array, got null'),
            (b'{"records": []}', 'body: "records" must hold at least 1 record, got 0'),
            (b'{"records": [1, 2, 3, 4, 5, 6]}', 'body: "records" may hold at most 5 records, got 6'),
            pytest.param(b"[" * 5000 + b"]" * 5000, "body is not valid JSON", id="nested-too-deep"),
        ],
    )
    def test_a_malformed_body_names_the_problem(self, raw: bytes, detail: str) -> None:
        with pytest.raises(ValidationError) as caught:
            parse_body(raw, max_records=5)
        assert caught.value.detail.startswith(detail)


class TestMaximumAge:
    """A record older than the maximum age is refused with a reason: its month may be closed."""

    def record(self, started_at: str) -> dict:
        return {"request_id": "r", "provider": "p", "user": "u", "model": "m", "started_at": started_at}

    @pytest.mark.parametrize("started_at", ["1900-01-01T00:00:00Z", "1970-01-01T00:00:00Z", "2026-10-17T04:59:59Z"])
    def test_older_than_35_days_is_rejected(self, started_at: str) -> None:
        valid, rejected = check_records(
            [self.record(started_at)], now=NOW, max_future_skew_seconds=SKEW, max_age_days=35
        )
        assert valid == []
        assert (
            rejected[0].error
            == f"started_at: '{started_at}' is more than 35 days ago; records older than that are not accepted"
        )

    def test_just_within_the_age_is_accepted(self) -> None:
        valid, rejected = check_records(
            [self.record("2026-10-18T05:00:00Z")], now=NOW, max_future_skew_seconds=SKEW, max_age_days=35
        )
        assert (len(valid), rejected) == (1, [])
