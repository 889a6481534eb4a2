"""Provider reconciliation (SPEC §8): a provider's monthly statement compared with what the ledger posted."""
