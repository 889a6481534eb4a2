"""Reading server-rendered pages in tests: a standard-library HTML parser keyed on ``data-*`` attributes,
and the org month that the page tests (HTTP and browser) open.

Each value is read from its ``data-nano-usd`` / ``data-cents`` / ``data-value`` attribute,
so a test compares it exactly with the API's JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from html.parser import HTMLParser

import httpx

from metering.db import Database
from metering.invoicing.service import invoicing_service
from metering.periods import current_period, period_bounds, previous_period, utcnow
from tests.factories.billing_data import as_user, ingest, price, seed_world, usage

ORG_ADMIN = as_user("alice")
ORG_LIMIT_NANO_USD = 3_000_000_000
VOID_TAGS = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
)


@dataclass
class Element:
    tag: str
    attrs: dict[str, str | None]
    section: str | None
    invoice: str | None
    member: str | None
    parent: Element | None
    # All text inside the element, and the text directly in it (not in a child element).
    text: list[str] = field(default_factory=list)
    own_text: list[str] = field(default_factory=list)

    @property
    def value(self) -> int | str | None:
        """The machine-readable value: nano-USD, cents or a count when given, None for null, else the text."""
        for name in ("data-nano-usd", "data-cents", "data-value"):
            if name in self.attrs:
                return int(self.attrs[name])
        if self.attrs.get("data-null") == "true":
            return None
        return "".join(self.text).strip()


class PageParser(HTMLParser):
    """Every element of a page with the section, invoice row and member it sits in."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[Element] = []
        self.elements: list[Element] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        parent = self.open[-1] if self.open else None
        element = Element(
            tag,
            values,
            section=values.get("id") if tag in ("section", "header") else (parent.section if parent else None),
            invoice=values.get("data-invoice-id") or (parent.invoice if parent else None),
            member=values.get("data-member") or (parent.member if parent else None),
            parent=parent,
        )
        self.elements.append(element)
        if tag not in VOID_TAGS:
            self.open.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in VOID_TAGS:
            self.open.pop()

    def handle_endtag(self, tag: str) -> None:
        while self.open:
            if self.open.pop().tag == tag:
                return

    def handle_data(self, data: str) -> None:
        for element in self.open:
            element.text.append(data)
        if self.open:
            self.open[-1].own_text.append(data)


def amounts_without_value(elements: list[Element]) -> list[str]:
    """Dollar amounts shown in text whose element (or, for a tooltip, its parent) has no machine-readable value."""
    missing = []
    for e in elements:
        shown = "".join(e.own_text)
        if "$" not in shown:
            continue
        carriers = [e, e.parent] if e.tag == "title" and e.parent is not None else [e]
        if not any("data-nano-usd" in c.attrs or "data-cents" in c.attrs for c in carriers):
            missing.append(shown.strip())
    return missing


def parse(html: str) -> list[Element]:
    parser = PageParser()
    parser.feed(html)
    return parser.elements


def page_fields(elements: list[Element], *sections: str) -> dict[str, int | str | None]:
    """``data-field`` values of the account header and summary sections (not chart or invoice rows)."""
    sections = sections or ("account", "summary", "limit", "providers")
    return {e.attrs["data-field"]: e.value for e in elements if "data-field" in e.attrs and e.section in sections}


def chart_points(elements: list[Element]) -> dict[str, dict[str, tuple[int, int]]]:
    """Member → day → (priced cost, requests) of the SVG chart's marks."""
    points: dict[str, dict[str, tuple[int, int]]] = {}
    for e in elements:
        if e.tag == "g" and "data-member" in e.attrs:
            points.setdefault(e.attrs["data-member"], {})
        if e.tag == "circle":
            points[e.member][e.attrs["data-day"]] = (int(e.attrs["data-nano-usd"]), int(e.attrs["data-requests"]))
    return points


def member_totals(elements: list[Element]) -> dict[str, dict[str, int]]:
    totals: dict[str, dict[str, int]] = {}
    for e in elements:
        if e.section == "usage" and e.member and "data-field" in e.attrs:
            totals.setdefault(e.member, {})[e.attrs["data-field"]] = e.value
    return totals


def invoice_rows(elements: list[Element]) -> dict[int, dict[str, int | str | None]]:
    rows: dict[int, dict[str, int | str | None]] = {}
    for e in elements:
        if e.invoice and "data-field" in e.attrs and not e.attrs["data-field"].startswith("line_"):
            rows.setdefault(int(e.invoice), {})[e.attrs["data-field"]] = e.value
    return rows


def moment_in_period(days_ago: int, minutes: int = 0) -> datetime:
    """A moment ``days_ago`` days back, kept inside the current period."""
    start, _ = period_bounds(current_period())
    return max(utcnow() - timedelta(days=days_ago, minutes=minutes), start)


async def seed_org_month(client: httpx.AsyncClient, db: Database) -> None:
    """acme (team, 2 seats): alice admin, bob write, carol read, all with priced usage past the credits,
    a spending limit and a disabled provider; last period closed into an invoice."""
    await seed_world(db)
    last = period_bounds(previous_period(current_period()))[0] + timedelta(days=3, hours=5)
    await ingest(
        client,
        [
            usage("p1", user="alice", bill_to="acme", started_at=last),
            usage("p2", user="bob", bill_to="acme", started_at=last + timedelta(days=1)),
            usage("c1", user="alice", bill_to="acme", started_at=moment_in_period(2, 30)),
            usage("c2", user="bob", bill_to="acme", started_at=moment_in_period(1, 20)),
            usage("c3", user="carol", bill_to="acme", started_at=moment_in_period(0, 10)),
            usage("c4", user="bob", bill_to="acme", started_at=moment_in_period(0, 5)),
            usage("c5", user="carol", bill_to="acme", started_at=moment_in_period(0, 1), custom_key=True),
        ],
    )
    await price(db, {"p1": 3_000_000_000, "p2": 2_234_567_891})
    await price(db, {"c1": 1_500_000_000, "c2": 2_750_000_001, "c3": 1_234_567_890})
    async with db.session_scope() as session:
        await invoicing_service.close_period(session, period=previous_period(current_period()), force=True)
    limit = await client.put(
        "/v1/accounts/acme/billing/spending-limit", json={"limit_nano_usd": ORG_LIMIT_NANO_USD}, headers=ORG_ADMIN
    )
    disabled = await client.put(
        "/v1/orgs/acme/billing/disabled-providers", json={"providers": ["fireworks-ai"]}, headers=ORG_ADMIN
    )
    assert (limit.status_code, disabled.status_code) == (200, 200)
