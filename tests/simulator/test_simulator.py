"""The provider simulator over real HTTP: inference IDs, remembered costs, faults switched at runtime."""

from __future__ import annotations

import itertools
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from simulator.server import SimulatorHandle, simulator_in_thread
from simulator.state import MAX_COST_NANO_USD, MIN_COST_NANO_USD, deterministic_cost
from tests.support.servers import free_port, wait_until_up

AUTH = {"Authorization": "Bearer provider-token"}
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorHandle]:
    with simulator_in_thread(seed=42) as handle:
        yield handle


@pytest.fixture(autouse=True)
def no_faults(sim: SimulatorHandle) -> None:
    sim.set_faults()


def _costs(sim: SimulatorHandle, ids: list[str], headers: dict[str, str] = AUTH) -> httpx.Response:
    return httpx.post(sim.cost_endpoint, json={"requestIds": ids}, headers=headers, timeout=10)


class TestInference:
    def test_serves_an_inference_id_and_remembers_its_cost(self, sim: SimulatorHandle) -> None:
        response = httpx.post(f"{sim.base_url}/v1/chat/completions", json={"model": "org/m", "messages": []})
        request_id = response.headers["Inference-Id"]
        assert response.status_code == 200 and response.json()["model"] == "org/m"
        cost = deterministic_cost(42, request_id)
        assert MIN_COST_NANO_USD <= cost <= MAX_COST_NANO_USD
        assert _costs(sim, [request_id]).json() == {"requests": [{"requestId": request_id, "costNanoUsd": cost}]}

    def test_ids_and_costs_are_deterministic_for_a_seed(self) -> None:
        def first_id() -> str:
            with simulator_in_thread(seed=5) as other:
                return httpx.post(f"{other.base_url}/v1/chat/completions", json={}).headers["Inference-Id"]

        assert first_id() == first_id()
        assert deterministic_cost(5, "abc") == deterministic_cost(5, "abc") != deterministic_cost(6, "abc")


def _stream(sim: SimulatorHandle, **body: object) -> tuple[httpx.Response, list[dict], list[float]]:
    """A streamed chat answer: the response, its parsed events (``[DONE]`` as ``{}``), and when each arrived."""
    events, arrivals = [], []
    payload = {"model": "org/m", "messages": [], "stream": True, **body}
    with httpx.stream("POST", f"{sim.base_url}/v1/chat/completions", json=payload, timeout=10) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append({} if line == "data: [DONE]" else orjson.loads(line[6:]))
                arrivals.append(time.monotonic())
    return response, events, arrivals


class TestStreaming:
    def test_streams_openai_chunks_one_token_each_then_done(self, sim: SimulatorHandle) -> None:
        response, events, _ = _stream(sim)
        request_id = response.headers["Inference-Id"]
        assert response.headers["content-type"].startswith("text/event-stream")
        assert {event["id"] for event in events[:-1]} == {request_id} and events[-1] == {}
        deltas = [event["choices"][0]["delta"] for event in events[:-1]]
        assert deltas[0] == {"role": "assistant", "content": ""}
        assert "".join(delta.get("content", "") for delta in deltas) == "Hello from the simulator."
        assert [event["choices"][0]["finish_reason"] for event in events[:-1]] == [None] * 7 + ["stop"]
        assert all("usage" not in event for event in events)
        assert _costs(sim, [request_id]).json()["requests"][0]["costNanoUsd"] == deterministic_cost(42, request_id)

    def test_the_last_chunk_carries_usage_when_asked(self, sim: SimulatorHandle) -> None:
        _, events, _ = _stream(sim, stream_options={"include_usage": True}, max_tokens=40)
        *chunks, usage, done = events
        assert sum(1 for chunk in chunks if chunk["choices"][0]["delta"].get("content")) == 40
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert (usage["choices"], usage["usage"]) == (
            [],
            {"prompt_tokens": 12, "completion_tokens": 40, "total_tokens": 52},
        )
        assert done == {}

    def test_slow_chunks_arrive_one_by_one(self, sim: SimulatorHandle) -> None:
        sim.set_faults(stream_chunk_delay_seconds=0.15)
        _, events, arrivals = _stream(sim, max_tokens=2)
        assert len(events) == 5  # role, two tokens, finish, [DONE]
        gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals[:4])]  # [DONE] is not delayed
        assert statistics.median(gaps) >= 0.1, gaps

    def test_a_cut_stream_drops_the_connection_after_the_given_chunks(self, sim: SimulatorHandle) -> None:
        sim.set_faults(cut_streams=1, cut_after_chunks=3)
        received = []
        with (
            pytest.raises(httpx.RemoteProtocolError),
            httpx.stream("POST", f"{sim.base_url}/v1/chat/completions", json={"stream": True}, timeout=10) as response,
        ):
            request_id = response.headers["Inference-Id"]
            received.extend(line for line in response.iter_lines() if line)
        assert len(received) == 3 and "[DONE]" not in received[-1]
        assert _costs(sim, [request_id]).json()["requests"][0]["requestId"] == request_id  # served, so billed
        _, events, _ = _stream(sim)
        assert events[-1] == {}  # the burst was one stream

    def test_the_answer_without_stream_honours_max_tokens(self, sim: SimulatorHandle) -> None:
        answer = httpx.post(f"{sim.base_url}/v1/chat/completions", json={"model": "org/m", "max_tokens": 8}).json()
        assert answer["choices"][0]["message"]["content"] == "Hello from the simulator.Hello from"
        assert (answer["choices"][0]["finish_reason"], answer["usage"]["completion_tokens"]) == ("length", 8)


