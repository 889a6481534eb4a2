"""A real PgBouncer in transaction mode in front of the local PostgreSQL, for tests: a non-root process
on a free port, with a pool smaller than its clients, so transactions share server connections."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import make_url

from tests.support.servers import free_port, stop_process

PGBOUNCER = shutil.which("pgbouncer") or next(
    (path for path in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.path.exists(path)), None
)
REQUIRE_PGBOUNCER = os.environ.get("METERING_TEST_REQUIRE_PGBOUNCER") == "1"
# PgBouncer refuses to run as root; under root it runs as this user.
UNPRIVILEGED_USER = "nobody"


def through(url: str, port: int) -> str:
    """``url`` (a SQLAlchemy URL of the local PostgreSQL) by way of the PgBouncer listening on ``port``."""
    return make_url(url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)


@contextmanager
def pgbouncer(*, upstream_host: str = "127.0.0.1", upstream_port: int = 5432, pool_size: int = 2) -> Iterator[int]:
    """PgBouncer in transaction mode, ``pool_size`` server connections per database and user; yields its port."""
    if PGBOUNCER is None:
        raise FileNotFoundError("pgbouncer is not installed")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="metering-pgbouncer-") as folder:
        run_as = UNPRIVILEGED_USER if os.geteuid() == 0 else None
        if run_as is not None:
            entry = pwd.getpwnam(run_as)
            os.chown(folder, entry.pw_uid, entry.pw_gid)
        users = Path(folder, "userlist.txt")
        users.write_text('"postgres" ""\n')
        config = Path(folder, "pgbouncer.ini")
        config.write_text(
            "[databases]\n"
            f"* = host={upstream_host} port={upstream_port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {users}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {pool_size}\n"
            "max_client_conn = 1000\n"
            f"logfile = {folder}/pgbouncer.log\n"
        )
        for path in (users, config):
            path.chmod(0o644)
        process = subprocess.Popen(
            [PGBOUNCER, str(config)], user=run_as, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            _wait_until_listening(port, process, Path(folder, "pgbouncer.log"))
            yield port
        finally:
            stop_process(process)


def _wait_until_listening(port: int, process: subprocess.Popen, log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            text = log.read_text() if log.exists() else ""
            raise RuntimeError(f"pgbouncer exited with {process.returncode}: {text[-2000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"pgbouncer did not listen on port {port} within {timeout}s")
