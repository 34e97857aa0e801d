"""Leader-change latency: from the start of the `put` of /service/<scope>/leader to each consumer.

In one run, side by side, N sequential leader changes with randomised gaps, seen by:
  1. a bare Python consumer of etcd's gateway `/v3/watch` stream (raw socket, chunked decoding
     by hand, in its own process) -- the floor;
  2. `etcdctl watch` (Debian etcd-client), its stdout lines timestamped as they arrive;
  3. the agent's `/metrics` showing `pgnode_leader{member="<new>"} 1.0`, polled in a tight loop
     over one keep-alive connection by its own process (scrape times reported too), plus the
     agent's own `pgnode_leader_change_observed_timestamp_seconds` (its state update, before any
     scrape) to split the agent's time into "watch + state" and "scrape";
  4. vip-manager 1.0.2 (Debian; polls etcd's v2 API) with --interval 1000 and 100, inside a
     network namespace made for the run (veth pair, TEST-NET addresses, its own etcd with
     --enable-v2=true), until `ip -o monitor address` shows the VIP added or removed.

With `--sampler-load N`, one more `defaults` run whose agent also samples pg_stat_statements
(every 10 s) of a real PostgreSQL 15 holding N distinct statements, busy re-running them.

Every timestamp is CLOCK_MONOTONIC (system-wide, comparable across processes), taken in the
process that saw the event. Run as root:

    /work/main/.venv/bin/python bench/leader_latency.py [--changes 200] [--skip-vip-manager]
    /work/main/.venv/bin/python -m bench.leader_latency [...]        # the same, from the repository root

`roles/` are the child processes (the bare watch, the scraper, the v2 putter inside the
namespace), each a module of its own; `v3.py` and `vip.py` are the two phases, `report.py` the
tables and ratios, `procs.py` the process bookkeeping, `cli.py` the options and the order of runs.
"""
