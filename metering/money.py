"""nano-USD helpers: the one rounding rule, formatting, cents with a carried remainder.

Money is a Python ``int`` of nano-USD (10^-9 USD) everywhere. Wherever an amount is divided
(a price per second or per million tokens, a running mean, dollars shown to fewer decimals)
the quotient is rounded half up by ``div_half_up``, with integers only.
"""

from __future__ import annotations

NANO_PER_USD = 1_000_000_000
NANO_PER_CENT = 10_000_000
_NANO_DECIMALS = 9


def div_half_up(numerator: int, denominator: int) -> int:
    """``numerator / denominator`` rounded half up (ties towards +inf), for either sign of ``numerator``.

    ``denominator`` is positive.
    """
    quotient, remainder = divmod(numerator, denominator)
    return quotient + (1 if remainder * 2 >= denominator else 0)


def format_usd(nano_usd: int, *, decimals: int = _NANO_DECIMALS, trim: bool = False) -> str:
    """``1_200_000`` → ``"$0.001200000"``: dollars with thousands separators, exact at nine decimals.

    Fewer ``decimals`` round half up (``format_usd(1_234_567_890, decimals=6)`` → ``"$1.234568"``);
    ``trim`` drops trailing zeros, and the point with them (``"$0.5"``, ``"$2"``). Never a float.
    """
    if not 0 <= decimals <= _NANO_DECIMALS:
        raise ValueError(f"decimals must be 0 to {_NANO_DECIMALS}, got {decimals}")
    units = div_half_up(nano_usd, 10 ** (_NANO_DECIMALS - decimals))
    sign = "-" if units < 0 else ""
    whole, fraction = divmod(abs(units), 10**decimals)
    digits = f"{fraction:0{decimals}d}" if decimals else ""
    if trim:
        digits = digits.rstrip("0")
    return f"{sign}${whole:,}" + (f".{digits}" if digits else "")


def format_cents(cents: int) -> str:
    """``123456`` → ``"$1,234.56"``."""
    return format_usd(cents * NANO_PER_CENT, decimals=2)


def cents_with_remainder(nano_usd: int, carried_nano_usd: int = 0) -> tuple[int, int]:
    """Whole cents to invoice and the sub-cent nano-USD carried to the next period.

    ``cents * 10^7 + remainder == nano_usd + carried_nano_usd`` always holds.
    """
    total = nano_usd + carried_nano_usd
    cents, remainder = divmod(total, NANO_PER_CENT)
    return cents, remainder


def duration_cost_nano(duration_ms: int, price_nano_usd_per_second: int) -> int:
    """Compute-time price: milliseconds × nano-USD per second, rounded half-up to the nano."""
    return div_half_up(duration_ms * price_nano_usd_per_second, 1000)


def tokens_cost_nano(tokens: int, nano_usd_per_million: int) -> int:
    """Token price: tokens × nano-USD per million tokens, rounded half-up to the nano."""
    return div_half_up(tokens * nano_usd_per_million, 1_000_000)
