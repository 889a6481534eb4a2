"""``deploy/nginx/metering-auth.conf`` on a real nginx: a router that is not Python, gated by a real
``metering serve`` through the auth subrequest, in front of a real upstream, with its usage records
shipped to ``POST /internal/v1/usage`` by ``deploy/nginx/ship-usage.sh``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.conftest import SERVICE_TOKEN, TEST_JWT_SECRET, TEST_SECRET_KEY
from tests.factories.billing_data import make_token
from tests.support import databases
from tests.support.nginx import SHIPPER, nginx_directory, nginx_running, render, require_nginx, write_owned
from tests.support.servers import free_port, metering_server

PLATFORM_PROVIDER_KEY = "platform-provider-key"
CLIENT_KEYS = {"alice": "key-alice", "bob": "key-bob", "carol": "key-carol"}
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
PROVIDER = {
    "url": "http://127.0.0.1:9",
    "request_id_header": "Inference-Id",
    "pricing": "cost_endpoint",
    "cost_endpoint": "http://127.0.0.1:9/billing/costs",
    "cost_token": "provider-token",
    "default_estimate_nano_usd": 100_000,
}


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Upstream:
    """A provider stand-in on loopback: remembers each request, answers with a request id."""

    port: int
    seen: list[Seen] = field(default_factory=list)


def serve_upstream() -> tuple[Upstream, ThreadingHTTPServer]:
    upstream = Upstream(port=0)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            upstream.seen.append(Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            answer = json.dumps({"choices": [{"message": {"content": "hello"}}]}).encode()
            self.send_response(200)
            self.send_header("Inference-Id", f"up-{len(upstream.seen)}")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        do_GET = do_POST = _answer

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    upstream.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return upstream, server


@dataclass
class Stack:
    metering_url: str
    proxy_url: str
    upstream: Upstream
    directory: Path
    values: dict[str, str]

    @property
    def usage_log(self) -> Path:
        return self.directory / "usage.jsonl"


def seed(metering_url: str) -> None:
    """alice (pro), bob and carol (free); acme (team: alice admin, bob); initech (team: alice admin,
    ``together`` switched off); providers ``together`` (credit-eligible) and ``paid-only`` (not)."""
    service = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
    for path, body in [
        ("/internal/v1/providers/together", {**PROVIDER, "credit_eligible": True}),
        ("/internal/v1/providers/paid-only", {**PROVIDER, "credit_eligible": False}),
        ("/internal/v1/accounts/alice", {"kind": "user", "plan": "pro"}),
        ("/internal/v1/accounts/bob", {"kind": "user", "plan": "free"}),
        ("/internal/v1/accounts/carol", {"kind": "user", "plan": "free"}),
        ("/internal/v1/accounts/acme", {"kind": "org", "plan": "team", "seats": 2}),
        ("/internal/v1/accounts/initech", {"kind": "org", "plan": "team", "seats": 1}),
        ("/internal/v1/orgs/acme/members/alice", {"role": "admin"}),
        ("/internal/v1/orgs/acme/members/bob", {"role": "write"}),
        ("/internal/v1/orgs/initech/members/alice", {"role": "admin"}),
    ]:
        response = httpx.put(metering_url + path, json=body, headers=service)
        assert response.status_code == 200, response.text
    disabled = httpx.put(
        f"{metering_url}/v1/orgs/initech/billing/disabled-providers",
        json={"providers": ["together"]},
        headers=as_user("alice"),
    )
    assert disabled.status_code == 200, disabled.text


def as_user(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(user, key=TEST_JWT_SECRET)}"}


def nginx_values(directory: Path, metering_address: str, upstream_port: int, port: int) -> dict[str, str]:
    keys = "".join(f'"Bearer {key}" {user};\n' for user, key in CLIENT_KEYS.items())
    return {
        "LISTEN": f"127.0.0.1:{port}",
        "METERING_ADDRESS": metering_address,
        "METERING_SERVICE_TOKEN": SERVICE_TOKEN,
        "UPSTREAM_ADDRESS": f"127.0.0.1:{upstream_port}",
        "PROVIDER_TOKEN": PLATFORM_PROVIDER_KEY,
        "API_KEYS": str(write_owned(directory / "api-keys.map", keys)),
        "USAGE_LOG": str(directory / "usage.jsonl"),
    }


@pytest.fixture(scope="module")
def stack(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_nginx()
    data_dir = tmp_path_factory.mktemp("metering")
    env = {
        "METERING_DATABASE_URL": databases.copy_sqlite(sqlite_template, data_dir),
        "METERING_SERVICE_TOKENS": SERVICE_TOKEN,
        "METERING_SECRET_KEY": TEST_SECRET_KEY,
        "METERING_JWT_SECRET": TEST_JWT_SECRET,
        "METERING_DATA_DIR": str(data_dir),
    }
    upstream, upstream_server = serve_upstream()
    try:
        with metering_server(env) as metering_url, nginx_directory() as directory:
            seed(metering_url)
            port = free_port()
            values = nginx_values(directory, metering_url.removeprefix("http://"), upstream.port, port)
            with nginx_running(directory, render(values), port):
                yield Stack(metering_url, f"http://127.0.0.1:{port}", upstream, directory, values)
    finally:
        upstream_server.shutdown()
        upstream_server.server_close()


def ask(stack: Stack, user: str | None, provider: str = "together", **headers: str) -> httpx.Response:
    """A chat completion through nginx, as ``user``'s client sends it."""
    sent = {"X-Model": "org/name"} | {name.replace("_", "-"): value for name, value in headers.items()}
    if user is not None:
        sent["Authorization"] = f"Bearer {CLIENT_KEYS[user]}"
    body = {"model": "org/name", "messages": [{"role": "user", "content": "Hello!"}]}
    return httpx.post(f"{stack.proxy_url}/{provider}/v1/chat/completions?x=1", json=body, headers=sent, timeout=30)


