"""etcd as production runs it, for the production-shaped lab variants: etcd 3.5 with TLS for
clients and peers and client certificates required (a lab CA), RBAC with a root user, a Patroni
user and a least-privilege agent user, and tokens that expire after TOKEN_TTL idle seconds.

`LabEtcd` pairs any lab etcd with what its clients need, so a test runs the same way on either.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from agent.lab.etcd import Etcd
from agent.lab.tls import LabCA

# shorter than the agent's silence checks (watch_deadline 5 s, 3 s in AgentProc): a check may find
# its token expired
TOKEN_TTL = 2
AGENT_PASSWORD = "agentpw"  # loopback-only lab; tests check it never reaches a log


class LabEtcd(NamedTuple):
    """An etcd and what a client of it needs: the agent's extra [etcd] keys (TLS files, RBAC user)
    and Patroni's (user, password) when RBAC is on."""

    etcd: Etcd
    agent_toml: str = ""
    patroni_user: tuple[str, str] | None = None


def start_secure_etcd(run_dir: Path, scope: str, namespace: str = "/service") -> LabEtcd:
    """Start it with grants on `<namespace>/<scope>/` (the caller stops `.etcd`): Patroni reads and
    writes its scope; the agent reads it and writes only the repack lock key."""
    ca = LabCA.create(run_dir / "tls")
    e = Etcd(run_dir, tls=ca, auth_token_ttl=TOKEN_TTL, version="3.5")
    prefix = f"{namespace.rstrip('/')}/{scope}/"
    try:
        e.start()
        e.enable_rbac("rootpw", {
            "patroni": ("patronipw", [("readwrite", prefix, True)]),
            "agent": (AGENT_PASSWORD, [("read", prefix, True),
                                       ("readwrite", prefix + "pg-node-agent/repack-lock", False)]),
        })
    except BaseException:
        e.stop()
        raise
    pw = run_dir / "agent-etcd-pw"
    pw.write_text(AGENT_PASSWORD + "\n")
    pw.chmod(0o600)
    toml = "\n".join([f'ca_file = "{ca.ca}"', f'cert_file = "{ca.client_cert}"', f'key_file = "{ca.client_key}"',
                      'username = "agent"', f'password_file = "{pw}"'])
    return LabEtcd(e, toml, ("patroni", "patronipw"))
