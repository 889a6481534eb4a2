"""Request and response bodies of the account and membership sync routes (SPEC §5.3)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$"


class AccountUpdate(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"kind": "org", "plan": "team", "seats": 5}]}
    )

    kind: Literal["user", "org"]
    plan: str = Field(min_length=1, max_length=32)
    seats: int = Field(default=1, ge=0, le=1_000_000)


class AccountRead(BaseModel):
    name: str
    kind: str
    plan: str
    seats: int
    status: str


class MembershipUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"role": "admin"}]})

    role: Literal["admin", "write", "read"]


class MembershipRead(BaseModel):
    org: str
    user: str
    role: str
