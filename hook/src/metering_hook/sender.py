"""Background delivery of the spool to ``POST {base_url}/internal/v1/usage`` (SPEC §5.2).

Exactly once, end to end. A record leaves the spool only after the service answered 200 for the
batch that carried it (accepted, duplicate, or rejected and moved to the dead-letter table). If
the router dies after the service committed but before the spool was updated, the batch is sent
again on restart; the service is idempotent on (provider, request_id) and answers those records
as ``duplicates``, so they are stored — and charged — once. The resent bytes are the spooled
bytes, so the service sees the same content (a duplicate), never a conflict. At-least-once
delivery plus that deduplication is the exactly-once argument; nothing else is needed.

Failure handling: transport errors, timeouts, 5xx, 429 and unexpected statuses keep the batch and
back off exponentially with full jitter (honouring ``Retry-After`` up to the cap); 401/403 back
off too and log an error (a wrong token is an operator problem, not a reason to drop data);
413/400/422 of a whole batch split it in halves until the offending record stands alone, which
is then dead-lettered with the service's reason. Dead letters are never retried on their own;
``Spool.requeue_dead_letters`` puts them back once the cause is fixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from metering_hook.errors import HookError
from metering_hook.spool import Spool, SpooledRecord

logger = logging.getLogger("metering.hook")

USAGE_PATH = "/internal/v1/usage"
MAX_RECORDS_PER_POST = 5_000
_SPLIT_STATUSES = {400, 413, 422}
_AUTH_STATUSES = {401, 403}


@dataclass(slots=True)
class SenderStats:
    """Counters since the sender was made, for the router's own metrics."""

    batches_sent: int = 0
    accepted: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    failures: int = 0
    last_error: str | None = None