def usage_records(stack: Stack, request_id: str) -> list[dict]:
    """The usage log's records once the one of ``request_id`` is there: nginx writes a request's log
    line as the request ends, which may be just after the client has read the response."""
    deadline = time.monotonic() + 10
    while True:
        text = stack.usage_log.read_text() if stack.usage_log.exists() else ""
        records = [json.loads(line) for line in text.splitlines()]
        if any(record["request_id"] == request_id for record in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.02)


def refusal(response: httpx.Response) -> dict:
    assert response.headers["content-type"] == "application/json"
    return response.json()["error"]


class TestAllowed:
    def test_reaches_the_upstream_with_the_hold_id_and_the_platform_key(self, stack: Stack) -> None:
        before = len(stack.upstream.seen)

        response = ask(stack, "alice", X_HF_Bill_To="acme")

        assert response.status_code == 200, response.text
        assert response.json() == {"choices": [{"message": {"content": "hello"}}]}
        [seen] = stack.upstream.seen[before:]
        assert (seen.method, seen.path) == ("POST", "/v1/chat/completions?x=1")
        assert json.loads(seen.body)["messages"] == [{"role": "user", "content": "Hello!"}]
        assert UUID.match(seen.headers["x-metering-hold-id"])
        assert (seen.headers["x-metering-billing-account"], seen.headers["x-metering-providers"]) == (
            "acme",
            "together",
        )
        assert seen.headers["authorization"] == f"Bearer {PLATFORM_PROVIDER_KEY}"
        billing = httpx.get(f"{stack.metering_url}/v1/accounts/acme/billing", headers=as_user("alice")).json()
        assert billing["held_nano_usd"] >= PROVIDER["default_estimate_nano_usd"]

    def test_a_custom_key_goes_to_the_upstream_and_holds_nothing(self, stack: Stack) -> None:
        """bob's free credits do not cover the paid-only provider, but his own key pays for it."""
        before = len(stack.upstream.seen)

        response = ask(stack, "bob", "paid-only", X_Provider_Key="sk-bob-own")

        assert response.status_code == 200
        [seen] = stack.upstream.seen[before:]
        assert seen.headers["authorization"] == "Bearer sk-bob-own"
        assert "x-provider-key" not in seen.headers
        assert "x-metering-hold-id" not in seen.headers
        assert seen.headers["x-metering-billing-account"] == "bob"