class TestModels:
    def test_lists_the_models_it_was_given(self) -> None:
        with simulator_in_thread(models=("org/a", "other/b")) as other:
            listed = httpx.get(f"{other.base_url}/v1/models").json()
        assert listed["object"] == "list"
        assert [(item["id"], item["owned_by"]) for item in listed["data"]] == [("org/a", "org"), ("other/b", "other")]


class TestCostEndpoint:
    def test_needs_the_bearer_token(self, sim: SimulatorHandle) -> None:
        assert _costs(sim, ["x"], headers={"Authorization": "Bearer nope"}).status_code == 401

    def test_answers_only_ids_it_served(self, sim: SimulatorHandle) -> None:
        sim.preload(costs={"k1": 1_000, "k2": 2_000})
        assert _costs(sim, ["k1", "unknown", "k2"]).json() == {
            "requests": [{"requestId": "k1", "costNanoUsd": 1_000}, {"requestId": "k2", "costNanoUsd": 2_000}]
        }

    def test_refuses_a_malformed_ask(self, sim: SimulatorHandle) -> None:
        assert httpx.post(sim.cost_endpoint, content=b"{", headers=AUTH).status_code == 400


class TestFaults:
    def test_bad_values_are_sent_as_literal_tokens(self, sim: SimulatorHandle) -> None:
        sim.preload(costs={"n1": 10, "n2": 20, "n3": 30})
        sim.set_faults(bad_values={"n1": "nan", "n2": "float_integral", "n3": "over_ceiling"}, ceiling_nano_usd=99)
        body = _costs(sim, ["n1", "n2", "n3"]).content
        assert body == (
            b'{"requests":[{"requestId":"n1","costNanoUsd":NaN},{"requestId":"n2","costNanoUsd":100.0},'
            b'{"requestId":"n3","costNanoUsd":100}]}'
        )

    def test_bursts_apply_to_the_next_calls_only(self, sim: SimulatorHandle) -> None:
        sim.preload(costs={"b1": 5})
        sim.set_faults(error_burst=2, rate_limit_burst=1, retry_after_seconds=9)
        assert [_costs(sim, ["b1"]).status_code for _ in range(4)] == [503, 503, 429, 200]
        sim.set_faults(rate_limit_burst=1, retry_after_seconds=9)
        assert _costs(sim, ["b1"]).headers["Retry-After"] == "9"

    def test_body_faults(self, sim: SimulatorHandle) -> None:
        sim.preload(costs={"c1": 5})
        sim.set_faults(truncated_json=1, html_200=1, wrong_content_type=1)
        truncated, html, plain, fine = (_costs(sim, ["c1"]) for _ in range(4))
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(truncated.content)
        assert html.headers["content-type"].startswith("text/html")
        assert plain.headers["content-type"].startswith("text/plain") and orjson.loads(plain.content)
        assert fine.json() == {"requests": [{"requestId": "c1", "costNanoUsd": 5}]}

    def test_missing_duplicate_unknown_and_revised(self, sim: SimulatorHandle) -> None:
        sim.preload(costs={"d1": 100, "d2": 200})
        sim.set_faults(missing_ids=["d2"], duplicate_fraction=1.0, unknown_ids=1, revise_on_second_ask=True)
        entries = _costs(sim, ["d1", "d2"]).json()["requests"]
        assert next(e["requestId"] for e in entries) == "d1" and "d2" not in [e["requestId"] for e in entries]
        assert entries[0]["costNanoUsd"] == 100 and entries[-1] == {"requestId": "d1", "costNanoUsd": 101}
        assert len(entries) == 3  # d1, one unknown ID, then d1 again
        sim.set_faults(revise_on_second_ask=True, revise_delta_nano_usd=7_000)
        assert _costs(sim, ["d1"]).json()["requests"][0]["costNanoUsd"] == 7_100

    def test_faults_are_validated(self, sim: SimulatorHandle) -> None:
        response = httpx.post(f"{sim.base_url}/_sim/faults", json={"missing_fraction": 2})
        assert response.status_code == 422


class TestCommandLine:
    def test_simulate_provider_serves_with_faults_from_flags(self, tmp_path: Path) -> None:
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "cli.main",
            "simulate-provider",
            "--port",
            str(port),
            "--seed",
            "3",
            "--error-burst",
            "1",
        ]
        process = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, "METERING_DATA_DIR": str(tmp_path)}, stderr=subprocess.PIPE
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until_up(f"{base}/_sim/faults", process=process)
            assert httpx.get(f"{base}/_sim/faults").json()["error_burst"] == 1
            request_id = httpx.post(f"{base}/v1/chat/completions", json={}).headers["Inference-Id"]
            ask = {"json": {"requestIds": [request_id]}, "headers": AUTH}
            assert httpx.post(f"{base}/billing/costs", **ask).status_code == 503
            assert httpx.post(f"{base}/billing/costs", **ask).json()["requests"][0][
                "costNanoUsd"
            ] == deterministic_cost(3, request_id)
        finally:
            process.terminate()
            process.wait(timeout=10)
