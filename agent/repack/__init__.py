"""Job 3: guarded pg_repack windows on the confirmed primary."""
