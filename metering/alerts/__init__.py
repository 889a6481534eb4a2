"""Alerts: the thresholds accounts choose, the events their postings cross, and the billing page's banner."""
