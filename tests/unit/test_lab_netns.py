"""The partition tests skip, naming why, where the lab cannot make a veth pair (root without
CAP_NET_ADMIN: the fresh-machine container shares the host's network), instead of failing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_root_without_cap_net_admin_is_told_why() -> None:
    code = "from agent.lab import netns; print(netns.available())"
    run = [sys.executable, "-c", code]
    dropped = subprocess.run(["setpriv", "--bounding-set=-net_admin", *run], capture_output=True, text=True,
                             timeout=60, check=True).stdout
    assert "CAP_NET_ADMIN" in dropped
    from agent.lab import netns

    full = subprocess.run(run, capture_output=True, text=True, timeout=60, check=True).stdout
    assert full.strip() == str(netns.available())  # the verdict follows the capability, nothing else
