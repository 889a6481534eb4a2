"""A real webhook receiver on loopback for tests and benchmarks: verifies every Standard Webhooks
signature with the ``standardwebhooks`` package and records what arrived.

It runs in a thread of its own (``ThreadingHTTPServer``), so it answers while the test's event
loop is busy, and a process under test (a ``metering jobs`` subprocess) can reach it too. Its
answers are scripted: a status per request in order (then ``default_status``), or a hang.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError


@dataclass(frozen=True)
class Received:
    webhook_id: str
    timestamp: str
    body: bytes
    payload: dict[str, Any] | None
    verified: bool
    at: float

    @property
    def type(self) -> str | None:
        return None if self.payload is None else self.payload.get("type")


class _Server(ThreadingHTTPServer):
    # The default listen backlog of 5 resets connections of a burst of concurrent deliveries.
    request_queue_size = 1024


class WebhookReceiver:
    def __init__(self, secret: str, *, statuses: list[int] | None = None, default_status: int = 200) -> None:
        self.secret = secret
        self.statuses = list(statuses or [])
        self.default_status = default_status
        self.received: list[Received] = []
        # While set, each request is recorded on arrival and then held until released (or the hang ends).
        self.hang_seconds = 0.0
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks"
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True)

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    def hang(self, seconds: float) -> None:
        self._release.clear()
        self.hang_seconds = seconds

    def release(self) -> None:
        self.hang_seconds = 0.0
        self._release.set()

    def events(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events = self.events()
            if len(events) >= count:
                return events
            time.sleep(0.01)
        raise AssertionError(f"{count} webhook(s) expected within {timeout}s, got {len(self.events())}")

    def _answer(self, headers: dict[str, str], body: bytes) -> int:
        try:
            payload = Webhook(self.secret).verify(body, headers)
            verified = True
        except WebhookVerificationError:
            payload, verified = None, False
        if payload is None:
            try:
                payload = json.loads(body)
            except ValueError:
                payload = None
        with self._lock:
            self.received.append(
                Received(
                    headers.get("webhook-id", ""),
                    headers.get("webhook-timestamp", ""),
                    body,
                    payload,
                    verified,
                    time.monotonic(),
                )
            )
            status = self.statuses.pop(0) if self.statuses else self.default_status
        if self.hang_seconds:
            self._release.wait(self.hang_seconds)
        return status if verified else 400

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = receiver._answer({k.lower(): v for k, v in self.headers.items()}, body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
                pass

        return Handler


@contextmanager
def webhook_receiver(secret: str, **options: Any) -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(secret, **options).start()
    try:
        yield receiver
    finally:
        receiver.stop()
