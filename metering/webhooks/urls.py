"""Where webhooks may go: http(s) URLs of public hosts, checked at registration and again at every delivery.

Refused: other schemes, credentials in the URL, hosts that do not resolve, and hosts that
resolve to any loopback, private, link-local or otherwise non-public address (all addresses
of a name are checked, so a second record cannot slip one in). DNS can change between
registration and delivery, and between a check and the connection, so a delivery connects to
the very address it checked (``WebhookTarget.url``), naming the host in ``Host`` and in TLS
(SNI and certificate). ``METERING_WEBHOOK_ALLOW_PRIVATE_URLS=true`` lifts the address rules
(tests, closed networks); the scheme rule stays.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

import httpx

from metering.webhooks.errors import UnsafeWebhookUrl

MAX_URL_LENGTH = 2048
RESOLVE_TIMEOUT_SECONDS = 5.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    """What to connect to: ``url``, with the checked address in place of the name when ``host`` is set."""

    url: httpx.URL
    # The name the URL gave, for TLS (SNI and the certificate); None when the URL is sent as given.
    host: str | None = None
    # The URL's own host[:port], for the Host header of a pinned request.
    host_header: str | None = None


def parse_webhook_url(url: str) -> httpx.URL:
    """``url`` as an http(s) URL with a host and no credentials, or ``UnsafeWebhookUrl`` saying why not."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeWebhookUrl(f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise UnsafeWebhookUrl(f"not a URL: {exc}") from exc
    if parsed.scheme not in ("http", "https"):
        raise UnsafeWebhookUrl(f"webhooks are sent over http or https, not {parsed.scheme or 'no scheme'!r}")
    if not parsed.host:
        raise UnsafeWebhookUrl("the URL names no host")
    if parsed.userinfo:
        raise UnsafeWebhookUrl("the URL carries credentials; authenticate the webhook by its signature instead")
    return parsed


def non_public_reason(address: IPAddress) -> str | None:
    """Why webhooks may not go to ``address``, or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return "a loopback address"
    if address.is_unspecified:
        return "the unspecified address, which reaches this machine"
    if address.is_link_local:
        return "a link-local address"
    if address.is_private:
        return "a private address"
    if not address.is_global or address.is_multicast:
        return "not a public address"
    return None


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (a literal address resolves to itself)."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_SECONDS):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as exc:
        raise UnsafeWebhookUrl(f"the host {host!r} does not resolve") from exc
    # The first element of a sockaddr is the address (IPv6 ones also carry flow and scope).
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    if not addresses:
        raise UnsafeWebhookUrl(f"the host {host!r} does not resolve")
    return addresses


async def check_webhook_url(url: str, *, allow_private: bool) -> WebhookTarget:
    """Where a webhook to ``url`` may be sent now, or ``UnsafeWebhookUrl`` saying why it may not."""
    parsed = parse_webhook_url(url)
    if allow_private:
        return WebhookTarget(parsed)
    host = parsed.host
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    addresses = await resolve(host, port)
    for address in addresses:
        reason = non_public_reason(address)
        if reason is not None:
            raise UnsafeWebhookUrl(
                f"the host {host!r} resolves to {address}, {reason}; webhooks go to public hosts only"
            )
    if _is_address(host):
        return WebhookTarget(parsed)
    pinned = parsed.copy_with(host=str(addresses[0]))
    return WebhookTarget(pinned, host=host, host_header=parsed.netloc.decode("ascii"))


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
