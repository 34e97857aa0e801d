"""Inside the vip-manager namespace: puts through etcd's v2 API, as vip-manager 1.0.2 reads it."""

from __future__ import annotations

import contextlib
import http.client
import sys
import time

from bench.leader_latency.net import hostport, now_ns


def role_v2put(url: str, key: str) -> None:
    """Inside the namespace: PUT `key` through etcd's v2 API for each value read on stdin; prints
    `ready`, then `<t_start_ns> <t_return_ns>` per put."""
    host, port = hostport(url)
    deadline = time.monotonic() + 20
    while True:
        try:
            c = http.client.HTTPConnection(host, port, timeout=2)
            c.request("GET", "/v2/keys/")
            c.getresponse().read()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    conn = http.client.HTTPConnection(host, port, timeout=5)
    print("ready", flush=True)
    for line in sys.stdin:
        value = line.strip()
        t0 = now_ns()
        conn.request("PUT", f"/v2/keys{key}", body=f"value={value}",
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        r = conn.getresponse()
        r.read()
        t1 = now_ns()
        if r.status not in (200, 201):
            raise SystemExit(f"v2 put -> {r.status}")
        print(f"{t0} {t1}", flush=True)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        role_v2put(sys.argv[1], sys.argv[2])
