"""A small process supervisor for the demo: named processes, log files, restarts, clean stop.

The demo runs the broker, the controller and the agents as real processes, the
way a device or a node pool would. A crashed process is restarted with backoff
(like ``Restart=on-failure``) and everything is stopped in reverse order with
SIGTERM first, so agents flush and the controller saves its state.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn``: SIGTERM this child when the process that started it dies (Linux).

    Why: the children run in their own sessions (a Ctrl-C must not kill them
    half-way), so if the demo or a test is SIGKILLed (a timeout) nothing else
    would stop them, and a stray broker, controller or agent would keep
    running and eat the CPU of whatever runs next. Best effort elsewhere.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux / no prctl: the clean stop path still applies
        pass


@dataclass
class Proc:
    name: str
    argv: Sequence[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    restart: bool = True
    popen: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    stopping: bool = False


class ProcessSupervisor:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, Proc] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(
        self, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None, restart: bool = True
    ) -> Proc:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        p = Proc(name, list(argv), self.log_dir / f"{name}.log", dict(env or {}), restart)
        self._spawn(p)
        with self._lock:
            self.procs[name] = p
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)
            self._thread.start()
        return p

    def _spawn(self, p: Proc) -> None:
        with p.log_path.open("ab") as logf:
            p.popen = subprocess.Popen(
                p.argv,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env={**os.environ, **p.env},
                start_new_session=True,
                preexec_fn=die_with_parent,
            )

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                procs = list(self.procs.values())
            for p in procs:
                if p.popen is None or p.stopping or p.popen.poll() is None:
                    continue
                rc = p.popen.returncode
                if p.restart and rc != 0:
                    p.restarts += 1
                    log.warning("%s exited with %s; restarting (%d)", p.name, rc, p.restarts)
                    time.sleep(min(5.0, 0.5 * 2 ** min(p.restarts, 4)))
                    self._spawn(p)

    def signal(self, name: str, sig: int) -> None:
        p = self.procs[name]
        if p.popen is not None and p.popen.poll() is None:
            p.popen.send_signal(sig)

    def stop(self, name: str, timeout: float = 20.0) -> int | None:
        p = self.procs[name]
        p.stopping = True
        if p.popen is None:
            return None
        if p.popen.poll() is None:
            p.popen.send_signal(signal.SIGTERM)
            try:
                p.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                log.error("%s did not stop within %.0fs; killing", p.name, timeout)
                p.popen.kill()
                p.popen.wait(5)
        return p.popen.returncode

    def stop_all(self, timeout: float = 20.0) -> None:
        self._stop.set()
        for name in reversed(list(self.procs)):
            self.stop(name, timeout)
