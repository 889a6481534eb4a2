"""Adjustments by finance (SPEC §8): corrections of an account's bill, invoiced with the next invoice made.

Owner of ``adjustments`` and of the ``adjustment:<account>:<period>`` ledger accounts: nobody else writes them.
"""
