"""Run a simulator on loopback: in a background thread (tests) with a small admin client."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn

from simulator.app import create_simulator_app
from simulator.state import DEFAULT_MODELS, SimulatorState


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SimulatorHandle:
    """A running simulator: its URLs and its admin routes, spoken over real HTTP."""

    def __init__(self, base_url: str, state: SimulatorState | None = None) -> None:
        self.base_url = base_url
        self.cost_endpoint = f"{base_url}/billing/costs"
        self.state = state

    def set_faults(self, *, reset: bool = True, **faults: object) -> dict:
        """Replace the faults (``reset=False`` merges into the current ones)."""
        response = httpx.post(f"{self.base_url}/_sim/faults", json={"reset": reset, **faults}, timeout=10)
        response.raise_for_status()
        return response.json()

    def preload(self, costs: dict[str, int] | None = None, request_ids: list[str] | None = None) -> int:
        body: dict[str, object] = {}
        if costs:
            body["costs"] = costs
        if request_ids:
            body["requestIds"] = request_ids
        response = httpx.post(f"{self.base_url}/_sim/costs", json=body, timeout=60)
        response.raise_for_status()
        return response.json()["known"]

    def stats(self) -> dict:
        response = httpx.get(f"{self.base_url}/_sim/stats", timeout=10)
        response.raise_for_status()
        return response.json()


@contextmanager
def simulator_in_thread(
    *,
    seed: int = 0,
    token: str = "provider-token",
    port: int | None = None,
    models: tuple[str, ...] = DEFAULT_MODELS,
) -> Iterator[SimulatorHandle]:
    """A simulator served by uvicorn in a daemon thread of this process, stopped on exit."""
    state = SimulatorState(seed=seed, token=token, models=models)
    port = port or _free_port()
    config = uvicorn.Config(
        create_simulator_app(state), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"simulator-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"simulator on port {port} did not start")
        time.sleep(0.01)
    try:
        yield SimulatorHandle(f"http://127.0.0.1:{port}", state)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
