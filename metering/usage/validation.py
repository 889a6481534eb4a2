"""Checks of a usage POST (SPEC §5.2): the body as a whole, then each record on its own.

Hand-written rather than a pydantic model: the ingest path validates tens of thousands of
records a second, and plain type checks on the parsed dict cost less (``bench/ingest.py``) while
giving the exact wording each rejection needs. Every string is checked for length and
printability here, so nothing that reaches the INSERT can fail a column constraint and
take the rest of the batch down with it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast

import orjson

from metering.usage.errors import ValidationError

FIELDS = frozenset(
    {
        "request_id",
        "provider",
        "user",
        "bill_to",
        "model",
        "task",
        "custom_key",
        "started_at",
        "duration_ms",
        "hardware",
        "input_tokens",
        "output_tokens",
        "hold_id",
    }
)
REQUIRED = ("request_id", "provider", "user", "model", "started_at")
MAX_REQUEST_ID = 256
MAX_ACCOUNT_NAME = 96
MAX_PROVIDER_ID = 64
MAX_MODEL = 256
MAX_TASK = 64
MAX_HARDWARE = 64
MAX_HOLD_ID = 36
MAX_BIGINT = 2**63 - 1
# The account names the platform can sync (the same pattern as the account routes); a user the
# ingest creates must be one the platform can address later.
_ACCOUNT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}\Z")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})\Z")
_JSON_KIND = {
    type(None): "null",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "an array",
    dict: "an object",
}


# Not frozen: a frozen dataclass sets each field through object.__setattr__, a third of the
# cost of checking a record.
@dataclass(slots=True)
class ValidRecord:
    """A record that passed every check, normalised (``started_at`` in UTC, absent = None)."""

    index: int
    request_id: str
    provider: str
    user: str
    bill_to: str | None
    model: str
    task: str | None
    custom_key: bool
    started_at: datetime
    duration_ms: int | None
    hardware: str | None
    input_tokens: int | None
    output_tokens: int | None
    hold_id: str | None
    content_hash: str

    @property
    def key(self) -> tuple[str, str]:
        return self.provider, self.request_id


@dataclass(frozen=True, slots=True)
class Rejection:
    index: int
    request_id: str | None
    error: str

    def as_dict(self) -> dict[str, object]:
        return {"index": self.index, "request_id": self.request_id, "error": self.error}


class RecordInvalid(Exception):
    """One record failed a check; the message is the reason given back to the caller."""


def parse_body(raw: bytes, *, max_records: int) -> list[object]:
    """The ``records`` list of a POST body, or ``ValidationError`` naming what is wrong with the body."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        body = _parse_leniently(raw, exc)
    if not isinstance(body, dict):
        raise ValidationError(f'body must be a JSON object {{"records": [...]}}, got {_kind(body)}')
    if "records" not in body:
        raise ValidationError('body: "records" is missing')
    unknown = body.keys() - {"records"}
    if unknown:
        raise ValidationError(f"body: unknown field(s): {', '.join(sorted(unknown))}")
    records = body["records"]
    if not isinstance(records, list):
        raise ValidationError(f'body: "records" must be an array, got {_kind(records)}')
    if not records:
        raise ValidationError('body: "records" must hold at least 1 record, got 0')
    if len(records) > max_records:
        raise ValidationError(f'body: "records" may hold at most {max_records} records, got {len(records)}')
    return records


def _parse_leniently(raw: bytes, error: orjson.JSONDecodeError) -> object:
    """orjson refuses escaped lone surrogates; the standard parser accepts them, so such a record
    is rejected on its own (as non-printable) instead of failing the whole body."""
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        raise ValidationError(f"body is not valid JSON: {error}") from None


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def check_records(
    records: list[object],
    *,
    now: datetime,
    max_future_skew_seconds: int,
    max_age_days: int | None = None,
    first_index: int = 0,
) -> tuple[list[ValidRecord], list[Rejection]]:
    """Split records into valid ones and rejections; one bad record never affects another.

    ``first_index``: the index of ``records[0]`` in the request, when checking a slice of it.
    ``max_age_days``: a record that started longer ago than this is refused (its month may be closed).
    """
    latest_start = now + timedelta(seconds=max_future_skew_seconds)
    earliest_start = None if max_age_days is None else now - timedelta(days=max_age_days)
    valid: list[ValidRecord] = []
    rejected: list[Rejection] = []
    for index, raw in enumerate(records, first_index):
        try:
            valid.append(
                check_record(
                    index,
                    raw,
                    latest_start=latest_start,
                    max_future_skew_seconds=max_future_skew_seconds,
                    earliest_start=earliest_start,
                    max_age_days=max_age_days,
                )
            )
        except RecordInvalid as exc:
            rejected.append(Rejection(index, request_id_of(raw), str(exc)))
    return valid, rejected


def request_id_of(raw: object) -> str | None:
    """The request_id to name a rejection by: the value sent when it is a string, else None."""
    value = raw.get("request_id") if type(raw) is dict else None
    if type(value) is not str:
        return None
    try:
        value.encode()
    except UnicodeEncodeError:  # an escaped lone surrogate: not representable in the JSON answer
        return None
    return value


