"""``metering token``: the token it prints is accepted by the app ``metering serve`` runs on the same
settings, its roles open what they should, and it refuses where only the platform can sign."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from typer.testing import CliRunner

from api.app import create_app
from cli.main import app as cli
from metering.config import Settings, set_settings
from metering.db import Database
from metering.migrate import upgrade
from metering.periods import current_period
from metering.sample_data import seed_sample_data

METERING_ENV = (
    "METERING_DATA_DIR",
    "METERING_DATABASE_URL",
    "METERING_ENVIRONMENT",
    "METERING_JWT_SECRET",
    "METERING_JWT_PUBLIC_KEY",
    "METERING_SERVICE_TOKENS",
    "METERING_SECRET_KEY",
)


@pytest.fixture
def embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh embedded default: only ``METERING_DATA_DIR`` set, as a newcomer's shell would have it."""
    for name in METERING_ENV:
        monkeypatch.delenv(name, raising=False)
    data_dir = tmp_path / "data"
    monkeypatch.setenv("METERING_DATA_DIR", str(data_dir))
    set_settings(None)
    yield data_dir
    set_settings(None)


def metering_token(*args: str) -> str:
    set_settings(None)  # the command reads the environment afresh, as a new process would
    result = CliRunner().invoke(cli, ["token", *args])
    set_settings(None)
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


@pytest.fixture
async def served(embedded: Path) -> AsyncIterator[httpx.AsyncClient]:
    """What ``metering serve`` runs: the settings from the environment, migrated, with the sample accounts."""
    settings = Settings()
    await upgrade(settings.database_url)
    await seed_sample_data(settings.database_url)
    database = Database(settings.database_url)
    app = create_app(settings, database=database)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://metering.test") as client:
        yield client
    await database.dispose()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class TestTheAppAcceptsIt:
    async def test_the_users_billing_opens_with_the_token_and_not_without(self, served: httpx.AsyncClient) -> None:
        token = metering_token("alice")
        assert (await served.get("/v1/accounts/alice/billing")).status_code == 401
        response = await served.get("/v1/accounts/alice/billing", headers=_bearer(token))
        assert response.status_code == 200, response.text
        assert response.json()["account"] == "alice"

    async def test_role_finance_opens_a_finance_export(self, served: httpx.AsyncClient) -> None:
        params = {"period": current_period(), "format": "csv"}
        plain = await served.get("/v1/finance/exports/ledger", params=params, headers=_bearer(metering_token("alice")))
        assert plain.status_code == 403
        finance = await served.get(
            "/v1/finance/exports/ledger", params=params, headers=_bearer(metering_token("carol", "--role", "finance"))
        )
        assert finance.status_code == 200, finance.text
        assert finance.headers["content-type"].startswith("text/csv")

    async def test_a_token_of_another_data_folder_is_refused(
        self, served: httpx.AsyncClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("METERING_DATA_DIR", str(tmp_path / "elsewhere"))
        foreign = metering_token("alice")
        assert (await served.get("/v1/accounts/alice/billing", headers=_bearer(foreign))).status_code == 401


class TestClaims:
    def _claims(self, data_dir: Path, token: str) -> dict:
        secret = dict(line.split("=", 1) for line in (data_dir / "secrets.env").read_text().splitlines())["jwt_secret"]
        return jwt.decode(token, secret, algorithms=["HS256"])

    def test_a_short_lifetime_by_default_and_no_roles(self, embedded: Path) -> None:
        claims = self._claims(embedded, metering_token("alice"))
        assert claims["sub"] == "alice" and "roles" not in claims
        assert claims["exp"] - claims["iat"] == 60 * 60
        assert abs(claims["iat"] - time.time()) < 60

    def test_minutes_and_roles_repeated_or_in_one_value(self, embedded: Path) -> None:
        repeated = self._claims(
            embedded, metering_token("bob", "--role", "finance", "--role", "platform_admin", "--minutes", "5")
        )
        one_value = self._claims(embedded, metering_token("bob", "--role", "platform_admin,finance"))
        assert repeated["roles"] == one_value["roles"] == ["finance", "platform_admin"]
        assert repeated["exp"] - repeated["iat"] == 5 * 60

    def test_it_signs_with_a_configured_secret(self, embedded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("METERING_JWT_SECRET", "a-configured-secret-long-enough-for-hs256")
        token = metering_token("alice")
        assert jwt.decode(token, "a-configured-secret-long-enough-for-hs256", algorithms=["HS256"])["sub"] == "alice"


class TestRefusals:
    def _refused(self, *args: str) -> str:
        set_settings(None)
        result = CliRunner().invoke(cli, ["token", *args])
        set_settings(None)
        assert result.exit_code == 2, result.output
        assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1, result.output
        return result.stderr

    def test_only_a_public_key_in_production(self, embedded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("METERING_ENVIRONMENT", "production")
        monkeypatch.setenv("METERING_DATABASE_URL", "postgresql+asyncpg://metering@db.invalid/metering")
        monkeypatch.setenv("METERING_SERVICE_TOKENS", "a-real-service-token")
        monkeypatch.setenv("METERING_SECRET_KEY", "a-real-secret-key")
        monkeypatch.setenv("METERING_JWT_PUBLIC_KEY", "-----BEGIN PUBLIC KEY-----\n…\n-----END PUBLIC KEY-----")
        assert "METERING_JWT_PUBLIC_KEY is set" in self._refused("alice")

    def test_only_a_public_key_in_the_embedded_mode(self, embedded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("METERING_JWT_PUBLIC_KEY", "-----BEGIN PUBLIC KEY-----\n…\n-----END PUBLIC KEY-----")
        assert "signed by the platform's private key" in self._refused("alice")

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (("alice", "--role", "admin"), "unknown role 'admin'"),
            (("alice", "--minutes", "0"), "--minutes"),
            (("alice", "--minutes", "100000"), "--minutes"),
            (("not a name",), "not a user name"),
        ],
    )
    def test_bad_values_are_usage_errors(self, embedded: Path, args: tuple[str, ...], message: str) -> None:
        assert message in self._refused(*args)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_says_how_to_get_a_token_and_accepts_it(tmp_path: Path) -> None:
    """End to end, as a newcomer types it: ``metering serve``, then ``metering token alice`` in another shell."""
    env = {key: value for key, value in os.environ.items() if key not in METERING_ENV} | {"COLUMNS": "400"}
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(server.stderr), daemon=True).start()  # type: ignore[arg-type]
    try:
        deadline = time.monotonic() + 60
        while not any("billing page of alice" in line for line in lines):
            assert server.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.1)
        output = "".join(lines)
        assert "user routes need a token: metering token alice" in output
        link = re.search(r"(http://127\.0\.0\.1:\d+/billing/alice\?token=\S+)", output).group(1)
        url = f"http://127.0.0.1:{port}"
        while True:  # the hint is printed just before uvicorn binds the port
            try:
                httpx.get(f"{url}/healthz", timeout=5)
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, "".join(lines)
                time.sleep(0.1)
        token = subprocess.run(
            [sys.executable, "-m", "cli.main", "token", "alice"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.strip()
        billing = httpx.get(f"{url}/v1/accounts/alice/billing", headers=_bearer(token), timeout=10)
        assert billing.status_code == 200 and billing.json()["account"] == "alice", billing.text
        assert httpx.get(f"{url}/v1/accounts/alice/billing", timeout=10).status_code == 401
        page = httpx.get(link, timeout=10, follow_redirects=True)
        assert page.status_code == 200 and "alice" in page.text
    finally:
        server.terminate()
        server.wait(timeout=30)
