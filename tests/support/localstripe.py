"""localstripe, a stateful fake of the Stripe API, as a real server on a free loopback port."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from tests.support.servers import free_port, stop_process

API_KEY = "sk_test_metering"

# localstripe pickles its whole store to one fixed /tmp file on every write, shared by every
# instance on the machine; the tests never reload it, so writing it is switched off.
_LAUNCH = (
    "import sys, localstripe.resources as r; r.Store.dump_to_disk = lambda self: None; "
    "from localstripe.server import start; sys.argv = ['localstripe'] + sys.argv[1:]; start()"
)


@contextmanager
def localstripe_server() -> Iterator[str]:
    """``localstripe --from-scratch`` on a free port; yields its base URL and stops it after."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", _LAUNCH, "--port", str(port), "--from-scratch"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"localstripe exited with {process.returncode}")
            try:
                if httpx.get(f"{base_url}/v1/customers", auth=(API_KEY, ""), timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("localstripe did not start")
            time.sleep(0.05)
        yield base_url
    finally:
        stop_process(process)


def reset(base_url: str) -> None:
    """Forget every object, so each test starts from an empty Stripe account."""
    httpx.delete(f"{base_url}/_config/data", auth=(API_KEY, ""), timeout=5).raise_for_status()


def list_all(base_url: str, resource: str, **params: str) -> list[dict]:
    """Every object of ``resource`` (e.g. ``invoiceitems``), following pagination."""
    found, after = [], None
    while True:
        query = {"limit": "100", **params, **({"starting_after": after} if after else {})}
        page = httpx.get(f"{base_url}/v1/{resource}", params=query, auth=(API_KEY, ""), timeout=5).json()
        found.extend(page["data"])
        if not page["has_more"] or not page["data"]:
            return found
        after = page["data"][-1]["id"]
