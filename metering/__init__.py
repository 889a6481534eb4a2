"""Metering: billing and usage metering for an inference router."""
