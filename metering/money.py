"""nano-USD helpers: parsing prices from outside, formatting, cents with a carried remainder.

Money is a Python ``int`` of nano-USD (10^-9 USD) everywhere. The one rounding
rule for prices that arrive as decimal strings is half-up to the nano.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

NANO_PER_USD = 1_000_000_000
NANO_PER_CENT = 10_000_000


def usd_to_nano(value: str | Decimal | int) -> int:
    """Parse a USD amount given as a decimal string, Decimal or int; floats are refused."""
    if isinstance(value, bool) or isinstance(value, float):
        raise TypeError("money never arrives as a float or bool")
    try:
        amount = Decimal(value) if not isinstance(value, Decimal) else value
    except InvalidOperation as exc:
        raise ValueError(f"not a decimal amount: {value!r}") from exc
    if not amount.is_finite():
        raise ValueError(f"not a finite amount: {value!r}")
    return int((amount * NANO_PER_USD).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def format_usd(nano_usd: int) -> str:
    """``1_200_000`` → ``"$0.001200000"``: exact, nine decimals, never a float."""
    sign = "-" if nano_usd < 0 else ""
    whole, frac = divmod(abs(nano_usd), NANO_PER_USD)
    return f"{sign}${whole:,}.{frac:09d}"


def cents_with_remainder(nano_usd: int, carried_nano_usd: int = 0) -> tuple[int, int]:
    """Whole cents to invoice and the sub-cent nano-USD carried to the next period.

    ``cents * 10^7 + remainder == nano_usd + carried_nano_usd`` always holds.
    """
    total = nano_usd + carried_nano_usd
    cents, remainder = divmod(total, NANO_PER_CENT)
    return cents, remainder


def duration_cost_nano(duration_ms: int, price_nano_usd_per_second: int) -> int:
    """Compute-time price: milliseconds × nano-USD per second, rounded half-up to the nano."""
    numerator = duration_ms * price_nano_usd_per_second
    quotient, remainder = divmod(numerator, 1000)
    return quotient + (1 if remainder * 2 >= 1000 else 0)


def tokens_cost_nano(tokens: int, nano_usd_per_million: int) -> int:
    """Token price: tokens × nano-USD per million tokens, rounded half-up to the nano."""
    quotient, remainder = divmod(tokens * nano_usd_per_million, 1_000_000)
    return quotient + (1 if remainder * 2 >= 1_000_000 else 0)
