#!/usr/bin/env python3
"""`python bench/leader_latency.py ...`: the same as `python -m bench.leader_latency ...` (the
package `bench/leader_latency/`; this file only keeps the documented command working)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.leader_latency.cli import main

sys.exit(main(sys.argv[1:]))
