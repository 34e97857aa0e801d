"""The floor: a bare consumer of etcd's gateway `/v3/watch` stream."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import sys

from bench.leader_latency.net import b64, hostport, now_ns, tls_context


def role_watch(url: str, key: str, tls_dir: str = "") -> None:
    """Bare v3 watch consumer: raw socket, HTTP/1.1 chunked decoding by hand, one JSON per line.
    Prints `ready` once the watch is created, then `<mono_ns> <value>` per PUT on `key`."""
    host, port = hostport(url)
    body = json.dumps({"create_request": {"key": b64(key)}}).encode()
    raw = socket.create_connection((host, port))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock = tls_context(tls_dir).wrap_socket(raw, server_hostname=host) if url.startswith("https") else raw
    sock.sendall(
        b"POST /v3/watch HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % (host.encode(), port, len(body)) + body
    )
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("watch: EOF in headers")
        buf += chunk
    head, buf = buf.split(b"\r\n\r\n", 1)
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise SystemExit(f"watch: {head!r}")
    chunked = b"chunked" in head.lower()
    data = b""  # de-chunked payload not yet split into lines
    out = sys.stdout
    while True:
        # decode whatever complete chunks are in `buf`
        if chunked:
            while True:
                crlf = buf.find(b"\r\n")
                if crlf < 0:
                    break
                size = int(buf[:crlf].split(b";", 1)[0], 16)
                if len(buf) < crlf + 2 + size + 2:
                    break
                if size == 0:
                    return
                data += buf[crlf + 2 : crlf + 2 + size]
                buf = buf[crlf + 2 + size + 2 :]
        else:
            data, buf = data + buf, b""
        while b"\n" in data:
            line, data = data.split(b"\n", 1)
            if not line.strip():
                continue
            t = now_ns()
            res = json.loads(line).get("result", {})
            if res.get("created"):
                out.write("ready\n")
            for ev in res.get("events", []):
                if ev.get("type", "PUT") == "PUT":
                    value = base64.b64decode(ev["kv"].get("value", "")).decode()
                    out.write(f"{t} {value}\n")
            out.flush()
        chunk = sock.recv(65536)
        if not chunk:
            return
        buf += chunk


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        role_watch(sys.argv[1], sys.argv[2], *sys.argv[3:4])
