"""The month's billing summary: read back from Metering's API, printed as tables, written as JSON.

Account figures come from ``GET /v1/accounts/{name}/billing`` and ``/invoices``; provider
figures from the finance exports (``provider-payables``: one payable entry per priced
request; ``unpriced``: quarantined and unpriced requests). What only the router saw
(requests sent, refusals by reason, routes taken) comes from the clients' log.
The JSON holds exact nano-USD; the tables round to the micro-dollar for reading.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
from rich.console import Console
from rich.table import Table

from demo.platform import Platform
from demo.providers import CHAT_MODEL, PROVIDERS
from demo.scenario import ACCOUNTS, TrafficLog, user_token
from metering.money import NANO_PER_USD

MONEY_FIELDS = ("credits_granted_nano_usd", "credits_used_nano_usd", "payg_nano_usd", "written_off_nano_usd")


async def gather_summary(platform: Platform, *, period: str, log: TrafficLog, close_period: str) -> dict:
    accounts = {}
    for account in ACCOUNTS:
        billing = await platform.billing(account.name, period)
        invoice = next((item for item in await platform.invoices(account.name) if item["period"] == period), None)
        accounts[account.name] = {
            "kind": account.kind, "plan": account.plan, "seats": account.seats, "admin": account.admin,
            "requests": log.requests[account.name], "refusals": dict(sorted(log.refusals[account.name].items())),
            **{name: billing[name] for name in MONEY_FIELDS},
            "pending_requests": billing["pending_requests"],
            "invoice_cents": invoice["amount_cents"] if invoice else None,
            "invoice_status": invoice["status"] if invoice else None,
        }
    payables = {row["provider_id"]: row for row in await platform.export_rows("provider-payables", period)}
    unpriced_rows = await platform.export_rows("unpriced", period)
    never_charged = Counter((row["provider_id"], row["status"]) for row in unpriced_rows)
    providers = {
        spec.id: {
            "pricing": spec.pricing,
            "routed": log.routed[spec.id],
            "custom_key": log.routed_custom_key[spec.id],
            "priced": payables.get(spec.id, {}).get("entries", 0),
            "quarantined": never_charged[(spec.id, "quarantined")],
            "unpriced": never_charged[(spec.id, "unpriced")],
            "payable_nano_usd": payables.get(spec.id, {}).get("payable_nano_usd", 0),
        }
        for spec in PROVIDERS
    }
    totals = {name: sum(a[name] for a in accounts.values()) for name in MONEY_FIELDS}
    totals["invoice_cents"] = sum(a["invoice_cents"] or 0 for a in accounts.values())
    totals["payable_nano_usd"] = sum(p["payable_nano_usd"] for p in providers.values())
    return {
        "period": period, "accounts": accounts, "providers": providers, "totals": totals,
        "close_period": close_period, "router_errors": dict(log.errors),
    }


def write_json(path: Path, summary: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))


def display_usd(nano_usd: int) -> str:
    """Non-negative nano-USD as dollars to the micro-dollar, rounded half up with integers only."""
    micro, rest = divmod(nano_usd, 1_000)
    micro += rest * 2 >= 1_000
    whole, fraction = divmod(micro, NANO_PER_USD // 1_000)
    return f"${whole:,}.{fraction:06d}"


def _cents(cents: int | None, status: str | None) -> str:
    if cents is None:
        return "—"
    return f"${cents // 100:,}.{cents % 100:02d} ({status})"


def print_summary(console: Console, summary: dict) -> None:
    period, totals = summary["period"], summary["totals"]
    accounts = Table(title=f"Accounts, period {period}", title_justify="left")
    for column in ("account", "requests", "refused", "credits", "credits used", "pay-as-you-go", "written off", "invoice"):
        accounts.add_column(column, justify="left" if column in ("account", "refused") else "right", overflow="fold")
    for name, a in summary["accounts"].items():
        plan = a["plan"] + (f" ×{a['seats']}" if a["kind"] == "org" else "")
        refused = "\n".join(f"{reason} ×{count}" for reason, count in a["refusals"].items()) or "—"
        money = (display_usd(a[field]) for field in MONEY_FIELDS)
        accounts.add_row(f"{name}\n[dim]{plan}[/dim]", str(a["requests"]), refused, *money,
                         _cents(a["invoice_cents"], a["invoice_status"]))
    accounts.add_section()
    money = (display_usd(totals[field]) for field in MONEY_FIELDS)
    accounts.add_row("total", "", "", *money, _cents(totals["invoice_cents"], "total"))
    console.print(accounts)

    providers = Table(title=f"Providers, period {period}", title_justify="left")
    for column in ("provider", "pricing", "routed", "custom key", "priced", "quarantined", "unpriced", "owed to provider"):
        providers.add_column(column, justify="left" if column in ("provider", "pricing") else "right", overflow="fold")
    for provider_id, p in summary["providers"].items():
        counts = (str(p[key]) for key in ("routed", "custom_key", "priced", "quarantined", "unpriced"))
        providers.add_row(provider_id, p["pricing"], *counts, display_usd(p["payable_nano_usd"]))
    providers.add_section()
    providers.add_row("total", "", "", "", "", "", "", display_usd(totals["payable_nano_usd"]))
    console.print(providers)
    console.print(f"[bold]close-period[/bold]: {summary['close_period']}", highlight=False)


def print_urls(console: Console, *, metering_url: str, router_url: str, pages: dict[str, str], example_user: str,
               example_org: str) -> None:
    """Where to look next, and a request to try through the router (the org has fireworks-ai switched off)."""
    console.print(f"\n[bold]API docs[/bold]   {metering_url}/docs")
    console.print("[bold]Billing pages[/bold] (the token is in the link):")
    for name, url in pages.items():
        console.print(f"  {name:<8} {url}", highlight=False, soft_wrap=True)
    body = {"model": CHAT_MODEL, "provider": "fireworks-ai together", "messages": [{"role": "user", "content": "hi"}]}
    console.print(f"[bold]Router[/bold]     POST {router_url}/v1/chat/completions, e.g.")
    console.print(
        f"  curl -s {router_url}/v1/chat/completions -H 'Authorization: Bearer {user_token(example_user)}' "
        f"-H 'X-HF-Bill-To: {example_org}' -d '{orjson.dumps(body).decode()}'",
        highlight=False, soft_wrap=True, markup=False,
    )
    console.print("Servers and the scheduler keep running; [bold]Ctrl-C[/bold] stops them.")
