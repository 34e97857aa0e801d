"""The lab parts only the tests use (`agent/lab/` keeps what `pg-node-agent demo` runs too).

- `postgres`: a standalone PostgreSQL 15 without Patroni (also used by bench/);
- `faults`: a TCP proxy that blackholes or resets, and CPU saturation;
- `secure`: etcd as production runs it (TLS, client certificates, RBAC, expiring tokens);
- `nspawn`: a throwaway Debian 12 booted with systemd as PID 1, and the agent installed in it by
  docs/installation.md's own shell blocks.

Importable as `testlab` because pyproject's pytest `pythonpath` holds tests/integration (bench/
imports `tests.integration.testlab` from the repository root).
"""
