"""Standard Webhooks signatures as the specification defines them, the URL rules, and their settings."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
from datetime import UTC, datetime
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from metering.webhooks import urls
from metering.webhooks.errors import UnsafeWebhookUrl
from metering.webhooks.signing import new_secret, signed_headers
from metering.webhooks.urls import check_webhook_url, non_public_reason
from tests.conftest import make_settings

AT = datetime(2026, 12, 7, 9, 0, 0, tzinfo=UTC)


class TestSigning:
    def test_the_signature_is_the_specifications_hmac(self) -> None:
        secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
        body = b'{"type":"credits.threshold"}'

        headers = signed_headers(secret=secret, webhook_id="evt_1", at=AT, body=body)

        timestamp = str(int(AT.timestamp()))
        digest = hmac.new(b"k" * 32, f"evt_1.{timestamp}.".encode() + body, hashlib.sha256).digest()
        assert headers == {
            "webhook-id": "evt_1",
            "webhook-timestamp": timestamp,
            "webhook-signature": "v1," + base64.b64encode(digest).decode(),
        }

    def test_new_secrets_are_distinct_and_verify(self) -> None:
        first, second = new_secret(), new_secret()
        assert first != second and first.startswith("whsec_")
        assert len(base64.b64decode(first.removeprefix("whsec_"))) == 32
        now = datetime.now(UTC)
        headers = signed_headers(secret=first, webhook_id="evt_2", at=now, body=b"{}")
        assert Webhook(first).verify(b"{}", headers) == {}


class TestAddresses:
    @pytest.mark.parametrize(
        ("address", "reason"),
        [
            ("127.0.0.1", "a loopback address"),
            ("::1", "a loopback address"),
            ("::ffff:10.0.0.1", "a private address"),
            ("10.0.0.1", "a private address"),
            ("172.16.5.4", "a private address"),
            ("fd00::1", "a private address"),
            ("169.254.169.254", "a link-local address"),
            ("fe80::1", "a link-local address"),
            ("0.0.0.0", "the unspecified address, which reaches this machine"),
            ("100.64.0.1", "not a public address"),
            ("224.0.0.1", "not a public address"),
            ("93.184.215.14", None),
            ("2606:4700::1111", None),
        ],
    )
    def test_only_public_addresses_pass(self, address: str, reason: str | None) -> None:
        assert non_public_reason(ipaddress.ip_address(address)) == reason


class TestPinning:
    async def test_a_name_is_sent_to_the_address_that_was_checked(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # Stands in for a public DNS answer, which this offline machine cannot get.
        async def resolve(host: str, port: int) -> list[ipaddress.IPv4Address]:
            assert (host, port) == ("hooks.acme.example", 8443)
            return [ipaddress.IPv4Address("93.184.215.14")]

        monkeypatch.setattr(urls, "resolve", resolve)

        target = await check_webhook_url("https://hooks.acme.example:8443/metering?x=1", allow_private=False)

        assert str(target.url) == "https://93.184.215.14:8443/metering?x=1"
        assert (target.host, target.host_header) == ("hooks.acme.example", "hooks.acme.example:8443")

    async def test_one_private_address_among_public_ones_is_refused(self, monkeypatch: pytest.MonkeyPatch) -> None:
        async def resolve(host: str, port: int) -> list[ipaddress.IPv4Address]:
            return [ipaddress.IPv4Address("93.184.215.14"), ipaddress.IPv4Address("10.0.0.7")]

        monkeypatch.setattr(urls, "resolve", resolve)
        with pytest.raises(UnsafeWebhookUrl, match=r"10\.0\.0\.7, a private address"):
            await check_webhook_url("https://hooks.acme.example/", allow_private=False)

    async def test_allowed_private_urls_are_sent_as_given(self) -> None:
        target = await check_webhook_url("http://localhost:8080/hooks", allow_private=True)
        assert (str(target.url), target.host) == ("http://localhost:8080/hooks", None)


class TestSettings:
    def test_a_platform_url_needs_a_standard_webhooks_secret(self, tmp_path: Path) -> None:
        for secret in ("", "not-whsec", "whsec_" + base64.b64encode(b"short").decode(), "whsec_???"):
            with pytest.raises(ValueError, match="METERING_WEBHOOK_SECRET"):
                make_settings(
                    "sqlite+aiosqlite:///x.db", tmp_path, webhook_url="https://p.example/", webhook_secret=secret
                )

    def test_the_lease_must_outlast_an_attempt(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="must exceed"):
            make_settings("sqlite+aiosqlite:///x.db", tmp_path, webhook_timeout_seconds=10, webhook_lease_seconds=10)

    def test_default_thresholds_are_bounded_and_sorted(self, tmp_path: Path) -> None:
        settings = make_settings("sqlite+aiosqlite:///x.db", tmp_path, alert_credits_percent=[90, 10, 10])
        assert settings.alert_credits_percent == [10, 90]
        with pytest.raises(ValueError, match="whole percentages"):
            make_settings("sqlite+aiosqlite:///x.db", tmp_path, alert_spending_limit_percent=[0])
