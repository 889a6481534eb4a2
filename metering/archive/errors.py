"""Errors of the archive.

ArchiveError (MeteringError)
├── ArchiveRefused   the archive will not start: the engine, or a ledger that does not add up
└── ArchiveMismatch  a written file does not match the database: nothing of that month is dropped
"""

from __future__ import annotations

from metering.errors import MeteringError


class ArchiveError(MeteringError):
    pass


class ArchiveRefused(ArchiveError):
    pass


class ArchiveMismatch(ArchiveError):
    pass
