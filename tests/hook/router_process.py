"""A stand-in router process for the end-to-end tests: spools records through the hook while its
sender delivers in the background, printing each confirmed append, until it is killed.

    python -m tests.hook.router_process SPOOL BASE_URL TOKEN COUNT PAUSE_SECONDS
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime

from metering_hook import Spool, UsageSender, build_record


def routed_record(n: int) -> dict:
    """The n-th request: every third one billed to the org ``acme``."""
    return build_record(
        request_headers={"X-HF-Bill-To": "acme"} if n % 3 == 0 else {},
        response_headers={"inference-id": f"req-{n:06d}"},
        provider_id="together",
        user="alice",
        model="org/name",
        task="conversational",
        started_at=datetime(2026, 11, 22, 5, 0, tzinfo=UTC),
        duration_ms=n,
        input_tokens=10,
        output_tokens=20,
    )


async def main(spool_path: str, base_url: str, token: str, count: int, pause: float) -> None:
    spool = Spool(spool_path)
    sender = UsageSender(spool, base_url, token, batch_size=50, interval=0.01, backoff_base=0.05, backoff_cap=0.2)
    sender.start()
    for n in range(count):
        spool.append(routed_record(n))
        print(n, flush=True)
        if pause:
            await asyncio.sleep(pause)
    print("spooled", flush=True)
    await asyncio.Event().wait()  # a router keeps running until it is stopped


if __name__ == "__main__":
    path, url, service_token, total, delay = sys.argv[1:6]
    asyncio.run(main(path, url, service_token, int(total), float(delay)))
