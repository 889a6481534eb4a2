"""Who may read or administer what (SPEC §8), decided per account on every route.

Rules:
- a user reads their own account; a pro (pay-as-you-go) user sets their own spending limit;
- a user sets their own alert thresholds; an org's admins set the org's and manage its
  webhook endpoints and deliveries;
- an org's ``admin`` members read the org and change its billing settings; ``write`` and
  ``read`` members may do neither;
- ``platform_admin`` reads every account (and the finance exports) but changes nothing here;
- ``finance`` reads billing summaries and invoices of every account, and the exports.

Refusals never reveal an account's existence to a caller who may not know it: the
caller "knows" their own account, the orgs they are a member of, and (holding
``finance`` or ``platform_admin``) every account. Anyone else asking about a name
gets the same 404 as for a name that does not exist; a caller who knows the
account gets 403.
"""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy.ext.asyncio import AsyncSession

from metering.accounts.repository import account_repository
from metering.auth.errors import NotPermitted
from metering.auth.tokens import Principal
from metering.config import get_settings
from metering.errors import AccountNotFound
from metering.models import Account


class Action(StrEnum):
    READ_BILLING = "read_billing"
    READ_INVOICES = "read_invoices"
    READ_USAGE = "read_usage"
    READ_REQUESTS = "read_requests"
    READ_AUDIT = "read_audit"
    SET_SPENDING_LIMIT = "set_spending_limit"
    SET_DISABLED_PROVIDERS = "set_disabled_providers"
    SET_ALERTS = "set_alerts"
    MANAGE_WEBHOOKS = "manage_webhooks"
    READ_CREDIT_GRANTS = "read_credit_grants"
    BUY_PREPAID_CREDITS = "buy_prepaid_credits"


READ_ACTIONS = frozenset(
    {
        Action.READ_BILLING,
        Action.READ_INVOICES,
        Action.READ_USAGE,
        Action.READ_REQUESTS,
        Action.READ_AUDIT,
        Action.READ_CREDIT_GRANTS,
    }
)
FINANCE_READS = frozenset({Action.READ_BILLING, Action.READ_INVOICES, Action.READ_CREDIT_GRANTS})
ORG_ONLY = frozenset({Action.SET_DISABLED_PROVIDERS, Action.MANAGE_WEBHOOKS})


def _not_found(name: str) -> AccountNotFound:
    return AccountNotFound(f"no account named {name!r}", account=name)


class AccessPolicy:
    async def authorize_account(
        self, session: AsyncSession, *, principal: Principal, account_name: str, action: Action
    ) -> Account:
        """The account when ``principal`` may do ``action`` to it; else 404 or 403 as the module says."""
        account = await account_repository.get(session, account_name)
        if account is None:
            raise _not_found(account_name)
        role = None
        if account.kind == "org":
            membership = await account_repository.membership(session, org=account.name, user=principal.user)
            role = membership.role if membership is not None else None
        is_self = account.kind == "user" and account.name == principal.user
        knows = is_self or role is not None or principal.is_platform_admin or principal.is_finance
        if action in ORG_ONLY and account.kind != "org":
            if knows:
                raise NotPermitted(f"{account.name!r} is not an org")
            raise _not_found(account_name)
        if self._allowed(principal, account, action, is_self=is_self, role=role):
            return account
        if not knows:
            raise _not_found(account_name)
        raise NotPermitted(f"{principal.user!r} may not {action.value.replace('_', ' ')} of {account.name!r}")

    def _allowed(
        self, principal: Principal, account: Account, action: Action, *, is_self: bool, role: str | None
    ) -> bool:
        if action in READ_ACTIONS:
            if is_self or role == "admin" or principal.is_platform_admin:
                return True
            return principal.is_finance and action in FINANCE_READS
        if action is Action.SET_SPENDING_LIMIT:
            if account.kind == "org":
                return role == "admin"
            terms = get_settings().plans.get(account.plan)
            return is_self and terms is not None and terms.pay_as_you_go
        if action in (Action.SET_DISABLED_PROVIDERS, Action.MANAGE_WEBHOOKS):
            return role == "admin"
        if action in (Action.SET_ALERTS, Action.BUY_PREPAID_CREDITS):
            return is_self or role == "admin"
        return False

    def authorize_finance_operation(self, principal: Principal) -> None:
        """Changing money (credit grants, adjustments, reconciliations): the ``finance`` role only."""
        if not principal.is_finance:
            raise NotPermitted("finance operations need the finance role")

    def authorize_export(self, principal: Principal) -> None:
        """Finance exports: the ``finance`` role, or ``platform_admin`` who reads everything."""
        if not (principal.is_finance or principal.is_platform_admin):
            raise NotPermitted("finance exports need the finance role")


access_policy = AccessPolicy()
