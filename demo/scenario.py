"""Who takes part in the demo month and what each of them sends through the router every day.

| account | plan | what happens |
|---|---|---|
| frida | free user | runs out of her $0.10 credits in the first days, then is refused |
| paula | pro user | spends past her $2.00 credits on pay-as-you-go; once tries to bill acme |
| acme | team org, 3 seats | alice (admin), bob, carol send requests with ``X-HF-Bill-To: acme`` |
| globex | team org, 1 seat | admin sets a $1.00 spending limit, which the org reaches |
| initech | team org, 2 seats | admin switches fireworks-ai off: preference lists skip it |
| kai | pro user | brings his own provider keys: usage recorded, nothing charged |
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import httpx

from demo.providers import CHAT_MODEL, HF_INFERENCE, MID_MODEL, SMALL_MODEL
from demo.router import PROVIDER_HEADER
from metering.money import NANO_PER_USD

USD = NANO_PER_USD


@dataclass(frozen=True)
class DemoAccount:
    name: str
    kind: str
    plan: str
    seats: int = 1
    members: tuple[tuple[str, str], ...] = ()  # (user, role)
    spending_limit_nano_usd: int | None = None
    disabled_providers: tuple[str, ...] = ()

    @property
    def admin(self) -> str:
        """Who reads this account's billing: the user, or the org's first admin."""
        return next((user for user, role in self.members if role == "admin"), self.name)


ACCOUNTS = (
    DemoAccount("frida", "user", "free"),
    DemoAccount("paula", "user", "pro"),
    DemoAccount("acme", "org", "team", seats=3, members=(("alice", "admin"), ("bob", "write"), ("carol", "read"))),
    DemoAccount(
        "globex",
        "org",
        "team",
        seats=1,
        members=(("gina", "admin"), ("hank", "write")),
        spending_limit_nano_usd=1 * USD,
    ),
    DemoAccount(
        "initech",
        "org",
        "team",
        seats=2,
        members=(("ivan", "admin"), ("judy", "write")),
        disabled_providers=("fireworks-ai",),
    ),
    DemoAccount("kai", "user", "pro"),
)
# Org members have accounts of their own (free users) that they do not spend from here.
MEMBERS = sorted({user for account in ACCOUNTS for user, _ in account.members})
# The provider keys users brought themselves: their requests to these providers are not charged here.
CUSTOM_KEYS = {"kai": {"together": "kai-own-together-key", "fireworks-ai": "kai-own-fireworks-key"}}


@dataclass(frozen=True)
class Habit:
    """``per_day`` requests that ``user`` sends every day, billed to ``bill_to`` (or themselves)."""

    user: str
    provider: str
    model: str
    per_day: int
    bill_to: str | None = None
    # Only on these days of the month (1-based); empty: every day.
    days: tuple[int, ...] = ()

    @property
    def payer(self) -> str:
        return self.bill_to or self.user

    @property
    def custom_key(self) -> bool:
        """The router sends these with the user's own key (``CUSTOM_KEYS``): recorded, never charged."""
        keys = CUSTOM_KEYS.get(self.user, {})
        return all(provider in keys for provider in self.provider.split())


