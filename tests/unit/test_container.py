"""The Dockerfile and the compose example that runs an agent beside each node of Patroni's own
compose demo. Building and running the image needs a Docker engine: the test skips, saying so,
where there is none (this machine has only the client)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent import __version__
from agent.core.config import load

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "config/compose/compose.yml"
DOCKERFILE = ROOT / "Dockerfile"


def docker_engine() -> str | None:
    """Why Docker cannot build here, or None when it can."""
    if shutil.which("docker") is None:
        return "no docker client"
    r = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                       timeout=30, check=False)
    return None if r.returncode == 0 else f"no Docker engine: {(r.stderr or r.stdout).strip().splitlines()[-1]}"


def compose_services() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text().replace("${PG_NODE_AGENT_DIR:?set PG_NODE_AGENT_DIR to the "
                                                        "pg-node-agent checkout}", str(ROOT)))
    services: dict[str, Any] = doc["services"]
    return services


def test_dockerfile_builds_and_runs_the_agent(tmp_path: Path) -> None:
    why = docker_engine()
    if why:
        pytest.skip(f"docker build not run: {why}")
    tag = "pg-node-agent:test"
    subprocess.run(["docker", "build", "-t", tag, str(ROOT)], check=True, timeout=900)
    out = subprocess.run(["docker", "run", "--rm", tag, "version"], capture_output=True, text=True, check=True,
                         timeout=120).stdout.strip()
    assert out == __version__
    uid = subprocess.run(["docker", "run", "--rm", "--entrypoint", "id", tag, "-u"], capture_output=True, text=True,
                         check=True, timeout=120).stdout.strip()
    assert uid == "999"
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[node]\nname = "n1"\n[etcd]\nscope = "main"\n[http]\nlisten = "127.0.0.1:9188x"\n')
    bad = subprocess.run(["docker", "run", "--rm", "-v", f"{tmp_path}:/etc/pg-node-agent:ro", tag, "check-config"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 78 and "http.listen" in bad.stderr


def test_dockerfile_runs_the_wheel_as_postgres_with_a_healthcheck() -> None:
    text = DOCKERFILE.read_text()
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users == ["postgres"]
    assert re.search(r"^HEALTHCHECK .*\n.*/health", text, re.M)
    assert "pip install --no-cache-dir /wheels/*.whl" in text
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for p in src.split():
            assert (ROOT / p).exists(), p
    # postgresql-common (pulled in by pgbackrest) creates `postgres` with a dynamic uid unless it exists
    assert text.index("useradd --system --uid \"$PG_UID\"") < text.index("apt-get install")
    entry = re.search(r'^ENTRYPOINT \["([^"]+)"', text, re.M)
    assert entry and f"{entry.group(1)} = " in (ROOT / "pyproject.toml").read_text()


def test_compose_puts_each_agent_in_its_patroni_members_network_namespace() -> None:
    services = compose_services()
    assert sorted(services) == ["agent1", "agent2", "agent3"]
    for name, svc in services.items():
        n = name.removeprefix("agent")
        assert svc["network_mode"] == f"service:patroni{n}"
        assert svc["depends_on"] == [f"patroni{n}"]
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"]


def test_compose_agent_configs_load_and_name_their_member(tmp_path: Path) -> None:
    secret = tmp_path / "pgpass"   # made by the operator (compose.yml says how), never committed
    secret.write_text("postgres\n")
    secret.chmod(0o640)
    for name, svc in compose_services().items():
        (mount,) = [v for v in svc["volumes"] if v.endswith(":/etc/pg-node-agent/agent.toml:ro")]
        src = Path(mount.split(":")[0])
        assert src.is_file(), src
        cfg_file = tmp_path / src.name
        cfg_file.write_text(src.read_text().replace("/run/secrets/pgpass", str(secret)))
        cfg = load(cfg_file)   # the real loader: a bad key would raise ConfigError
        assert cfg.node.name == "patroni" + name.removeprefix("agent")
        assert cfg.etcd.scope == "demo" and cfg.patroni.url == "http://127.0.0.1:8008"
        assert cfg.http.listen == "0.0.0.0:9188"
        assert cfg.postgres.password_file == str(secret)   # the loader checked its mode
