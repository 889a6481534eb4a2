"""Leases on pending usage records while their cost is being asked."""
