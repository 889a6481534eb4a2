"""``metering demo``: a router, simulated providers and Metering in one process, playing a month of billing."""

# Without ``--seed``, every run plays the same month: the same requests, the same costs, the same bill.
# Here rather than in ``demo.providers`` so that the command line shows it without loading the demo.
DEFAULT_SEED = 1
