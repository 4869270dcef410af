"""The systemd sd_notify protocol, without a dependency.

The protocol is one datagram of ``KEY=VALUE`` lines to the AF_UNIX socket named
by ``$NOTIFY_SOCKET`` (a filesystem path, or an abstract socket written with a
leading ``@``). The ``sdnotify`` PyPI package has been unmaintained since 2017
and the protocol is small, so it lives here.

Notification is best effort by design: a failed send must never take the agent
down (systemd would then restart a healthy process), so failures are logged at
debug level and counted in :attr:`Notifier.send_failures` instead of raised.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

__all__ = ["Notifier", "watchdog_interval"]


def _socket_address(value: str) -> str | bytes | None:
    """Translate ``$NOTIFY_SOCKET`` into a sendto() address, or None if unusable."""
    if not value:
        return None
    if value.startswith("@"):
        # Abstract namespace: the kernel name starts with a NUL byte instead of '@'.
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    # systemd also understands vsock:CID:PORT, which an edge device never uses.
    return None


class Notifier:
    """Sends state changes to the service manager; a no-op outside systemd.

    The socket is opened lazily on the first send, so constructing a Notifier
    has no side effects and is safe in tests and under ``--help``.
    """

    def __init__(self, address: str | None) -> None:
        self._raw_address = address
        self._address = _socket_address(address) if address else None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self.send_failures = 0
        self.sent = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        return cls(environ.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, **fields: object) -> bool:
        """Send ``KEY=value`` lines (keys upper-cased); return whether it was sent.

        Returns False both when disabled and on failure; neither raises.
        """
        if self._address is None:
            return False
        lines = []
        for key, value in fields.items():
            text = str(value)
            if "\n" in text:
                # A newline would split the value into a second, unintended assignment.
                text = text.replace("\n", " ")
            lines.append(f"{key.upper()}={text}")
        payload = ("\n".join(lines) + "\n").encode("utf-8", "replace")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(payload, self._address)
            except OSError as exc:
                self.send_failures += 1
                log.debug("sd_notify to %s failed: %s", self._raw_address, exc)
                return False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        if status is None:
            return self.notify(READY=1)
        return self.notify(READY=1, STATUS=status)

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def stopping(self) -> bool:
        return self.notify(STOPPING=1)

    def reloading(self) -> bool:
        # systemd 253+ (Type=notify-reload) wants MONOTONIC_USEC to tell this reload
        # apart from an earlier one; older versions ignore the unknown field.
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(RELOADING=1, MONOTONIC_USEC=monotonic_usec)

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def __repr__(self) -> str:
        return f"Notifier({self._raw_address!r})"


def watchdog_interval(environ: Mapping[str, str] = os.environ, pid: int | None = None) -> float | None:
    """The watchdog timeout in seconds from ``$WATCHDOG_USEC``, or None if not ours.

    The agent pings at half of this. ``$WATCHDOG_PID``, when set, names the process
    the watchdog is meant for; a child that inherited the environment must not
    ping on its parent's behalf.
    """
    raw = environ.get("WATCHDOG_USEC", "").strip()
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.debug("ignoring malformed WATCHDOG_USEC=%r", raw)
        return None
    if usec <= 0:
        return None
    wd_pid = environ.get("WATCHDOG_PID", "").strip()
    if wd_pid:
        try:
            if int(wd_pid) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            log.debug("ignoring malformed WATCHDOG_PID=%r", wd_pid)
            return None
    return usec / 1_000_000
