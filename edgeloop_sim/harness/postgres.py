"""A throwaway PostgreSQL server for tests and benchmarks: own data dir, free port, unix socket.

Uses Debian's ``postgresql`` binaries (``/usr/lib/postgresql/*/bin``; ``make
setup`` installs the package). PostgreSQL refuses to run as root, so as root
the server runs as the ``postgres`` user (created by the package) through
``runuser`` and the temporary directory is handed to it. Authentication is
``trust`` on the socket and localhost: the server lives as long as the test
session and listens on 127.0.0.1 only.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["PostgresServer", "find_bindir"]


def find_bindir() -> Path | None:
    """The newest installed ``/usr/lib/postgresql/N/bin`` holding initdb, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    def __init__(self, bindir: Path | None = None, *, start_timeout_s: float = 30.0,
                 durable: bool = False) -> None:
        found = bindir or find_bindir()
        if found is None:
            raise FileNotFoundError("PostgreSQL binaries not found (apt-get install postgresql)")
        self.bindir = found
        self.start_timeout_s = start_timeout_s
        # Tests run without fsync (speed); a benchmark wants the durability a deployment has.
        self.durable = durable
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="edgeloop-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self._user: str | None = "postgres" if os.geteuid() == 0 else None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", self._user, "--", *args] if self._user else list(args)

    def start(self) -> PostgresServer:
        if self._user:
            pw = pwd.getpwnam(self._user)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        subprocess.run(
            self._cmd(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                      "-E", "UTF8", "--no-sync"),
            check=True, capture_output=True,
        )
        log = open(self.log_path, "wb")
        if self._user:
            pw = pwd.getpwnam(self._user)
            os.chown(self.log_path, pw.pw_uid, pw.pw_gid)
        self._proc = subprocess.Popen(
            self._cmd(str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                      "-h", "127.0.0.1", "-k", str(self.root), "-c", "max_connections=200",
                      *(() if self.durable else ("-c", "fsync=off", "-c", "full_page_writes=off"))),
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"postgres exited ({self._proc.returncode}):\n{self.tail_log()}")
            ok = subprocess.run(
                [str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-t", "1"],
                capture_output=True,
            )
            if ok.returncode == 0:
                return
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"postgres not ready after {self.start_timeout_s}s:\n{self.tail_log()}")

    def tail_log(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def create_database(self, name: str) -> str:
        """A fresh database on this server; its DSN (tests isolate themselves this way)."""
        import psycopg  # the cloud extra; the launcher itself needs only the binaries

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        """Fast shutdown (``pg_ctl stop -m fast``: runuser does not pass signals on), then kill."""
        if self._proc is not None and self._proc.poll() is None:
            subprocess.run(self._cmd(str(self.bindir / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast",
                                     "-w", "-t", "15"), capture_output=True)
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
