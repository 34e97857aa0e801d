"""Job 4: WAL archive health (pg_stat_archiver, the .ready backlog, LSN lag, optional pgBackRest)."""
