"""The router-side hook (SPEC §9), by the name the spec gives it.

The hook is its own distribution, ``metering-hook`` (``hook/`` in this repository, imported as
``metering_hook``), so a router installs it without the server's dependencies; this module
re-exports it for code that runs beside the server.
"""

from metering_hook import (
    BILL_TO_HEADER,
    DEFAULT_REQUEST_ID_HEADER,
    DeadLetter,
    DeliveryDeferred,
    HookError,
    HookStats,
    MeteringHook,
    MissingRequestId,
    SenderStats,
    Spool,
    SpooledRecord,
    UsageSender,
    build_record,
    fetch_request_id_headers,
)

__all__ = [
    "BILL_TO_HEADER",
    "DEFAULT_REQUEST_ID_HEADER",
    "DeadLetter",
    "DeliveryDeferred",
    "HookError",
    "HookStats",
    "MeteringHook",
    "MissingRequestId",
    "SenderStats",
    "Spool",
    "SpooledRecord",
    "UsageSender",
    "build_record",
    "fetch_request_id_headers",
]
