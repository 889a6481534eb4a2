"""``metering demo`` without ``--no-serve``: after the summary its servers keep answering, the client
snippets it prints work as pasted, and SIGINT (Ctrl-C) stops everything with exit code 0."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from tests.demo.conftest import DEMO_TIME_LIMIT_SECONDS

READY_LINE = "Ctrl-C stops them"


def _read_lines(process: subprocess.Popen, lines: list[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)


def _snippets(output: str) -> dict[str, str]:
    """The client snippets as printed, from each one's opening comment to the next one or the closing line."""
    hub = output.index("# huggingface_hub:")
    openai = output.index("# openai:")
    return {"huggingface_hub": output[hub:openai], "openai": output[openai : output.index("Servers and the scheduler")]}


def _requests_this_month(metering: str, account: str, token: str, *, at_least: int) -> set[tuple[str, str]]:
    """(user, provider) of the account's requests this month, once the router's sender delivered ``at_least``."""
    period = datetime.now(UTC).strftime("%Y-%m")
    deadline = time.monotonic() + 20
    while True:
        response = httpx.get(
            f"{metering}/v1/accounts/{account}/requests",
            params={"period": period},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        items = response.json()["items"]
        if len(items) >= at_least or time.monotonic() > deadline:
            assert len(items) == at_least, items
            return {(item["user"], item["provider"]) for item in items}
        time.sleep(0.2)


def test_serves_until_interrupted(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "cli.main", "demo", "--data-dir", str(tmp_path / "data")]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "400"}
    )
    lines: list[str] = []
    threading.Thread(target=_read_lines, args=(process, lines), daemon=True).start()
    try:
        deadline = time.monotonic() + DEMO_TIME_LIMIT_SECONDS
        while not any(READY_LINE in line for line in lines):
            assert process.poll() is None, "".join(lines)[-4000:]
            assert time.monotonic() < deadline, "no ready line:\n" + "".join(lines)[-4000:]
            time.sleep(0.2)
        output = "".join(lines)
        docs = re.search(r"API docs\s+(http://127\.0\.0\.1:\d+)/docs", output).group(1)
        router = re.search(r"POST (http://127\.0\.0\.1:\d+)/v1/chat/completions", output).group(1)
        page = re.search(r"acme\s+(http://\S+/billing/acme\?period=\d{4}-\d{2}&token=\S+)", output).group(1)

        assert httpx.get(f"{docs}/docs", timeout=10).status_code == 200
        answer = httpx.post(
            f"{router}/v1/chat/completions",
            timeout=10,
            headers={"Authorization": "Bearer hf_demo_ivan", "X-HF-Bill-To": "initech"},
            json={
                "model": "meta-llama/Llama-3.3-70B-Instruct",
                "provider": "fireworks-ai together",
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
        assert answer.status_code == 200, answer.text
        assert (answer.headers["X-Inference-Provider"], answer.headers["X-Billing-Account"]) == ("together", "initech")
        token = page.rsplit("token=", 1)[1]
        billing = httpx.get(
            f"{docs}/v1/accounts/acme/billing", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert billing.status_code == 200 and billing.json()["account"] == "acme"

        snippets = _snippets(output)
        assert [f"{router}/v1" in snippet for snippet in snippets.values()] == [True, True]
        for client, snippet in snippets.items():
            pasted = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=120)
            assert pasted.returncode == 0, f"{client}:\n{snippet}\n{pasted.stderr[-2000:]}"
            assert pasted.stdout == "Hello from the simulator.\n", client
        initech = re.search(r"initech\s+http://\S+/billing/initech\?period=\d{4}-\d{2}&token=(\S+)", output).group(1)
        assert _requests_this_month(docs, "initech", initech, at_least=3) == {("ivan", "together")}

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0, "".join(lines)[-4000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