class DeliveryDeferred(HookError):
    """The batch stays in the spool; retry after ``delay`` seconds (``None``: the backoff schedule)."""

    def __init__(self, reason: str, delay: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


class UsageSender:
    """Delivers a ``Spool`` in batches from a background asyncio task; ``flush`` and ``stop`` drain it."""

    def __init__(
        self,
        spool: Spool,
        base_url: str,
        service_token: str,
        *,
        batch_size: int = 1000,
        interval: float = 1.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 60.0,
        timeout: float = 30.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if not 1 <= batch_size <= MAX_RECORDS_PER_POST:
            raise ValueError(f"batch_size must be between 1 and {MAX_RECORDS_PER_POST}")
        self.spool = spool
        self.url = base_url.rstrip("/") + USAGE_PATH
        self.batch_size = batch_size
        self.interval = interval
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.stats = SenderStats()
        self._headers = {"Authorization": f"Bearer {service_token}", "Content-Type": "application/json"}
        self._client = client
        self._owns_client = client is None
        self._timeout = timeout
        self._failures_in_a_row = 0
        self._send_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background task on the running loop."""
        if self._task is None:
            self._stopping = False
            self._loop = asyncio.get_running_loop()
            self._task = self._loop.create_task(self._run(), name="metering-usage-sender")

    def wake(self) -> None:
        """Deliver now instead of at the next tick (e.g. once a full batch is waiting); any thread may call it."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if self._loop is None or running is self._loop:
            self._wake.set()
        else:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def stop(self, timeout: float = 10.0) -> bool:
        """Stop the background task and flush what it can within ``timeout``; True when the spool is empty.

        A batch in flight is allowed to finish (cancelling it between the service's commit and the
        spool's update would only cause a harmless resend, but there is no need to).
        """
        deadline = time.monotonic() + timeout
        self._stopping = True
        if self._task is not None:
            self._wake.set()
            done, _ = await asyncio.wait({self._task}, timeout=timeout)
            if not done:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        try:
            return await self.flush(max(0.0, deadline - time.monotonic()))
        finally:
            if self._owns_client and self._client is not None:
                await self._client.aclose()
                self._client = None

    async def __aenter__(self) -> UsageSender:
        self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    # -- delivery -------------------------------------------------------------------------------

    async def flush(self, timeout: float | None = 30.0) -> bool:
        """Deliver everything spooled now, retrying with backoff until ``timeout``; True when empty."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                if await self.deliver_batch() == 0:
                    return True
            except DeliveryDeferred as retry:
                delay = self._next_delay(retry)
                if deadline is not None and time.monotonic() + delay > deadline:
                    return False
                await asyncio.sleep(delay)
            if deadline is not None and time.monotonic() > deadline:
                return await asyncio.to_thread(self.spool.pending_count) == 0

    async def deliver_batch(self) -> int:
        """Send the oldest batch once; returns how many records left the spool (0: it was empty).

        Raises ``DeliveryDeferred`` when the batch must wait; callers back off.
        """
        async with self._send_lock:
            batch = await asyncio.to_thread(self.spool.peek, self.batch_size)
            if not batch:
                return 0
            settled = await self._deliver(batch)
            self._failures_in_a_row = 0
            return settled

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                settled = await self.deliver_batch()
                delay = 0.0 if settled >= self.batch_size else self.interval
            except DeliveryDeferred as retry:
                delay = self._next_delay(retry)
            except Exception:  # the loop must outlive any single failure
                logger.exception("usage sender: unexpected error; retrying")
                self._failures_in_a_row += 1
                delay = self._backoff()
            if delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=delay)

    async def _deliver(self, batch: Sequence[SpooledRecord]) -> int:
        """POST ``batch``; splits it on whole-batch refusals; returns the number of records settled."""
        response = await self._post(batch)
        payload = _json(response)
        if response.status_code == 200:
            return await self._settle(batch, payload)
        reason = f"HTTP {response.status_code}: {_detail(payload) or response.reason_phrase}"
        if response.status_code in _SPLIT_STATUSES:
            if len(batch) == 1:
                logger.warning("usage sender: dead-lettering record %s: %s", batch[0].id, reason)
                await asyncio.to_thread(self.spool.settle, rejected=[(batch[0].id, reason)])
                self.stats.dead_lettered += 1
                return 1
            middle = len(batch) // 2
            return await self._deliver(batch[:middle]) + await self._deliver(batch[middle:])
        if response.status_code in _AUTH_STATUSES:
            logger.error("usage sender: Metering refused the service token (%s)", reason)
            raise DeliveryDeferred(reason)
        raise DeliveryDeferred(reason, delay=_retry_after(response))

    async def _post(self, batch: Sequence[SpooledRecord]) -> httpx.Response:
        # The spooled bodies are already JSON: the request body is spliced, not re-serialized.
        content = b'{"records":[' + b",".join(record.body for record in batch) + b"]}"
        try:
            response = await self._http().post(self.url, content=content, headers=self._headers)
        except httpx.TransportError as exc:
            raise DeliveryDeferred(f"{type(exc).__name__}: {exc}") from exc
        self.stats.batches_sent += 1
        return response

    async def _settle(self, batch: Sequence[SpooledRecord], payload: Any) -> int:
        if not isinstance(payload, dict) or not isinstance(payload.get("rejected"), list):
            # A 200 we cannot read (a proxy's page?) proves nothing was stored; resending is safe.
            raise DeliveryDeferred("HTTP 200 without a usage result")
        rejected: dict[int, str] = {}
        for item in payload["rejected"]:
            index = item.get("index") if isinstance(item, dict) else None
            if isinstance(index, int) and 0 <= index < len(batch):
                rejected[index] = str(item.get("error") or "rejected")
        delivered = [record.id for index, record in enumerate(batch) if index not in rejected]
        dead = [(batch[index].id, reason) for index, reason in sorted(rejected.items())]
        await asyncio.to_thread(self.spool.settle, delivered=delivered, rejected=dead)
        self.stats.accepted += _count(payload.get("accepted"))
        self.stats.duplicates += _count(payload.get("duplicates"))
        self.stats.dead_lettered += len(dead)
        for spool_id, reason in dead:
            logger.warning("usage sender: Metering rejected record %s: %s", spool_id, reason)
        return len(batch)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout)
        return self._client

    # -- backoff --------------------------------------------------------------------------------

    def _next_delay(self, retry: DeliveryDeferred) -> float:
        self._failures_in_a_row += 1
        self.stats.failures += 1
        self.stats.last_error = retry.reason
        logger.warning("usage sender: delivery failed (%s); attempt %d", retry.reason, self._failures_in_a_row)
        if retry.delay is not None:
            return min(self.backoff_cap, retry.delay)
        return self._backoff()

    def _backoff(self) -> float:
        """Full jitter: uniform in [0, min(cap, base · 2^(failures-1))]."""
        exponent = min(self._failures_in_a_row - 1, 32)
        return random.uniform(0, min(self.backoff_cap, self.backoff_base * 2**exponent))


def _json(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content) if response.content else None
    except ValueError:  # not JSON, or not UTF-8
        return None


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _detail(payload: Any) -> str | None:
    if isinstance(payload, dict) and payload.get("detail") is not None:
        return str(payload["detail"])
    return None


def _retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds on 429/503; the HTTP-date form falls back to the backoff schedule."""
    value = response.headers.get("retry-after")
    if response.status_code not in (429, 503) or value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
