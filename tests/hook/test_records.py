"""``build_record``: the §5.2 record from the router's request headers and the provider's response headers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from metering_hook import MissingRequestId, build_record
from metering_hook.records import header_value

STARTED = datetime(2026, 11, 30, 23, 59, 59, 500000, tzinfo=UTC)


def record(**overrides: object) -> dict:
    arguments: dict = {
        "request_headers": {"X-HF-Bill-To": "acme"},
        "response_headers": {"Inference-Id": "req-1"},
        "provider_id": "together",
        "user": "alice",
        "model": "org/name",
        "started_at": STARTED,
    }
    arguments.update(overrides)
    return build_record(**arguments)


class TestBuildRecord:
    def test_minimal_record(self) -> None:
        assert record() == {
            "request_id": "req-1",
            "provider": "together",
            "user": "alice",
            "bill_to": "acme",
            "model": "org/name",
            "custom_key": False,
            "started_at": "2026-11-30T23:59:59.500000Z",
        }

    def test_every_optional_field(self) -> None:
        built = record(
            duration_ms=10_000,
            task="text-to-image",
            custom_key=True,
            hardware="gpu-a10g",
            input_tokens=12,
            output_tokens=0,
            hold_id="h-1",
        )
        assert built["duration_ms"] == 10_000
        assert built["task"] == "text-to-image"
        assert built["custom_key"] is True
        assert built["hardware"] == "gpu-a10g"
        assert (built["input_tokens"], built["output_tokens"]) == (12, 0)
        assert built["hold_id"] == "h-1"

    def test_started_at_in_another_zone_is_sent_as_utc(self) -> None:
        paris = timezone(timedelta(hours=1))
        built = record(started_at=datetime(2026, 12, 1, 0, 30, tzinfo=paris))
        assert built["started_at"] == "2026-11-30T23:30:00Z"

    def test_naive_started_at_is_refused(self) -> None:
        with pytest.raises(ValueError, match="timezone-aware"):
            record(started_at=datetime(2026, 11, 30, 12, 0))

    def test_no_bill_to_header_means_the_user_pays(self) -> None:
        assert record(request_headers={})["bill_to"] is None
        assert record(request_headers={"x-hf-bill-to": "  "})["bill_to"] is None

    def test_headers_are_read_case_insensitively_from_any_container(self) -> None:
        built = record(
            request_headers=[("x-hf-bill-to", "acme")],
            response_headers=httpx.Headers({"x-request-id": "abc"}),
            request_id_header="X-Request-ID",
        )
        assert (built["bill_to"], built["request_id"]) == ("acme", "abc")

    def test_configured_header_only(self) -> None:
        with pytest.raises(MissingRequestId, match="X-Request-Id"):
            record(response_headers={"Inference-Id": "req-1"}, request_id_header="X-Request-Id")

    def test_missing_request_id_carries_the_rest_of_the_record(self) -> None:
        with pytest.raises(MissingRequestId) as raised:
            record(response_headers={})
        assert raised.value.record["user"] == "alice"
        assert raised.value.record["request_id"] is None

    @pytest.mark.parametrize("bad", ["x" * 257, "req\n1", "   "])
    def test_unusable_request_id(self, bad: str) -> None:
        with pytest.raises(MissingRequestId):
            record(response_headers={"Inference-Id": bad})

    def test_request_id_of_256_characters_is_kept(self) -> None:
        assert record(response_headers={"Inference-Id": "r" * 256})["request_id"] == "r" * 256

    @pytest.mark.parametrize("value", [-1, 1.5, True, "10"])
    def test_counts_must_be_non_negative_ints(self, value: object) -> None:
        with pytest.raises(ValueError, match="duration_ms"):
            record(duration_ms=value)


@given(name=st.sampled_from(["Inference-Id", "X-Request-Id", "x-amzn-requestid"]), data=st.data())
def test_header_lookup_ignores_case(name: str, data: st.DataObject) -> None:
    flips = data.draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    spelled = "".join(c.upper() if flip else c.lower() for c, flip in zip(name, flips))
    assert header_value({spelled: "v", "Other": "w"}, name) == "v"
    assert header_value([("Other", "w"), (spelled, "v")], name) == "v"
