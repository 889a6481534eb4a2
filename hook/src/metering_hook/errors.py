"""The hook's expected errors, under one root so a router can catch them apart from its own."""

from __future__ import annotations


class HookError(Exception):
    """Root of the hook's expected errors; ``detail`` says what happened, in words an operator can act on."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail
