"""The transaction rule (STYLE.md, "Transactions"), read off the source.

Ordinary routes take the request's session (``api.deps.SessionDep``), which commits once;
services and repositories only flush. Only the named entry points below open or commit
transactions of their own, and each one's module docstring says so.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Calls that open or commit a transaction: a session scope, a bare session, a commit.
TRANSACTION_CALLS = frozenset({"session_scope", "sessionmaker", "commit"})

# The request's own transaction, and the routes that are entry points of their own.
API_ALLOWED = {"api/deps.py"}
ROUTE_ENTRY_POINTS = {
    "api/routes/authorize.py",  # each decision its own transaction; the fast lane runs before the framework
    "api/routes/authorize_subrequest.py",  # the same decision for a proxy's auth subrequest: its own transaction
    "api/routes/exports.py",  # streamed after the route has returned
    "api/routes/usage.py",  # ingest's group commit
}
METERING_ALLOWED = {"metering/db.py"}
METERING_ENTRY_POINTS = {
    "metering/archive/service.py",
    "metering/authorize/service.py",
    "metering/collection/batch_scope.py",
    "metering/exports/copy_repository.py",
    "metering/exports/repository.py",
    "metering/invoicing/stripe_sync.py",
    "metering/ledger/verify.py",
    "metering/reconciliation/service.py",  # a statement staged in one transaction per batch of lines, then compared
    "metering/sample_data.py",
    "metering/hot_path/group_commit.py",
    "metering/top_ups/service.py",
    "metering/usage/service.py",
}


def transaction_calls(source: str) -> list[str]:
    """``line: name()`` for each call in ``source`` that opens or commits a transaction."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        if name in TRANSACTION_CALLS:
            found.append((node.lineno, name))
    return [f"{line}: {name}()" for line, name in sorted(found)]


def offences(package: str, allowed: set[str]) -> list[str]:
    return [
        f"{path.relative_to(ROOT).as_posix()}:{call}"
        for path in sorted((ROOT / package).rglob("*.py"))
        if path.relative_to(ROOT).as_posix() not in allowed
        for call in transaction_calls(path.read_text())
    ]


def test_the_scan_finds_each_kind_of_call() -> None:
    source = (
        "async def f(db, session):\n"
        "    async with db.session_scope() as s:\n"
        "        await s.commit()\n"
        "    async with db.sessionmaker() as bare:\n"
        "        await session.flush()\n"
    )
    assert transaction_calls(source) == ["2: session_scope()", "3: commit()", "4: sessionmaker()"]


def test_routes_take_the_request_session() -> None:
    """A route that needs transactions of its own joins ``ROUTE_ENTRY_POINTS`` and says why."""
    assert offences("api", API_ALLOWED | ROUTE_ENTRY_POINTS) == []


def test_services_and_repositories_only_flush() -> None:
    """A use case that needs transactions of its own joins ``METERING_ENTRY_POINTS`` and says why."""
    assert offences("metering", METERING_ALLOWED | METERING_ENTRY_POINTS) == []


@pytest.mark.parametrize("module", sorted(ROUTE_ENTRY_POINTS | METERING_ENTRY_POINTS))
def test_each_entry_point_says_it_is_one(module: str) -> None:
    docstring = ast.get_docstring(ast.parse((ROOT / module).read_text())) or ""
    assert "entry point" in " ".join(docstring.split()), f"{module}: the docstring should name it an entry point"
