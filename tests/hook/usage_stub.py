"""A stand-in usage service on a real loopback socket, for the faults the real one can't be made to show.

It keeps the contract of ``POST /internal/v1/usage`` (idempotent on provider + request_id, per-record
rejections by index) and can be told to answer with 5xx, 429, 401, 413 or 422 on demand. The real
service is exercised by ``test_end_to_end.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson

TOKEN = "stub-token"


@dataclass
class Scripted:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class UsageStub:
    """What the stub stored and saw; ``script`` answers are used first, one per request."""

    script: list[Scripted] = field(default_factory=list)
    # A record for which this returns a reason is rejected by index in a 200 answer.
    reject: Callable[[dict], str | None] = lambda _record: None
    # A batch holding a record for which this is true is refused whole with 422.
    poison: Callable[[dict], bool] = lambda _record: False
    max_records: int | None = None
    stored: dict[tuple[str, str], dict] = field(default_factory=dict)
    batches: list[list[dict]] = field(default_factory=list)
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, authorization: str | None, body: bytes) -> Scripted:
        with self.lock:
            self.requests += 1
            if self.script:
                return self.script.pop(0)
            if authorization != f"Bearer {TOKEN}":
                return Scripted(401, orjson.dumps({"error": "Unauthenticated", "detail": "bad token"}))
            records = orjson.loads(body)["records"]
            if self.max_records is not None and len(records) > self.max_records:
                return Scripted(413, orjson.dumps({"error": "PayloadTooLarge", "detail": "body too large"}))
            if any(self.poison(record) for record in records):
                return Scripted(422, orjson.dumps({"error": "ValidationError", "detail": "records.0.user: required"}))
            self.batches.append(records)
            accepted = duplicates = 0
            rejected = []
            for index, record in enumerate(records):
                reason = self.reject(record)
                key = (record["provider"], record["request_id"])
                if reason is not None:
                    rejected.append({"index": index, "request_id": record["request_id"], "error": reason})
                elif key in self.stored:
                    duplicates += 1
                else:
                    self.stored[key] = record
                    accepted += 1
            result = {"accepted": accepted, "duplicates": duplicates, "rejected": rejected}
            return Scripted(200, orjson.dumps(result))


@contextmanager
def usage_stub_server(stub: UsageStub, port: int = 0) -> Iterator[str]:
    """Serve ``stub`` on 127.0.0.1; yields the base URL."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            answer = stub.answer(self.headers.get("Authorization"), body)
            self.send_response(answer.status)
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
