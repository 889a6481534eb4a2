"""Cost of spooling one usage record in the router: median and p99 µs per ``append``, and per
``build_record`` + ``append``, on a real SQLite file in a temp dir. Target: median ≤ 100 µs.

    python bench/hook_enqueue.py [--quick] [-n 20000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from metering_hook import Spool, build_record

TARGET_MEDIAN_US = 100.0
STARTED = datetime(2026, 11, 22, 5, 0, tzinfo=UTC)


def _record(n: int) -> dict:
    return build_record(
        request_headers={"X-HF-Bill-To": "acme", "Content-Type": "application/json"},
        response_headers={"Inference-Id": f"req-{n:012d}", "Content-Type": "application/json"},
        provider_id="together",
        user="alice",
        model="meta-llama/Llama-3.3-70B-Instruct",
        started_at=STARTED,
        duration_ms=1234,
        task="conversational",
        input_tokens=512,
        output_tokens=128,
        hold_id="0b7e5c1e-5d7f-4c59-9a43-3f4d1f0e8a11",
    )


def _summary(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)
    return {
        "median_us": round(statistics.median(ordered) / 1000, 1),
        "p99_us": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1000, 1),
        "n": len(ordered),
    }


def _time_appends(spool: Spool, n: int, *, build: bool) -> list[int]:
    records = None if build else [_record(i) for i in range(n)]
    samples = []
    clock = time.perf_counter_ns
    for i in range(n):
        started = clock()
        spool.append(_record(i) if build else records[i])  # type: ignore[index]
        samples.append(clock() - started)
    return samples


def measure(n: int = 20_000) -> dict[str, dict[str, float]]:
    """Per-record enqueue cost; ``synchronous=FULL`` (an fsync per record) is timed on n/20 records."""
    with tempfile.TemporaryDirectory(prefix="hook-bench-") as directory:
        results = {}
        with Spool(Path(directory) / "normal.db") as spool:
            results["append_normal"] = _summary(_time_appends(spool, n, build=False))
            results["build_and_append_normal"] = _summary(_time_appends(spool, n, build=True))
        with Spool(Path(directory) / "full.db", synchronous="FULL") as spool:
            results["append_full"] = _summary(_time_appends(spool, max(50, n // 20), build=False))
        with Spool(Path(directory) / "group.db") as spool:
            batch = [_record(i) for i in range(100)]
            samples = []
            for _ in range(max(1, n // 100)):
                started = time.perf_counter_ns()
                spool.append_many(batch)
                samples.append((time.perf_counter_ns() - started) // len(batch))
            results["append_many_100_per_record"] = _summary(samples)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 records instead of 20,000")
    parser.add_argument("-n", type=int, default=20_000)
    arguments = parser.parse_args()
    n = 2_000 if arguments.quick else arguments.n
    for name, figures in measure(n).items():
        ratio = figures["median_us"] / TARGET_MEDIAN_US
        print(
            f"{name:30s} median {figures['median_us']:8.1f} µs  p99 {figures['p99_us']:8.1f} µs  "
            f"n={figures['n']:<6d} median/target {ratio:.2f}"
        )


if __name__ == "__main__":
    main()
