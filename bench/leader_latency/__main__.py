import sys

from bench.leader_latency.cli import main

sys.exit(main(sys.argv[1:]))
