"""Credit grants and prepaid credits (SPEC §3, §8): spendable after the plan's credits, before pay-as-you-go.

Owner of ``credit_grants`` and ``credit_balances``: nobody else writes them.
"""