class TestRefused:
    def test_credits_exhausted_is_402_and_the_upstream_never_sees_it(self, stack: Stack) -> None:
        before = len(stack.upstream.seen)

        response = ask(stack, "bob", "paid-only")

        assert response.status_code == 402, response.text
        error = refusal(response)
        assert (error["type"], error["code"]) == ("billing_error", "credits_exhausted")
        assert "upgrade the plan" in error["message"]
        assert stack.upstream.seen[before:] == []

    def test_a_disabled_provider_is_403(self, stack: Stack) -> None:
        before = len(stack.upstream.seen)

        response = ask(stack, "alice", X_HF_Bill_To="initech")

        assert response.status_code == 403
        error = refusal(response)
        assert (error["type"], error["code"]) == ("permission_error", "provider_disabled")
        assert "switched this provider off" in error["message"]
        assert stack.upstream.seen[before:] == []

    def test_not_a_member_is_403(self, stack: Stack) -> None:
        response = ask(stack, "carol", X_HF_Bill_To="acme")

        assert (response.status_code, refusal(response)["code"]) == (403, "not_a_member")

    def test_an_unknown_client_key_is_401_from_nginx_itself(self, stack: Stack) -> None:
        before = len(stack.upstream.seen)
        for sent in ({}, {"Authorization": "Bearer key-mallory"}):
            response = httpx.post(f"{stack.proxy_url}/together/v1/chat/completions", headers=sent | {"X-Model": "m"})
            assert (response.status_code, refusal(response)["type"]) == (401, "authentication_error")
        # A client cannot name someone else as the user.
        response = ask(stack, None, X_Metering_User="alice")
        assert response.status_code == 401
        assert stack.upstream.seen[before:] == []

    def test_no_model_is_400(self, stack: Stack) -> None:
        response = httpx.post(
            f"{stack.proxy_url}/together/v1/chat/completions", headers={"Authorization": "Bearer key-alice"}
        )

        assert (response.status_code, refusal(response)["type"]) == (400, "invalid_request_error")
        assert "X-Model" in refusal(response)["message"]


class TestMisconfigured:
    """What a client sees when the proxy cannot get a decision: never a request let through."""

    def run_with(self, stack: Stack, **overrides: str) -> httpx.Response:
        before = len(stack.upstream.seen)
        with nginx_directory() as directory:
            port = free_port()
            values = nginx_values(directory, stack.values["METERING_ADDRESS"], stack.upstream.port, port) | overrides
            with nginx_running(directory, render(values), port):
                response = httpx.post(
                    f"http://127.0.0.1:{port}/together/v1/chat/completions",
                    headers={"Authorization": "Bearer key-alice", "X-Model": "org/name"},
                    timeout=30,
                )
        assert stack.upstream.seen[before:] == []
        return response

    def test_a_wrong_service_token_is_500_naming_the_401(self, stack: Stack) -> None:
        response = self.run_with(stack, METERING_SERVICE_TOKEN="not-the-token")

        assert response.status_code == 500
        assert refusal(response)["message"] == "the request could not be authorized: Metering answered 401"

    def test_metering_unreachable_is_503(self, stack: Stack) -> None:
        response = self.run_with(stack, METERING_ADDRESS=f"127.0.0.1:{free_port()}")

        assert (response.status_code, refusal(response)["message"]) == (
            503,
            "billing is unavailable; try again shortly",
        )


class TestUsage:
    def test_records_reach_metering_with_their_hold_and_nginx_writes_a_fresh_log(self, stack: Stack) -> None:
        allowed = ask(stack, "alice")
        assert allowed.status_code == 200, allowed.text
        request_id = f"up-{len(stack.upstream.seen)}"
        lines = usage_records(stack, request_id)
        assert lines[-1] | {"started_at": "…", "hold_id": "…"} == {
            "request_id": request_id,
            "provider": "together",
            "user": "alice",
            "bill_to": "",
            "model": "org/name",
            "custom_key": False,
            "started_at": "…",
            "hold_id": "…",
        }
        assert UUID.match(lines[-1]["hold_id"])

        shipped = subprocess.run(
            ["sh", str(SHIPPER), str(stack.usage_log), str(stack.directory / "nginx.pid")],
            env=os.environ | {"METERING_URL": stack.metering_url, "METERING_SERVICE_TOKEN": SERVICE_TOKEN},
            capture_output=True,
            text=True,
            timeout=60,
        )

        assert shipped.returncode == 0, shipped.stderr
        [answer] = [json.loads(line) for line in shipped.stdout.splitlines() if line.strip()]
        assert answer == {"accepted": len(lines), "duplicates": 0, "rejected": []}
        alice = httpx.get(f"{stack.metering_url}/v1/accounts/alice/billing", headers=as_user("alice")).json()
        assert (alice["held_nano_usd"], alice["pending_requests"]) == (0, 1)
        items = httpx.get(f"{stack.metering_url}/v1/accounts/alice/requests", headers=as_user("alice")).json()["items"]
        assert [(item["request_id"], item["status"], item["custom_key"]) for item in items] == [
            (request_id, "pending", False)
        ]
        # nginx reopened its log: the next request's record starts a new file.
        assert ask(stack, "alice").status_code == 200
        next_id = f"up-{len(stack.upstream.seen)}"
        assert [record["request_id"] for record in usage_records(stack, next_id)] == [next_id]
