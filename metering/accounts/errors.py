"""Errors of accounts and memberships."""

from metering.errors import AccountNotFound, Conflict, InvalidInput


class UnknownPlan(InvalidInput):
    """The plan is not in the configured plan table."""


class PlanKindMismatch(InvalidInput):
    """A user plan given to an org or the reverse."""


class AccountKindConflict(Conflict):
    """An existing account cannot change between user and org."""


class NotAnOrg(AccountNotFound):
    """Memberships exist only in orgs."""


class NotAUser(InvalidInput):
    """Only users can be members of an org."""
