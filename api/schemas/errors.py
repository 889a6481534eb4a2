"""The error body every failure answers with, ``{"error", "detail"}``, and its OpenAPI entries.

Routes list the statuses they can answer with ``error_responses({status: description})``,
so the schema documents the body clients actually get (FastAPI's default 422 body is not it).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ErrorRead(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"error": "AccountNotFound", "detail": "no account 'acme'"}]}
    )

    error: str = Field(description="The error's class name, e.g. NotPermitted, AccountNotFound, PayloadTooLarge.")
    detail: str = Field(description="What went wrong, safe to show.")


class ValidationIssueRead(BaseModel):
    loc: list[str | int] = Field(description="Where: body, query, path or header, then the field path.")
    msg: str
    type: str


class ValidationErrorRead(ErrorRead):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": "ValidationError",
                    "detail": "query.period: period must be YYYY-MM (a month 01–12), got '2026-13'",
                    "errors": [
                        {
                            "loc": ["query", "period"],
                            "msg": "period must be YYYY-MM (a month 01–12), got '2026-13'",
                            "type": "period",
                        }
                    ],
                },
                {"error": "UnknownReport", "detail": "unknown report 'balances'"},
            ]
        }
    )

    errors: list[ValidationIssueRead] | None = Field(
        default=None, description="Each problem of a malformed request; absent for domain-level refusals."
    )


def error_responses(descriptions: dict[int, str]) -> dict[int | str, dict]:
    """OpenAPI ``responses`` entries for the given error statuses, each with the error body schema."""
    return {
        status: {"model": ValidationErrorRead if status == 422 else ErrorRead, "description": description}
        for status, description in descriptions.items()
    }


# Descriptions shared by many routes.
NO_SERVICE_TOKEN = "no valid service token"
NO_PLATFORM_JWT = "no valid platform JWT"
UNREADABLE_BODY = "the body could not be read (e.g. not UTF-8 or not in a supported encoding)"
BODY_TOO_LARGE = "the body is larger than the configured maximum"
