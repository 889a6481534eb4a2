"""The dialect seam (STYLE.md, "Two engines, one seam"), read off the source.

Where SQLite and PostgreSQL need different SQL, a concept keeps both implementations side by
side (``repository_sqlite.py`` / ``repository_pg.py``) and picks one with ``metering.db.by_dialect``.
Only ``metering/db.py`` asks which engine runs, and the column types of ``metering/models``, which
SQLAlchemy itself adapts per dialect.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("metering", "api", "jobs", "cli")
ALLOWED = {"metering/db.py", "metering/models/base.py"}
# Names that answer "which engine is this?": a call of one of these, or reading one of these attributes.
ENGINE_QUESTIONS = frozenset({"is_sqlite", "dialect_name"})
ENGINE_ATTRIBUTES = frozenset({"dialect"})


def engine_questions(source: str) -> list[str]:
    """``line: what`` for each place ``source`` asks which engine it runs on."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
            if name in ENGINE_QUESTIONS:
                found.append((node.lineno, f"{name}()"))
        elif isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                if isinstance(side, ast.Attribute) and side.attr in ENGINE_ATTRIBUTES:
                    found.append((node.lineno, f"compares .{side.attr}"))
                if isinstance(side, ast.Attribute) and side.attr == "name":
                    inner = side.value
                    if isinstance(inner, ast.Attribute) and inner.attr in ENGINE_ATTRIBUTES:
                        found.append((node.lineno, f"compares .{inner.attr}.name"))
    return [f"{line}: {what}" for line, what in sorted(set(found))]


def test_the_scan_finds_each_kind_of_question() -> None:
    source = (
        "def f(db, session, engine):\n"
        "    if is_sqlite(session): pass\n"
        "    if db.dialect == 'postgresql': pass\n"
        "    if engine.dialect.name != 'sqlite': pass\n"
        "    if dialect_name(session) == 'sqlite': pass\n"
        "    return db.by_dialect(sqlite=1, postgresql=2)\n"
    )
    assert engine_questions(source) == [
        "2: is_sqlite()",
        "3: compares .dialect",
        "4: compares .dialect.name",
        "5: dialect_name()",
    ]


def test_only_the_seam_asks_which_engine_runs() -> None:
    offences = [
        f"{path.relative_to(ROOT).as_posix()}:{question}"
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if path.relative_to(ROOT).as_posix() not in ALLOWED
        for question in engine_questions(path.read_text())
    ]
    assert offences == []
