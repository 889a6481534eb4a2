"""Prometheus metrics of the process, on one registry that ``GET /metrics`` serves."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

registry = CollectorRegistry()

records_ingested = Counter(
    "metering_usage_records_total", "Usage records received, by outcome", ["outcome"], registry=registry
)
authorize_decisions = Counter(
    "metering_authorize_total", "Authorize decisions, by reason (allowed for yes)", ["reason"], registry=registry
)
cost_batches = Counter(
    "metering_cost_batches_total", "Cost batches asked, by outcome", ["provider", "outcome"], registry=registry
)
cost_batch_seconds = Histogram(
    "metering_cost_batch_seconds", "Time to ask and apply one cost batch", ["provider"], registry=registry
)
requests_priced = Counter("metering_requests_priced_total", "Requests priced", ["provider"], registry=registry)
requests_quarantined = Counter(
    "metering_requests_quarantined_total",
    "Requests whose cost answer was invalid",
    ["provider", "reason"],
    registry=registry,
)
requests_unpriced = Counter(
    "metering_requests_unpriced_total", "Requests never priced before the maximum age", ["provider"], registry=registry
)
provider_errors = Counter(
    "metering_provider_errors_total", "Cost endpoint failures by kind", ["provider", "kind"], registry=registry
)
oldest_pending_seconds = Gauge(
    "metering_oldest_pending_seconds", "Age of the oldest pending request", ["provider"], registry=registry
)
webhook_deliveries = Counter(
    "metering_webhook_deliveries_total",
    "Webhook delivery attempts, by outcome (delivered, retry, failed: given up) and reason of a failure",
    ["outcome", "reason"],
    registry=registry,
)
webhook_delivery_seconds = Histogram(
    "metering_webhook_delivery_seconds",
    "Time from an event to its delivery to an endpoint",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400),
    registry=registry,
)
webhook_oldest_undelivered_seconds = Gauge(
    "metering_webhook_oldest_undelivered_seconds",
    "Age of the oldest event not yet delivered to every endpoint",
    registry=registry,
)
