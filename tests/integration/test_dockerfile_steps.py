"""The Dockerfile's system steps, run where no Docker engine is: the RUN instructions of its
final stage (user, then Debian packages) in a freshly booted Debian 12 (systemd-nspawn, the same
bookworm packages the python:3.11-slim-bookworm image installs). Checks what the image relies on:
`postgres` keeps the uid/gid of the build args although postgresql-common (pulled in by
pgbackrest) would create it, and the state directory belongs to it. The machine has systemd,
whose groups take gid 999 (the slim image has none), so the build args are set to ids free there,
as `docker build --build-arg PG_UID=… --build-arg PG_GID=…` would. The wheel steps need the image's pip and are covered
by the wheel test (tests/unit/test_deployment.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from testlab import nspawn

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]


def final_stage_system_runs(dockerfile: str) -> tuple[dict[str, str], list[str]]:
    """ARG defaults and RUN commands of the last stage, up to the first step that needs the wheels."""
    stage = dockerfile[dockerfile.rindex("\nFROM "):]
    logical = re.sub(r"\\\n\s*", " ", stage).splitlines()
    args = dict(m.groups() for ln in logical if (m := re.match(r"ARG (\w+)=(\S+)", ln)))
    runs: list[str] = []
    for ln in logical:
        if ln.startswith("COPY --from"):
            break
        if ln.startswith("RUN "):
            runs.append(ln.removeprefix("RUN "))
    return args, runs


def free_id(ct: nspawn.Container) -> str:
    for i in range(990, 900, -1):
        if all(ct.run(["getent", db, str(i)], check=False).returncode == 2 for db in ("passwd", "group")):
            return str(i)
    raise AssertionError("no free system id between 901 and 990")


def test_the_image_user_keeps_its_ids_through_the_package_install(tmp_path: Path) -> None:
    why = nspawn.unavailable_reason()
    if why:
        pytest.skip(f"systemd-nspawn unavailable: {why}")
    args, runs = final_stage_system_runs((ROOT / "Dockerfile").read_text())
    assert args == {"PG_UID": "999", "PG_GID": "999"} and len(runs) == 2, (args, runs)
    with nspawn.booted(log_dir=tmp_path) as ct:
        pg_id = free_id(ct)
        env = {**ct.share_host_registries(), "PG_UID": pg_id, "PG_GID": pg_id, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in runs:
            r = ct.run(["sh", "-c", cmd], check=False, timeout=600, env=env)
            assert r.returncode == 0, f"{cmd}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
        assert ct.run(["id", "-u", "postgres"]).stdout.strip() == pg_id
        assert ct.run(["id", "-g", "postgres"]).stdout.strip() == pg_id
        assert ct.run(["stat", "-c", "%u:%g %a", "/var/lib/pg-node-agent"]).stdout.strip() == f"{pg_id}:{pg_id} 700"
        assert ct.run(["pgbackrest", "version"]).stdout.startswith("pgBackRest 2.")
