"""ASGI apps served by uvicorn as tasks of the running event loop, each on a free loopback port.

Every server of the demo shares one loop (and so one clock offset); none of them installs
signal handlers, so Ctrl-C is handled once, by the demo, which then stops them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

START_TIMEOUT_SECONDS = 20.0


def _listening_socket(port: int) -> socket.socket:
    """Bound here and handed to uvicorn (0: any free port).

    A free port found, let go and bound again later could be taken in between, for example as
    the local end of an outgoing connection; uvicorn then raises ``SystemExit`` in its task,
    which stops the whole event loop, not just this server.

    The protocol is named: asyncio sets ``TCP_NODELAY`` only on connections whose socket says
    ``IPPROTO_TCP``. Without it, uvicorn's separate writes of headers and body wait for the
    client's delayed ACK, 40 ms per response.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The demo owns SIGINT/SIGTERM for all its servers; uvicorn would re-raise them per server.
        yield


class LoopbackServer:
    """One app on ``127.0.0.1:<port>``; ``start`` returns once it accepts connections."""

    def __init__(self, name: str, app: ASGIApp, *, port: int | None = None, lifespan: str = "on") -> None:
        self.name = name
        self._socket = _listening_socket(port or 0)
        self.port = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan=lifespan, access_log=False
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]), name=f"server-{self.name}")
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT_SECONDS
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises the server's own error
                raise RuntimeError(f"{self.name} server stopped before it started")
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"{self.name} server did not start on port {self.port}")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._task is None:
            self._socket.close()  # never served; uvicorn closes it otherwise
            return
        self._server.should_exit = True
        await self._task
        self._task = None
