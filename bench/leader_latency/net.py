"""What the roles and the phases share: monotonic stamps, etcd's base64, URLs, the lab's TLS."""

from __future__ import annotations

import base64
import ssl
import time
from pathlib import Path

SCOPE = "demo"
LEADER_KEY = f"/service/{SCOPE}/leader"


def now_ns() -> int:
    return time.monotonic_ns()


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def hostport(url: str) -> tuple[str, int]:
    host, _, port = url.split("://", 1)[1].rstrip("/").rpartition(":")
    return host, int(port)


def tls_context(tls_dir: str) -> ssl.SSLContext:
    """The lab CA's context with its client certificate (`agent.lab.tls.LabCA` file names)."""
    ctx = ssl.create_default_context(cafile=f"{tls_dir}/ca.crt")
    ctx.load_cert_chain(f"{tls_dir}/client.crt", f"{tls_dir}/client.key")
    return ctx

ROOT = Path(__file__).resolve().parents[2]
