"""``metering demo``: a router, simulated providers and Metering in one process, playing a month of billing."""
