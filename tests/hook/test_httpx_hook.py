"""``MeteringHook`` on a real ``httpx.AsyncClient`` talking to a provider stand-in on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from metering_hook import MeteringHook, Spool, UsageSender


class ProviderHandler(BaseHTTPRequestHandler):
    """``/ok`` answers with ``Inference-Id``, ``/custom`` with ``X-Request-Id``, ``/no-id`` with
    neither, ``/error`` is a 503 without an id; it also echoes what the router sent."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    seen: ClassVar[list[dict[str, str]]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        ProviderHandler.seen.append(dict(self.headers.items()))
        status, headers = {
            "/ok": (200, {"Inference-Id": "prov-123"}),
            "/custom": (200, {"X-Request-Id": "xr-9"}),
            "/no-id": (200, {}),
            "/error": (503, {}),
        }[self.path]
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture(scope="module")
def provider_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ProviderHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    with Spool(tmp_path / "spool.db") as value:
        yield value


@pytest.fixture
def hook(spool: Spool) -> MeteringHook:
    return MeteringHook(spool, request_id_headers={"custom-co": "X-Request-Id"})


def client_for(hook: MeteringHook) -> httpx.AsyncClient:
    return httpx.AsyncClient(event_hooks={"request": [hook.on_request], "response": [hook.on_response]})


META = {"provider_id": "together", "user": "alice", "model": "org/name", "hold_id": "hold-1", "task": "conversational"}


class TestOnResponse:
    async def test_spools_the_record_of_a_routed_request(
        self, hook: MeteringHook, spool: Spool, provider_url: str
    ) -> None:
        before = datetime.now(UTC)
        async with client_for(hook) as client:
            response = await client.post(
                f"{provider_url}/ok",
                json={"inputs": "hi"},
                headers={"X-HF-Bill-To": "acme"},
                extensions={"metering": META},
            )
        assert response.status_code == 200
        [spooled] = spool.peek(10)
        record = spooled.record
        started = datetime.fromisoformat(record.pop("started_at"))
        assert before <= started <= datetime.now(UTC)
        assert 0 <= record.pop("duration_ms") < 5_000
        assert record == {
            "request_id": "prov-123",
            "provider": "together",
            "user": "alice",
            "bill_to": "acme",
            "model": "org/name",
            "custom_key": False,
            "task": "conversational",
            "hold_id": "hold-1",
        }
        assert hook.stats.recorded == 1
        # The metering facts stay in the router: the provider never sees them.
        assert not any("alice" in value for value in ProviderHandler.seen[-1].values())

    async def test_provider_specific_header_and_given_values(
        self, hook: MeteringHook, spool: Spool, provider_url: str
    ) -> None:
        meta = {
            "provider_id": "custom-co",
            "user": "bob",
            "model": "m",
            "custom_key": True,
            "duration_ms": 10_000,
            "hardware": "cpu-basic",
            "started_at": datetime(2026, 11, 1, tzinfo=UTC),
        }
        async with client_for(hook) as client:
            await client.post(f"{provider_url}/custom", extensions={"metering": meta})
        record = spool.peek(1)[0].record
        assert (record["request_id"], record["custom_key"], record["duration_ms"]) == ("xr-9", True, 10_000)
        assert (record["hardware"], record["started_at"], record["bill_to"]) == (
            "cpu-basic",
            "2026-11-01T00:00:00Z",
            None,
        )

    async def test_requests_without_the_extension_are_not_metered(
        self, hook: MeteringHook, spool: Spool, provider_url: str
    ) -> None:
        async with client_for(hook) as client:
            await client.post(f"{provider_url}/ok")
        assert (spool.pending_count(), hook.stats.unmetered) == (0, 1)

    async def test_success_without_request_id_is_dead_lettered(
        self, hook: MeteringHook, spool: Spool, provider_url: str
    ) -> None:
        async with client_for(hook) as client:
            response = await client.post(f"{provider_url}/no-id", extensions={"metering": META})
        assert response.status_code == 200
        assert spool.pending_count() == 0
        [dead] = spool.dead_letters()
        assert dead.reason == "response from 'together' has no Inference-Id header"
        assert (dead.record["user"], dead.record["request_id"]) == ("alice", None)
        assert hook.stats.missing_request_id == 1

    async def test_error_without_request_id_is_only_counted(
        self, hook: MeteringHook, spool: Spool, provider_url: str
    ) -> None:
        async with client_for(hook) as client:
            response = await client.post(f"{provider_url}/error", extensions={"metering": META})
        assert response.status_code == 503
        assert (spool.pending_count(), spool.dead_letter_count(), hook.stats.unserved) == (0, 0, 1)

    async def test_a_broken_spool_never_breaks_the_response(
        self, hook: MeteringHook, spool: Spool, provider_url: str
    ) -> None:
        spool.close()
        async with client_for(hook) as client:
            response = await client.post(f"{provider_url}/ok", extensions={"metering": META})
        assert response.status_code == 200
        assert hook.stats.failed == 1

    async def test_a_full_batch_wakes_the_sender(self, spool: Spool, provider_url: str) -> None:
        sender = UsageSender(spool, "http://127.0.0.1:9", "token", batch_size=2)
        hook = MeteringHook(spool, sender=sender)
        async with client_for(hook) as client:
            await client.post(f"{provider_url}/ok", extensions={"metering": META})
            assert not sender._wake.is_set()
            await client.post(f"{provider_url}/ok", extensions={"metering": META})
            assert sender._wake.is_set()


def test_sync_client_uses_record_response(spool: Spool, provider_url: str) -> None:
    hook = MeteringHook(spool)
    with httpx.Client(event_hooks={"response": [hook.record_response]}) as client:
        client.post(f"{provider_url}/ok", extensions={"metering": META})
    assert spool.peek(1)[0].record["request_id"] == "prov-123"
