"""The lab's archive retention over a real PostgreSQL 15 archiving with `cp` (agent.lab.archive):
pg_archivecleanup keeps the newest archived segment, and archiving goes on as before; the demo
prunes its cluster's archive while it runs."""

from __future__ import annotations

import time
from pathlib import Path

from testlab.postgres import PgInstance

from agent.lab import demo
from agent.lab.archive import newest_segment
from agent.lab.cluster import Cluster
from agent.lab.procs import wait_until


def _switch(pg: PgInstance) -> str:
    pg.psql("CREATE TABLE IF NOT EXISTS t (g int)")
    pg.psql("INSERT INTO t VALUES (1)")
    return str(pg.psql("SELECT pg_walfile_name(pg_switch_wal())")[0][0])


def _archived(pg: PgInstance, seg: str) -> bool:
    return bool(pg.psql("SELECT last_archived_wal >= %s FROM pg_stat_archiver", (seg,))[0][0])


def test_prune_keeps_the_newest_archived_segment_and_archiving_goes_on(run_dir: Path) -> None:
    pg = PgInstance(run_dir, "pruned")
    pg.start()
    try:
        segs = [_switch(pg) for _ in range(3)]
        wait_until(lambda: _archived(pg, segs[-1]), 30, "three switched segments archived")
        before = sorted(p.name for p in pg.archive_dir.iterdir())
        assert len(before) >= 3 and segs[-1] in before, before
        counted = pg.psql("SELECT archived_count, failed_count FROM pg_stat_archiver")[0]

        assert pg.prune_archive() == len(before) - 1
        assert sorted(p.name for p in pg.archive_dir.iterdir()) == [segs[-1]]
        assert pg.psql("SELECT archived_count, failed_count FROM pg_stat_archiver")[0] == counted
        assert pg.prune_archive() == 0  # nothing older left

        nxt = _switch(pg)  # the pruned archive takes the next segment as before
        wait_until(lambda: _archived(pg, nxt), 30, "the next segment archived")
        assert (pg.archive_dir / nxt).is_file()
    finally:
        pg.stop()


def test_the_demo_prunes_its_clusters_archive_while_it_runs(cluster: Cluster) -> None:
    # `pg-node-agent demo` idles with pgbench archiving on the primary; without the prune its
    # archive grows until the disk is full
    leader = cluster.leader()
    segs = []
    for _ in range(3):
        cluster.psql(leader, "CREATE TABLE IF NOT EXISTS demo_prune_probe (g int)")
        cluster.psql(leader, "INSERT INTO demo_prune_probe VALUES (1)")
        segs.append(str(cluster.psql(leader, "SELECT pg_walfile_name(pg_switch_wal())")[0][0]))
    wait_until(lambda: bool(cluster.psql(leader, "SELECT last_archived_wal >= %s FROM pg_stat_archiver",
                                         (segs[-1],))[0][0]), 30, "three switched segments archived")
    before = sorted(p.name for p in cluster.archive_dir.iterdir())
    assert set(segs) <= set(before), before

    said: list[str] = []
    demo._idle(time.monotonic() + 3, cluster, said.append, prune_every=1)
    after = sorted(p.name for p in cluster.archive_dir.iterdir())
    assert not set(segs[:-1]) & set(after), after
    assert newest_segment(after) == newest_segment(before) and said == [], (after, said)
