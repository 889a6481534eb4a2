"""The router-side hook (SPEC §9): build usage records, spool them durably, deliver them in batches.

It runs in the router's process, so it depends only on the standard library, ``httpx`` and
``orjson`` — never on Metering's database layer or web app.
"""

from metering.hook.httpx_hook import HookStats, MeteringHook, fetch_request_id_headers
from metering.hook.records import BILL_TO_HEADER, DEFAULT_REQUEST_ID_HEADER, MissingRequestId, build_record
from metering.hook.sender import DeliveryDeferred, SenderStats, UsageSender
from metering.hook.spool import DeadLetter, Spool, SpooledRecord

__all__ = [
    "BILL_TO_HEADER",
    "DEFAULT_REQUEST_ID_HEADER",
    "DeadLetter",
    "DeliveryDeferred",
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
