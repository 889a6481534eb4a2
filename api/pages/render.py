"""HTML rendering of the pages: one autoescaping Jinja environment, money filters, strict security headers.

Every value reaches the markup through Jinja's autoescape, so a name holding ``<`` or
``"`` is shown, never interpreted. Money is formatted from integer nano-USD or cents only.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.responses import HTMLResponse

from api.errors import status_for
from metering.errors import MeteringError
from metering.money import format_cents, format_usd

# The pages load nothing from elsewhere: no script at all, styles inline, the chart inline SVG.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
ERROR_TITLES = {
    401: "Sign-in required",
    403: "Not allowed",
    404: "Not found",
    422: "Invalid request",
}


@cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("api.pages", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["usd"] = format_usd
    env.filters["cents"] = format_cents
    return env


def render_page(template: str, *, status_code: int = 200, **context: Any) -> HTMLResponse:
    html = environment().get_template(template).render(**context)
    return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)


def error_page(error: MeteringError) -> HTMLResponse:
    """The page twin of the API's error body: the same status from ``api.errors``, as HTML."""
    status = status_for(error)
    return render_page(
        "error.html",
        status_code=status,
        status=status,
        title=ERROR_TITLES.get(status, "Something went wrong"),
        error=type(error).__name__,
        detail=error.detail,
    )
