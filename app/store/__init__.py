"""The PostgreSQL write path: the sink (plan in, SQL out), the outcomes ledger, error classes."""
