"""What a usage bucket is grouped by, spans and counts: the names both engines' SQL of the usage series share."""

from __future__ import annotations

from metering.models import UsageRecord

GROUP_COLUMNS = {
    "member": UsageRecord.user_name,
    "provider": UsageRecord.provider_id,
    "model": UsageRecord.model,
}
INTERVALS = ("day", "hour")
# A bucket's measures, as the hourly totals (``usage_rollups``) name their columns.
MEASURES = ("requests", "priced_requests", "cost_nano_usd", "pending_requests", "custom_key_requests")
