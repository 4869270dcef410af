"""The demo's process supervisor: children never outlive a SIGKILLed owner (a timed-out demo or test)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

OWNER = r"""
import sys, time
from pathlib import Path
from edgeloop_sim.supervisor import ProcessSupervisor
s = ProcessSupervisor(Path(sys.argv[1]))
p = s.start("sleeper", ["sleep", "300"])
print(p.popen.pid, flush=True)
time.sleep(300)
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] == "Z"  # a zombie waiting for init to reap it is gone too
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="Linux only (prctl PDEATHSIG)")
def test_supervised_children_die_with_a_killed_owner(tmp_path: Path) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(tmp_path / "logs")],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert owner.stdout is not None
    child = int(owner.stdout.readline())
    assert not _gone(child)
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait(10)
    deadline = time.monotonic() + 10
    while not _gone(child):
        assert time.monotonic() < deadline, f"supervised child {child} outlived its owner"
        time.sleep(0.05)