HABITS = (
    Habit("frida", "together", CHAT_MODEL, 1),
    Habit("frida", HF_INFERENCE, MID_MODEL, 2),
    Habit("paula", "fireworks-ai together", CHAT_MODEL, 2),
    Habit("paula", HF_INFERENCE, CHAT_MODEL, 1),
    Habit("paula", "together", CHAT_MODEL, 1, bill_to="acme", days=(3, 17)),
    Habit("alice", "together", CHAT_MODEL, 1, bill_to="acme"),
    Habit("alice", HF_INFERENCE, CHAT_MODEL, 2, bill_to="acme"),
    Habit("bob", "fireworks-ai together", CHAT_MODEL, 1, bill_to="acme"),
    Habit("bob", HF_INFERENCE, MID_MODEL, 1, bill_to="acme"),
    Habit("carol", "together fireworks-ai", SMALL_MODEL, 1, bill_to="acme"),
    Habit("gina", HF_INFERENCE, CHAT_MODEL, 2, bill_to="globex"),
    Habit("hank", HF_INFERENCE, CHAT_MODEL, 1, bill_to="globex"),
    Habit("hank", "together", CHAT_MODEL, 1, bill_to="globex"),
    Habit("ivan", "fireworks-ai together", CHAT_MODEL, 2, bill_to="initech"),
    Habit("judy", "fireworks-ai together", CHAT_MODEL, 1, bill_to="initech"),
    Habit("judy", "fireworks-ai", CHAT_MODEL, 1, bill_to="initech"),
    Habit("kai", "together", CHAT_MODEL, 2),
    Habit("kai", "fireworks-ai", CHAT_MODEL, 1),
)


def user_token(user: str) -> str:
    """The hub access token the router knows ``user`` by."""
    return f"hf_demo_{user}"


@dataclass
class TrafficLog:
    """What the clients saw: requests per payer, routes per provider, refusals per payer and reason."""

    requests: Counter[str] = field(default_factory=Counter)
    routed: Counter[str] = field(default_factory=Counter)
    routed_custom_key: Counter[str] = field(default_factory=Counter)
    refusals: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    errors: Counter[str] = field(default_factory=Counter)


class Traffic:
    """Sends each day's requests through the router, one at a time, in the same order every run.

    The order is what makes a run reproducible: a provider hands out request IDs (and so
    costs) in the order requests reach it, and which request finds credits or room under a
    spending limit left depends on the ones authorized before it.
    """

    def __init__(self, http: httpx.AsyncClient, router_url: str, habits: tuple[Habit, ...] = HABITS) -> None:
        self.http = http
        self.url = f"{router_url}/v1/chat/completions"
        self.habits = habits
        self.log = TrafficLog()

    def requests_of_day(self, day: int) -> list[tuple[Habit, int]]:
        """``day``'s requests in sending order: round after round, each habit's n-th request in the n-th round."""
        todays = [habit for habit in self.habits if not habit.days or day in habit.days]
        rounds = max((habit.per_day for habit in todays), default=0)
        return [(habit, n) for n in range(rounds) for habit in todays if n < habit.per_day]

    async def run_day(self, day: int) -> dict[str, list[str]]:
        """Send ``day``'s requests; returns the request ids served that day per provider (billable ones, sorted)."""
        served: dict[str, list[str]] = defaultdict(list)
        for habit, n in self.requests_of_day(day):
            request_id, provider = await self._send(habit, day, n)
            if request_id and not habit.custom_key:
                served[provider].append(request_id)
        return {provider: sorted(ids) for provider, ids in served.items()}

    async def _send(self, habit: Habit, day: int, n: int) -> tuple[str | None, str | None]:
        headers = {"Authorization": f"Bearer {user_token(habit.user)}"}
        if habit.bill_to:
            headers["X-HF-Bill-To"] = habit.bill_to
        body = {
            "model": habit.model,
            "provider": habit.provider,
            "messages": [{"role": "user", "content": f"day {day}, question {n + 1} from {habit.user}"}],
        }
        log = self.log
        log.requests[habit.payer] += 1
        response = await self.http.post(self.url, json=body, headers=headers)
        if response.status_code == 200:
            provider = response.headers[PROVIDER_HEADER]
            log.routed[provider] += 1
            if habit.custom_key:
                log.routed_custom_key[provider] += 1
            return response.json()["id"], provider
        reason = _reason(response)
        if reason is None:
            log.errors[f"HTTP {response.status_code}"] += 1
        else:
            log.refusals[habit.payer][reason] += 1
        return None, None


def _reason(response: httpx.Response) -> str | None:
    try:
        return response.json()["error"]["reason"]
    except (ValueError, KeyError, TypeError):
        return None
