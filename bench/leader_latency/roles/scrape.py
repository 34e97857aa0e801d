"""The agent's `/metrics`, polled in a tight loop over one keep-alive connection."""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import sys
import threading
import time

from bench.leader_latency.net import hostport, now_ns

LEADER_RE = re.compile(rb'^pgnode_leader\{member="([^"]*)"\} 1\.0$', re.M)
OBSERVED_RE = re.compile(rb"^pgnode_leader_change_observed_timestamp_seconds (\S+)$", re.M)


def role_scrape(url: str, interval: float) -> None:
    """Poll /metrics over one keep-alive connection until stdin closes. Prints
    `L <t_end_ns> <t_start_ns> <member> <observed_wall_s>` when the leader member changes, and at the end
    `D <json>` with the scrape durations (µs)."""
    host, port = hostport(url)
    stop = threading.Event()

    def wait_stdin() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_stdin, daemon=True).start()
    conn = http.client.HTTPConnection(host, port, timeout=5)
    durations: list[int] = []
    starts: list[int] = []
    sizes: list[int] = []
    last = b""
    out = sys.stdout
    while not stop.is_set():
        t0 = now_ns()
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        body = resp.read()
        t1 = now_ns()
        durations.append((t1 - t0) // 1000)
        starts.append(t0)
        sizes.append(len(body))
        m = LEADER_RE.search(body)
        member = m.group(1) if m else b""
        if member != last:
            last = member
            o = OBSERVED_RE.search(body)
            out.write(f"L {t1} {t0} {member.decode() or '-'} {o.group(1).decode() if o else 'nan'}\n")
            out.flush()
        if interval > 0:
            time.sleep(interval)
    summary = {"durations_us": durations, "starts_ns": starts, "bytes": sizes[-1] if sizes else 0}
    out.write("D " + json.dumps(summary) + "\n")
    out.flush()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        role_scrape(sys.argv[1], float(sys.argv[2]))
