"""Loopback servers hold their port from the moment they are made, not from when uvicorn binds it."""

from __future__ import annotations

import socket

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
