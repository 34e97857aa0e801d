"""glibc malloc settings (agent.core.malloc): checked on glibc's own counters and the process's
VmRSS, each in a fresh interpreter (this one's heaps are shaped by every test before)."""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="glibc >= 2.33 only")

PRELUDE = """
import ctypes, json, sys
libc = ctypes.CDLL(None)
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = Info
def rss_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
"""

# After a 4 MiB block is freed, glibc's default raises its mmap threshold past 1 MiB, so a
# 1 MiB block then comes from the heap; with the threshold fixed it gets a mapping of its own.
MAPPED = PRELUDE + """
if sys.argv[1] == "tuned":
    from agent.app import tune_runtime
    tune_runtime()
big = bytearray(4 << 20)
del big
before = libc.mallinfo2().hblkhd
block = bytearray(1 << 20)
print(json.dumps(libc.mallinfo2().hblkhd - before))
"""

# 64 MiB in 60 KiB blocks (under the mmap threshold: heap), all freed but one at the top, so
# the heap cannot shrink from its end: only trim gives the free pages in between back.
TRIM = PRELUDE + """
from agent.core import malloc
blocks = [bytearray(60 << 10) for _ in range(1100)]
pin = bytearray(60 << 10)
del blocks
before = rss_kib()
malloc.trim()
print(json.dumps({"before": before, "after": rss_kib()}))
"""


def run(code: str, *args: str) -> object:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True, timeout=60)
    return json.loads(out.stdout)


def test_large_blocks_keep_their_own_mapping_after_a_larger_one_was_freed() -> None:
    assert run(MAPPED, "tuned") >= 1 << 20
    assert run(MAPPED, "default") == 0  # what the setting is for: glibc's default moved the block to a heap


def test_trim_gives_free_heap_pages_back() -> None:
    got = run(TRIM)
    assert isinstance(got, dict)
    assert got["before"] - got["after"] > 32 << 10, got  # KiB: most of the 64 MiB freed
