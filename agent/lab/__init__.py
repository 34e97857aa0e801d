"""Real processes on loopback for the integration tests and `pg-node-agent demo`.

One controller per process (Patroni's `features/environment.py` shape): `start(max_wait)` waits
until the process answers, `stop()` is SIGTERM then SIGKILL by PID followed by `wait()`, and an
outage is SIGSTOP/SIGCONT. PostgreSQL and Patroni run as the unprivileged `pgtest` user when the
lab runs as root. Only `agent/cli.py` and the tests import this package; the parts only the
tests use (a standalone PostgreSQL, network faults, systemd-nspawn machines) are in
tests/integration/testlab/, outside the wheel.
"""
