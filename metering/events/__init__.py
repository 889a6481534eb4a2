"""Events (SPEC §11): written in the transaction of the change that causes them, once per cause."""
