"""Loopback servers hold their port from the moment they are made, not from when uvicorn binds it."""

from __future__ import annotations

import socket
import time

import httpx
import pytest
from fastapi import FastAPI

from demo.servers import LoopbackServer


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    return app


async def test_the_port_cannot_be_taken_between_choosing_it_and_serving() -> None:
    server = LoopbackServer("ping", _app(), lifespan="off")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other, pytest.raises(OSError):
        other.bind(("127.0.0.1", server.port))
    await server.start()
    try:
        async with httpx.AsyncClient() as http:
            response = await http.get(f"{server.url}/ping")
        assert response.json() == {"pong": "yes"}
    finally:
        await server.stop()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        other.bind(("127.0.0.1", server.port))  # let go once stopped
        assert other.getsockname()[1] == server.port


async def test_a_server_never_started_lets_its_port_go() -> None:
    server = LoopbackServer("idle", _app(), lifespan="off")
    await server.stop()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        other.bind(("127.0.0.1", server.port))
        assert other.getsockname()[1] == server.port


async def test_answers_are_not_held_back_by_delayed_acks() -> None:
    """Headers and body leave in two writes; without TCP_NODELAY the body waits ~40 ms for an ACK.

    The demo sends its month one request at a time, so that wait would add up to most of its run.
    """
    server = LoopbackServer("ping", _app(), lifespan="off")
    await server.start()
    try:
        async with httpx.AsyncClient() as http:
            await http.get(f"{server.url}/ping")  # the connection, opened once
            started = time.perf_counter()
            for _ in range(25):
                assert (await http.get(f"{server.url}/ping")).status_code == 200
            elapsed = time.perf_counter() - started
    finally:
        await server.stop()
    assert elapsed < 25 * 0.040 / 2, f"{elapsed:.3f} s for 25 requests"
