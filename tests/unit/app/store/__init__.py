"""Unit tests for the pure parts of the store: error classification and the ledger's partitions."""
