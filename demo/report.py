"""The month's billing summary: read back from Metering's API, printed as tables, written as JSON.

Account figures come from ``GET /v1/accounts/{name}/billing`` and ``/invoices``; provider
figures from the finance exports (``provider-payables``: one payable entry per priced
request; ``unpriced``: quarantined and unpriced requests). What only the router saw
(requests sent, refusals by reason, routes taken) comes from the clients' log.
The JSON holds exact nano-USD; the tables round to the micro-dollar for reading.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import orjson
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from demo.platform import Platform
from demo.providers import CHAT_MODEL, PROVIDERS
from demo.scenario import ACCOUNTS, TrafficLog, user_token
from metering.money import format_cents, format_usd

MONEY_FIELDS = ("credits_granted_nano_usd", "credits_used_nano_usd", "payg_nano_usd", "written_off_nano_usd")


async def gather_summary(platform: Platform, *, period: str, log: TrafficLog, close_period: str) -> dict:
    accounts = {}
    for account in ACCOUNTS:
        billing = await platform.billing(account.name, period)
        invoice = next((item for item in await platform.invoices(account.name) if item["period"] == period), None)
        accounts[account.name] = {
            "kind": account.kind,
            "plan": account.plan,
            "seats": account.seats,
            "admin": account.admin,
            "requests": log.requests[account.name],
            "refusals": dict(sorted(log.refusals[account.name].items())),
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
        "period": period,
        "accounts": accounts,
        "providers": providers,
        "totals": totals,
        "close_period": close_period,
        "router_errors": dict(log.errors),
    }


def write_json(path: Path, summary: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))


def display_usd(nano_usd: int) -> str:
    """Non-negative nano-USD as dollars to the micro-dollar, rounded half up with integers only."""
    return format_usd(nano_usd, decimals=6)


def _cents(cents: int | None, status: str | None) -> str:
    if cents is None:
        return "—"
    return f"{format_cents(cents)} ({status})"


@dataclass(frozen=True)
class _Column:
    header: str
    justify: Literal["left", "right"] = "right"
    # On a narrow terminal the columns with the lowest rank go first; 0: always shown.
    drop_rank: int = 0


def _widths(console: Console, cells: list[str]) -> tuple[int, int]:
    """The widest word and the widest line among ``cells`` (rich markup)."""
    options = console.options.update_width(10_000)  # unbounded: rich clamps a measurement to the width it is given
    measured = [Measurement.get(console, options, Text.from_markup(cell)) for cell in cells]
    return max(m.minimum for m in measured), max(m.maximum for m in measured)


def _fitting_table(
    console: Console, title: str, columns: list[_Column], rows: list[list[str]], total: list[str]
) -> tuple[Table, list[str]]:
    """The table with as many columns as fit the console without breaking a word, so that no amount or
    name is folded over two lines; and the headers of the columns left out."""
    shown = list(columns)
    droppable = sorted((column for column in columns if column.drop_rank), key=lambda column: column.drop_rank)
    while True:
        picked = [columns.index(column) for column in shown]
        measured = [
            _widths(console, [column.header, *(row[i] for row in rows), total[i]])
            for i, column in zip(picked, shown, strict=True)
        ]
        room = console.width - (3 * len(shown) + 1)  # a border and two spaces of padding per column, one more border
        if sum(smallest for smallest, _ in measured) <= room or not droppable:
            break
        shown.remove(droppable.pop(0))
    widths: list[int | None] = [None] * len(shown)
    slack = [widest - smallest for smallest, widest in measured]
    spare = room - sum(smallest for smallest, _ in measured)
    if sum(widest for _, widest in measured) > room and spare >= 0:
        # Rich would shrink the widest columns first, folding the words of others on the way: every
        # column gets its widest word, and the room left is shared in proportion to what wrapping saves.
        widths = [smallest + spare * extra // sum(slack) for (smallest, _), extra in zip(measured, slack, strict=True)]
    table = Table(title=title, title_justify="left")
    for column, width in zip(shown, widths, strict=True):
        # Fold only as a last resort, on a terminal too narrow even for the columns always shown.
        table.add_column(column.header, justify=column.justify, overflow="fold", width=width)
    for row in rows:
        table.add_row(*(row[i] for i in picked))
    table.add_section()
    table.add_row(*(total[i] for i in picked))
    return table, [column.header for column in columns if column not in shown]


ACCOUNT_COLUMNS = [
    _Column("account", "left"),
    _Column("requests", drop_rank=2),
    _Column("refused", "left", drop_rank=4),
    _Column("credits", drop_rank=3),
    _Column("credits used", drop_rank=5),
    _Column("pay-as-you-go"),
    _Column("written off", drop_rank=1),
    _Column("invoice"),
]
PROVIDER_COLUMNS = [
    _Column("provider", "left"),
    _Column("pricing", "left", drop_rank=1),
    _Column("routed", drop_rank=3),
    _Column("custom key", drop_rank=2),
    _Column("priced"),
    _Column("quarantined", drop_rank=4),
    _Column("unpriced", drop_rank=5),
    _Column("owed to provider"),
]


def print_summary(console: Console, summary: dict) -> None:
    """The two tables, with the less important columns left out when the terminal is too narrow for them."""
    period, totals = summary["period"], summary["totals"]
    rows = []
    for name, a in summary["accounts"].items():
        plan = a["plan"] + (f" ×{a['seats']}" if a["kind"] == "org" else "")
        refused = "\n".join(f"{reason} ×{count}" for reason, count in a["refusals"].items()) or "—"
        money = [display_usd(a[field]) for field in MONEY_FIELDS]
        rows.append(
            [
                f"{name}\n[dim]{plan}[/dim]",
                str(a["requests"]),
                refused,
                *money,
                _cents(a["invoice_cents"], a["invoice_status"]),
            ]
        )
    total = [
        "total",
        "",
        "",
        *(display_usd(totals[field]) for field in MONEY_FIELDS),
        _cents(totals["invoice_cents"], "total"),
    ]
    accounts, left_out = _fitting_table(console, f"Accounts, period {period}", ACCOUNT_COLUMNS, rows, total)
    console.print(accounts)

    rows = [
        [
            provider_id,
            p["pricing"],
            *(str(p[key]) for key in ("routed", "custom_key", "priced", "quarantined", "unpriced")),
            display_usd(p["payable_nano_usd"]),
        ]
        for provider_id, p in summary["providers"].items()
    ]
    total = ["total", "", "", "", "", "", "", display_usd(totals["payable_nano_usd"])]
    providers, left_out_too = _fitting_table(console, f"Providers, period {period}", PROVIDER_COLUMNS, rows, total)
    console.print(providers)
    if left_out or left_out_too:
        console.print(
            f"[dim]Left out for the terminal's width: {', '.join(left_out + left_out_too)} "
            "(a wider terminal shows them; --json-summary writes every figure).[/dim]"
        )
    console.print(f"[bold]close-period[/bold]: {summary['close_period']}", highlight=False)


def print_next_steps(console: Console, *, period: str, env_lines: list[str], example_user: str) -> None:
    """The commands that read this month again; first the shell lines that point them at it, if any are needed."""
    if env_lines:
        console.print("\n[bold]Other commands[/bold] read another database; to point them at this month:")
        for line in env_lines:
            console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
    else:
        console.print("\n[bold]Other commands[/bold] read this month too (the same data folder):")
    for line in (
        "metering verify",
        f"metering export ledger --period {period} --format csv --out ledger.csv",
        f"metering token {example_user}      # a JWT for /v1/...; --role finance for the exports",
    ):
        # Soft wrap: the terminal may fold a long command, but a copy of it stays one line.
        console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)


def print_urls(
    console: Console, *, metering_url: str, router_url: str, pages: dict[str, str], example_user: str, example_org: str
) -> None:
    """Where to look next, and requests to try through the router with curl and the Python clients (the org has
    fireworks-ai switched off)."""
    console.print(f"\n[bold]API docs[/bold]   {metering_url}/docs")
    console.print("[bold]Billing pages[/bold] (the token is in the link):")
    for name, url in pages.items():
        console.print(f"  {name:<8} {url}", highlight=False, soft_wrap=True)
    body = {"model": CHAT_MODEL, "provider": "fireworks-ai together", "messages": [{"role": "user", "content": "hi"}]}
    console.print(f"[bold]Router[/bold]     POST {router_url}/v1/chat/completions, e.g.")
    console.print(
        f"  curl -s {router_url}/v1/chat/completions -H 'Authorization: Bearer {user_token(example_user)}' "
        f"-H 'X-HF-Bill-To: {example_org}' -d '{orjson.dumps(body).decode()}'",
        highlight=False,
        soft_wrap=True,
        markup=False,
    )
    console.print(
        "[bold]Python clients[/bold] (pip install huggingface_hub openai): paste into python, "
        f"as {example_user} billing {example_org}:"
    )
    for snippet in client_snippets(router_url, api_key=user_token(example_user), bill_to=example_org).values():
        console.print(snippet + "\n", markup=False, highlight=False, emoji=False, soft_wrap=True)
    console.print("Servers and the scheduler keep running; [bold]Ctrl-C[/bold] stops them.")


def client_snippets(router_url: str, *, api_key: str, bill_to: str, model: str = CHAT_MODEL) -> dict[str, str]:
    """Python that calls the router with each client a newcomer may know, ready to paste as printed.

    Unindented, and a blank line closes the loop, so the interactive interpreter takes it too.
    """
    base_url = f"{router_url}/v1"
    hello = '[{"role": "user", "content": "Hello!"}]'
    return {
        "huggingface_hub": "\n".join(
            (
                "# huggingface_hub: bill_to sends X-HF-Bill-To; a bare model goes to the first provider allowed",
                "from huggingface_hub import InferenceClient",
                f'client = InferenceClient(base_url="{base_url}", api_key="{api_key}", bill_to="{bill_to}")',
                f'answer = client.chat_completion({hello}, model="{model}")',
                "print(answer.choices[0].message.content)",
            )
        ),
        "openai": "\n".join(
            (
                "# openai: streamed; the model names its provider after a colon",
                "from openai import OpenAI",
                f'client = OpenAI(base_url="{base_url}", api_key="{api_key}", '
                f'default_headers={{"X-HF-Bill-To": "{bill_to}"}})',
                f'stream = client.chat.completions.create(model="{model}:together", messages={hello}, stream=True)',
                "for chunk in stream:",
                '    print(chunk.choices[0].delta.content or "", end="", flush=True)',
                "",
                "print()",
            )
        ),
    }