def check_record(
    index: int,
    raw: object,
    *,
    latest_start: datetime,
    max_future_skew_seconds: int,
    earliest_start: datetime | None = None,
    max_age_days: int | None = None,
) -> ValidRecord:
    """One record's checks in a fixed order; the first failure is the reason given back."""
    if type(raw) is not dict:
        raise RecordInvalid(f"record must be a JSON object, got {_kind(raw)}")
    if not FIELDS.issuperset(raw):
        raise RecordInvalid(f"unknown field(s): {', '.join(sorted(raw.keys() - FIELDS))}")
    get = raw.get
    if None in (get("request_id"), get("provider"), get("user"), get("model"), get("started_at")):
        missing = [name for name in REQUIRED if get(name) is None]
        raise RecordInvalid(f"missing required field(s): {', '.join(missing)}")
    # Required strings: the everyday value passes inline; any other goes to ``_text`` for its reason.
    request_id = get("request_id")
    if type(request_id) is not str or not 0 < len(request_id) <= MAX_REQUEST_ID or not request_id.isprintable():
        request_id = _text(request_id, "request_id", MAX_REQUEST_ID)
    provider = get("provider")
    if type(provider) is not str or not 0 < len(provider) <= MAX_PROVIDER_ID or not provider.isprintable():
        provider = _text(provider, "provider", MAX_PROVIDER_ID)
    user = get("user")
    if type(user) is not str or not _ACCOUNT_NAME.match(user):
        raise RecordInvalid(
            f"user: must be an account name (letters, digits, '.', '_', '-'; at most {MAX_ACCOUNT_NAME}), "
            f"got {_show(user) if type(user) is str else _kind(user)}"
        )
    # Optional fields are tested for None inline: most are absent, and a call per field is a
    # measurable share of ingest's CPU.
    # An empty bill_to names no account: stored and flagged like any unknown name.
    if (bill_to := get("bill_to")) is not None:
        bill_to = _text(bill_to, "bill_to", MAX_ACCOUNT_NAME, min_length=0)
    model = get("model")
    if type(model) is not str or not 0 < len(model) <= MAX_MODEL or not model.isprintable():
        model = _text(model, "model", MAX_MODEL)
    if (task := get("task")) is not None:
        task = _text(task, "task", MAX_TASK)
    custom_key = get("custom_key")
    if custom_key is None:  # absent or null, like every optional field
        custom_key = False
    elif type(custom_key) is not bool:
        raise RecordInvalid(f"custom_key: must be a boolean, got {_kind(custom_key)}")
    started_at = _timestamp(get("started_at"), latest_start, max_future_skew_seconds)
    if earliest_start is not None and started_at < earliest_start:
        raise RecordInvalid(
            # A string: _timestamp accepted it.
            f"started_at: {_show(cast(str, get('started_at')))} is more than {max_age_days} days ago; "
            "records older than that are not accepted"
        )
    if (duration_ms := get("duration_ms")) is not None:
        duration_ms = _count(duration_ms, "duration_ms")
    if (hardware := get("hardware")) is not None:
        hardware = _text(hardware, "hardware", MAX_HARDWARE)
    if (input_tokens := get("input_tokens")) is not None:
        input_tokens = _count(input_tokens, "input_tokens")
    if (output_tokens := get("output_tokens")) is not None:
        output_tokens = _count(output_tokens, "output_tokens")
    if (hold_id := get("hold_id")) is not None:
        hold_id = _text(hold_id, "hold_id", MAX_HOLD_ID)
    canonical = orjson.dumps(
        (
            request_id,
            provider,
            user,
            bill_to,
            model,
            task,
            custom_key,
            started_at,
            duration_ms,
            hardware,
            input_tokens,
            output_tokens,
            hold_id,
        )
    )
    return ValidRecord(
        index,
        request_id,
        provider,
        user,
        bill_to,
        model,
        task,
        custom_key,
        started_at,
        duration_ms,
        hardware,
        input_tokens,
        output_tokens,
        hold_id,
        hashlib.blake2b(canonical, digest_size=16).hexdigest(),
    )


def _text(value: object, name: str, max_length: int, min_length: int = 1) -> str:
    if type(value) is not str:
        raise RecordInvalid(f"{name}: must be a string, got {_kind(value)}")
    if not min_length <= len(value) <= max_length:
        if not value:
            raise RecordInvalid(f"{name}: must not be empty")
        raise RecordInvalid(f"{name}: must be at most {max_length} characters, got {len(value)}")
    if not value.isprintable():
        raise RecordInvalid(f"{name}: contains control or non-printable characters")
    return value


def _count(value: object, name: str) -> int:
    if type(value) is not int:
        raise RecordInvalid(f"{name}: must be an integer, got {_kind(value)}")
    if value < 0:
        raise RecordInvalid(f"{name}: must be >= 0, got {value}")
    if value > MAX_BIGINT:
        raise RecordInvalid(f"{name}: must be at most {MAX_BIGINT}, got {value}")
    return value


def _timestamp(value: object, latest_start: datetime, max_future_skew_seconds: int) -> datetime:
    if type(value) is not str:
        raise RecordInvalid(f"started_at: must be an RFC 3339 string, got {_kind(value)}")
    if not _RFC3339.match(value):
        raise RecordInvalid(
            f"started_at: must be an RFC 3339 timestamp with a time zone (e.g. 2026-11-22T05:00:00Z), "
            f"got {_show(value)}"
        )
    try:
        moment = datetime.fromisoformat(value.upper()).astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise RecordInvalid(f"started_at: {_show(value)} is not a valid time ({exc})") from None
    if moment > latest_start:
        raise RecordInvalid(
            f"started_at: {_show(value)} is more than {_duration(max_future_skew_seconds)} in the future"
        )
    return moment


def _duration(seconds: int) -> str:
    return f"{seconds // 3600} h" if seconds % 3600 == 0 else f"{seconds} s"


def _kind(value: object) -> str:
    return _JSON_KIND.get(type(value), type(value).__name__)


def _show(value: str) -> str:
    return repr(value if len(value) <= 64 else value[:64] + "…")
