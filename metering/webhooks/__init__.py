"""Outbound webhooks (SPEC §11): org endpoints, and the delivery of events as Standard Webhooks."""
