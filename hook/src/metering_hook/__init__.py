"""The router-side hook (SPEC §9): build usage records, spool them durably, deliver them in batches.

It runs in the router's process, so it needs only the standard library and ``httpx``, never
Metering's database layer or web app: ``pip install metering-hook`` (``./hook`` in the repository)
brings nothing else. ``metering.hook`` re-exports these names for routers that run beside the server.
"""

from metering_hook.errors import HookError
from metering_hook.httpx_hook import HookStats, MeteringHook, fetch_request_id_headers
from metering_hook.records import BILL_TO_HEADER, DEFAULT_REQUEST_ID_HEADER, MissingRequestId, build_record
from metering_hook.sender import DeliveryDeferred, SenderStats, UsageSender
from metering_hook.spool import DeadLetter, Spool, SpooledRecord

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
