"""A real nginx (Debian's package) on loopback for the deployment tests: the shipped configuration
rendered as its header says, started in the foreground as a user that is not root, in a directory
of its own.

Without nginx (or the tools the configuration's documentation uses: envsubst, jq, curl) a test
is skipped, unless ``METERING_TEST_REQUIRE_NGINX=1``, when it fails instead (CI sets it).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = REPO_ROOT / "deploy" / "nginx" / "metering-auth.conf"
SHIPPER = REPO_ROOT / "deploy" / "nginx" / "ship-usage.sh"
REQUIRE_NGINX = os.environ.get("METERING_TEST_REQUIRE_NGINX") == "1"
# Debian installs nginx in /usr/sbin, which a user's PATH may lack.
NGINX_PATHS = ("nginx", "/usr/sbin/nginx")
TOOLS = {"envsubst": "gettext-base", "jq": "jq", "curl": "curl", "split": "coreutils"}
# Who runs nginx when the tests run as root: nginx is an ordinary user's process here.
UNPRIVILEGED_USER = "nobody"

MAIN_CONFIG = """\
daemon off;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log info;
events {{
    worker_connections 64;
}}
http {{
    access_log {directory}/access.log;
    client_body_temp_path {directory}/client_body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    include {directory}/metering-auth.conf;
}}
"""


def nginx_binary() -> str | None:
    for candidate in NGINX_PATHS:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def missing_tools() -> str | None:
    """Why the nginx tests cannot run here, or None."""
    if nginx_binary() is None:
        return "nginx is not installed (apt-get install -y nginx)"
    absent = [f"{tool} (apt-get install -y {package})" for tool, package in TOOLS.items() if not shutil.which(tool)]
    if absent:
        return "missing: " + ", ".join(absent)
    return None


def require_nginx() -> None:
    """Skip the calling test without nginx and its tools; fail it instead when they are required."""
    reason = missing_tools()
    if reason is None:
        return
    if REQUIRE_NGINX:
        pytest.fail(f"nginx is required (METERING_TEST_REQUIRE_NGINX=1): {reason}")
    pytest.skip(reason)


def documented_envsubst_variables(template: str) -> str:
    """The variable list of the ``envsubst '...'`` command in the template's header."""
    found = re.search(r"envsubst '([^']+)'", template)
    assert found, "the template's header shows no envsubst command"
    return found.group(1)


def render(values: dict[str, str]) -> str:
    """The template filled in by the command its header gives (``envsubst`` with the variables named)."""
    template = TEMPLATE.read_text()
    rendered = subprocess.run(
        ["envsubst", documented_envsubst_variables(template)],
        input=template,
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **values},
        timeout=30,
    ).stdout
    left = sorted(set(re.findall(r"\$\{(\w+)\}", rendered)))
    assert left == [], f"placeholders left unfilled: {left}"
    return rendered


def _owner() -> tuple[int, int] | None:
    """(uid, gid) to run nginx as, when this process is root; None to run it as ourselves."""
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam(UNPRIVILEGED_USER)
    return entry.pw_uid, entry.pw_gid


@contextmanager
def nginx_directory() -> Iterator[Path]:
    """A directory the nginx user owns (pytest's temporary directories are private to root)."""
    directory = Path(tempfile.mkdtemp(prefix="metering-nginx-"))
    try:
        owner = _owner()
        if owner is not None:
            os.chown(directory, *owner)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def write_owned(path: Path, text: str) -> Path:
    path.write_text(text)
    owner = _owner()
    if owner is not None:
        os.chown(path, *owner)
    return path


@contextmanager
def nginx_running(directory: Path, site_config: str, port: int) -> Iterator[subprocess.Popen]:
    """nginx in the foreground with ``site_config`` (http level) until the block ends; raises with its
    error log when it does not start listening on ``port``."""
    write_owned(directory / "metering-auth.conf", site_config)
    config = write_owned(directory / "nginx.conf", MAIN_CONFIG.format(directory=directory))
    binary = nginx_binary()
    assert binary is not None
    command = [binary, "-p", f"{directory}/", "-c", str(config), "-e", str(directory / "error.log")]
    owner = _owner()
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        user=owner[0] if owner else None,
        group=owner[1] if owner else None,
        extra_groups=[] if owner else None,
    )
    try:
        _wait_listening(port, process, directory)
        yield process
    finally:
        process.send_signal(signal.SIGQUIT)  # graceful: workers finish their requests
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_listening(port: int, process: subprocess.Popen, directory: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited with {process.returncode}: {error_log(directory, process)}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"nginx did not listen on {port} within {timeout}s: {error_log(directory, process)}")


def error_log(directory: Path, process: subprocess.Popen | None = None) -> str:
    path = directory / "error.log"
    text = path.read_text() if path.exists() else ""
    if process is not None and process.poll() is not None and process.stderr is not None:
        text += process.stderr.read()
    return text.strip()
