"""``Spool``: append, peek in order, settle, dead letters — on a real file, across reopening and kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metering_hook import Spool


def rec(n: int) -> dict:
    return {"request_id": f"req-{n}", "provider": "together", "user": "alice", "cost_hint_nano_usd": 1_200_000 + n}


@pytest.fixture
def spool(tmp_path: Path):
    with Spool(tmp_path / "spool.db") as value:
        yield value


class TestAppendAndPeek:
    def test_peek_returns_oldest_first_and_leaves_records(self, spool: Spool) -> None:
        for n in range(5):
            spool.append(rec(n))
        batch = spool.peek(3)
        assert [item.record["request_id"] for item in batch] == ["req-0", "req-1", "req-2"]
        assert batch[0].record["cost_hint_nano_usd"] == 1_200_000
        assert spool.pending_count() == 5

    def test_append_many_is_one_ordered_block(self, spool: Spool) -> None:
        spool.append(rec(0))
        assert spool.append_many([rec(1), rec(2)]) == 2
        assert [item.record["request_id"] for item in spool.peek(10)] == ["req-0", "req-1", "req-2"]

    def test_body_is_the_json_sent(self, spool: Spool) -> None:
        spool.append({"request_id": "é", "n": 1})
        assert spool.peek(1)[0].body == b'{"request_id":"\\u00e9","n":1}'

    def test_a_string_no_encoding_can_hold_is_spooled_all_the_same(self, spool: Spool) -> None:
        """A lone surrogate (from a badly decoded header, say) is escaped, not raised into the router."""
        spool.append({"request_id": "req-\udc80"})
        assert spool.peek(1)[0].record == {"request_id": "req-\udc80"}

    def test_records_survive_reopening(self, tmp_path: Path) -> None:
        with Spool(tmp_path / "s.db") as first:
            first.append_many(rec(n) for n in range(3))
            first.settle(delivered=[first.peek(1)[0].id])
        with Spool(tmp_path / "s.db", synchronous="FULL") as second:
            assert [item.record["request_id"] for item in second.peek(10)] == ["req-1", "req-2"]

    def test_ids_are_never_reused_after_the_spool_empties(self, spool: Spool) -> None:
        first = spool.append(rec(0))
        spool.delete([first])
        assert spool.append(rec(1)) > first


class TestSettle:
    def test_delivered_are_deleted_and_rejected_dead_lettered_with_reason(self, spool: Spool) -> None:
        spool.append_many(rec(n) for n in range(4))
        ids = [item.id for item in spool.peek(4)]
        spool.settle(delivered=[ids[0], ids[2]], rejected=[(ids[1], "unknown provider 'nope'")])
        assert [item.record["request_id"] for item in spool.peek(10)] == ["req-3"]
        [dead] = spool.dead_letters()
        assert dead.record == rec(1)
        assert dead.reason == "unknown provider 'nope'"
        assert spool.dead_letter_count() == 1

    def test_large_settle_is_chunked(self, spool: Spool) -> None:
        spool.append_many(rec(n) for n in range(2_100))
        spool.delete(item.id for item in spool.peek(2_050))
        assert spool.pending_count() == 50

    def test_dead_letter_of_a_record_never_spooled(self, spool: Spool) -> None:
        spool.add_dead_letter({"request_id": None, "user": "alice"}, "no Inference-Id header")
        assert spool.pending_count() == 0
        assert spool.dead_letters()[0].reason == "no Inference-Id header"

    def test_requeue_puts_dead_letters_back_at_the_end(self, spool: Spool) -> None:
        spool.append_many([rec(0), rec(1)])
        spool.dead_letter([(spool.peek(1)[0].id, "bad")])
        assert spool.requeue_dead_letters() == 1
        assert [item.record["request_id"] for item in spool.peek(10)] == ["req-1", "req-0"]
        assert spool.dead_letter_count() == 0


APPENDER = textwrap.dedent(
    """
    import sys
    from metering_hook import Spool
    spool = Spool(sys.argv[1])
    n = 0
    while True:
        spool.append({"request_id": f"req-{n}"})
        print(n, flush=True)
        n += 1
    """
)


def test_every_append_that_returned_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    process = subprocess.Popen([sys.executable, "-c", APPENDER, str(path)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    confirmed = []
    for line in process.stdout:
        confirmed.append(int(line))
        if len(confirmed) == 2_000:
            break
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    with Spool(path) as reopened:
        ids = [item.record["request_id"] for item in reopened.peek(1_000_000)]
    # Everything confirmed is there, in order, with no gaps; at most the appends in flight beyond it.
    assert ids[: len(confirmed)] == [f"req-{n}" for n in confirmed]
    assert ids == [f"req-{n}" for n in range(len(ids))]


@settings(max_examples=40, deadline=None)
@given(operations=st.lists(st.tuples(st.sampled_from(["append", "deliver", "reject"]), st.integers(1, 5)), max_size=30))
def test_remaining_records_keep_fifo_order(tmp_path_factory: pytest.TempPathFactory, operations: list) -> None:
    """Whatever is appended, delivered or rejected, what remains is the unsettled records in append order."""
    with Spool(tmp_path_factory.mktemp("fifo") / "s.db") as spool:
        expected: list[int] = []
        dead: list[int] = []
        counter = 0
        for operation, count in operations:
            if operation == "append":
                for _ in range(count):
                    spool.append(rec(counter))
                    expected.append(counter)
                    counter += 1
            else:
                batch = spool.peek(count)
                if operation == "deliver":
                    spool.settle(delivered=[item.id for item in batch])
                else:
                    spool.settle(rejected=[(item.id, "r") for item in batch])
                    dead.extend(item.record["cost_hint_nano_usd"] - 1_200_000 for item in batch)
                del expected[: len(batch)]
        assert [item.record["request_id"] for item in spool.peek(1_000)] == [f"req-{n}" for n in expected]
        assert [item.record["request_id"] for item in spool.dead_letters()] == [f"req-{n}" for n in dead]
