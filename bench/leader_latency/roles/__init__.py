"""The child processes, one module each (`python -m bench.leader_latency.roles.<name> ...`): each
stamps what it sees in its own process and reports on stdout, one line per fact."""
