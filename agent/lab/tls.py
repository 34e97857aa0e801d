"""A certificate authority of the lab's own (openssl, argv only): a CA, a server certificate for
127.0.0.1/localhost (also good as a client, as Patroni's member-to-member calls need) and a client
certificate. Keys are 0600; `owner` makes the server key readable by the lab user."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from agent.lab.procs import chown_to_lab_user

_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)


@dataclass(frozen=True, slots=True)
class LabCA:
    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    @property
    def client_cert(self) -> Path:
        return self.dir / "client.crt"

    @property
    def client_key(self) -> Path:
        return self.dir / "client.key"

    @classmethod
    def create(cls, directory: Path, name: str = "pgna-lab") -> LabCA:
        directory.mkdir(parents=True, exist_ok=True)
        d = cls(directory)
        _openssl("req", "-x509", *_KEY, "-keyout", str(directory / "ca.key"), "-out", str(d.ca), "-days", "2",
                 "-subj", f"/CN={name}-ca")
        for who, usage, san in (("server", "serverAuth,clientAuth", "IP:127.0.0.1,DNS:localhost"),
                                ("client", "clientAuth", "DNS:pg-node-agent")):
            ext = directory / f"{who}.ext"
            ext.write_text(f"subjectAltName={san}\nextendedKeyUsage={usage}\n")
            # no CN on the client certificate: etcd's gateway refuses (400) a client certificate with a
            # CommonName when --client-cert-auth is on ("will be ignored and not used as expected")
            subj = f"/CN={name}-server" if who == "server" else f"/O={name}-client"
            _openssl("req", *_KEY, "-keyout", str(directory / f"{who}.key"), "-out", str(directory / f"{who}.csr"),
                     "-subj", subj)
            _openssl("x509", "-req", "-in", str(directory / f"{who}.csr"), "-CA", str(d.ca), "-CAkey",
                     str(directory / "ca.key"), "-CAcreateserial", "-out", str(directory / f"{who}.crt"),
                     "-days", "2", "-extfile", str(ext))
            (directory / f"{who}.key").chmod(0o600)
        chown_to_lab_user(directory)
        for p in (d.ca, d.server_cert, d.server_key, d.client_cert, d.client_key):  # Patroni runs as the lab user
            chown_to_lab_user(p)
        return d
