"""sd_notify against real AF_UNIX datagram sockets, in-process and from a real subprocess."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.ops.sdnotify import Notifier, watchdog_interval

REPO = Path(__file__).resolve().parents[2]


class Listener:
    """A bound notify socket, as systemd would hold it; receives with SO_PASSCRED."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def recv(self, timeout: float = 5.0) -> tuple[dict[str, str], int | None]:
        self.sock.settimeout(timeout)
        data, ancdata, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = None
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid, _uid, _gid = struct.unpack("iII", payload[:12])
        text = data.decode()
        assert text.endswith("\n")
        fields = dict(line.split("=", 1) for line in text.splitlines())
        return fields, pid


def _bind(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    # systemd uses SO_PASSCRED to learn the sender's pid (NotifyAccess=main).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.bind(address)
    return sock


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Listener]:
    if request.param == "path":
        path = tmp_path / "notify.sock"
        if len(os.fsencode(path)) >= 100:  # sun_path is 108 bytes
            pytest.skip("tmp_path too long for an AF_UNIX socket path")
        sock = _bind(str(path))
        value = str(path)
    else:
        name = f"edgeloop-test-{uuid.uuid4().hex}"
        sock = _bind(b"\0" + name.encode())
        value = "@" + name
    try:
        yield Listener(sock, value)
    finally:
        sock.close()


def test_notifier_sends_each_state(listener: Listener) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": listener.env_value})
    assert n.enabled
    try:
        assert n.ready()
        assert listener.recv()[0] == {"READY": "1"}
        assert n.status("connected, 3 devices")
        assert listener.recv()[0] == {"STATUS": "connected, 3 devices"}
        assert n.watchdog()
        assert listener.recv()[0] == {"WATCHDOG": "1"}
        assert n.stopping()
        assert listener.recv()[0] == {"STOPPING": "1"}
        assert n.ready(status="serving")
        assert listener.recv()[0] == {"READY": "1", "STATUS": "serving"}
        assert n.sent == 5 and n.send_failures == 0
    finally:
        n.close()


def test_reloading_carries_monotonic_usec(listener: Listener) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": listener.env_value})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    n.close()
    fields, _ = listener.recv()
    assert fields["RELOADING"] == "1"
    assert before <= int(fields["MONOTONIC_USEC"]) <= after


def test_newline_in_value_cannot_inject_a_field(listener: Listener) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": listener.env_value})
    assert n.status("bad\nREADY=1")
    n.close()
    fields, _ = listener.recv()
    assert fields == {"STATUS": "bad READY=1"}


def test_subprocess_notifies_with_its_own_pid(listener: Listener) -> None:
    """A real process, as systemd would start it: the sender pid is the child's (NotifyAccess=main)."""
    code = (
        "from edge_agent.ops.sdnotify import Notifier\n"
        "n = Notifier.from_env()\n"
        "assert n.ready() and n.status('up') and n.watchdog() and n.stopping()\n"
    )
    env = {**os.environ, "NOTIFY_SOCKET": listener.env_value}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO)
    try:
        got = [listener.recv() for _ in range(4)]
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert [fields for fields, _ in got] == [
        {"READY": "1"},
        {"STATUS": "up"},
        {"WATCHDOG": "1"},
        {"STOPPING": "1"},
    ]
    assert {pid for _, pid in got} == {proc.pid}


def test_noop_when_unset() -> None:
    n = Notifier.from_env({})
    assert not n.enabled
    assert n.ready() is False
    assert n.watchdog() is False
    assert n.notify(STATUS="x") is False
    assert n._sock is None  # never opened a socket
    assert n.sent == 0 and n.send_failures == 0


def test_constructor_opens_nothing(listener: Listener) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": listener.env_value})
    assert n._sock is None
    n.close()


def test_send_failure_is_counted_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    with caplog.at_level("DEBUG", logger="edge_agent.ops.sdnotify"):
        assert n.ready() is False
        assert n.watchdog() is False
    n.close()
    assert n.send_failures == 2 and n.sent == 0
    assert "sd_notify" in caplog.text


def test_unsupported_address_is_disabled() -> None:
    assert not Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled
    assert not Notifier.from_env({"NOTIFY_SOCKET": "relative/path"}).enabled


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "500000"}, 0.5),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env) == expected


def test_watchdog_interval_explicit_pid() -> None:
    env = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "4242"}
    assert watchdog_interval(env, pid=4242) == 2.0
    assert watchdog_interval(env, pid=1) is None
