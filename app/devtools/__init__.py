"""Development tooling, apart from the service: the embedded stack (broker, PostgreSQL and
Valkey from wheels), the local dev signing key, and the benchmark. Production code never
imports from here; `sluice run`, `sluice token` and `sluice bench` do."""
