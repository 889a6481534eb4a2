"""Whole cents for invoice lines: largest-remainder apportionment, so lines sum to the invoice."""

from __future__ import annotations

from collections.abc import Sequence

from metering.money import NANO_PER_CENT


def apportion_cents(amounts_nano_usd: Sequence[int], total_cents: int) -> list[int]:
    """Cents per line summing exactly to ``total_cents``.

    Each line gets the floor of its own cents, then the cents still missing (the
    lines' sub-cent parts plus the carried remainder) go one each to the lines with
    the largest sub-cent parts, earliest line first on ties. So a line is never more
    than one cent above its floor. ``total_cents`` must be
    ``(sum(amounts) + carried_in) // 10^7`` with ``0 <= carried_in < 10^7``.
    """
    floors = [amount // NANO_PER_CENT for amount in amounts_nano_usd]
    missing = total_cents - sum(floors)
    if not 0 <= missing <= len(floors):
        raise ValueError(f"{total_cents} cents cannot be apportioned over {list(amounts_nano_usd)}")
    order = sorted(range(len(floors)), key=lambda i: (-(amounts_nano_usd[i] % NANO_PER_CENT), i))
    for index in order[:missing]:
        floors[index] += 1
    return floors
