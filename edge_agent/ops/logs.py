"""Structured logging for the agent: JSON lines or plain text, with secrets redacted.

Why the pieces exist:

* JSON lines carry ``extra=`` fields as real keys, so a log shipper can index
  ``device`` or ``batch_id`` without parsing prose.
* Redaction runs as a *handler* filter, not a logger filter: logger filters do
  not see records propagated from child loggers (``paho``, ``edge_agent.x``),
  handler filters see everything that is about to be written.
* Under systemd (``$JOURNAL_STREAM`` names our stderr) journald stamps each line
  itself, so text mode drops its own timestamp; each line also gets a ``<N>``
  syslog priority prefix, which journald strips and turns into the entry's
  PRIORITY, so ``journalctl -p warning`` works.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from edge_agent.config import LogConfig

__all__ = [
    "JsonFormatter",
    "RedactingFilter",
    "TextFormatter",
    "redact",
    "redact_text",
    "setup_logging",
    "under_journal",
]

MASK = "***"

# Key names whose values are secrets. A key is sensitive when its last segment
# names a secret (password, access_token, api_key, private_key) or it mentions a
# password or secret anywhere; ``tokens`` (a count) and ``key_file`` (a path) are not.
_SECRET_SEGMENTS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "token",
        "secret",
        "key",
        "apikey",
        "credential",
        "credentials",
        "authorization",
        "cookie",
        "passphrase",
    }
)
_SEGMENT_SPLIT = re.compile(r"[_.\-\s]+|(?<=[a-z])(?=[A-Z])")

# ``password=hunter2``, ``"token": "abc"``, ``api_key: xyz`` inside free text.
_INLINE_SECRET = re.compile(
    r"""(?ix)
    (?P<key>["']?[\w.-]*(?:passw(?:or)?d|pwd|token|secret|api[_-]?key|private[_-]?key|\bkey)["']?)
    (?P<sep>\s*[:=]\s*)
    (?P<value>"[^"]*"|'[^']*'|[^\s,;&)}\]]+)
    """
)
# Credentials in URLs: scheme://user:password@host
_URL_CREDENTIALS = re.compile(r"(?P<pre>[a-z][a-z0-9+.-]*://[^/\s:@]+:)(?P<pw>[^@\s/]+)(?P<at>@)", re.I)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[a-z0-9._~+/=-]{8,}")

# Attributes every LogRecord has; anything else came from ``extra=``.
_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "node",
}

_OWN_HANDLER_ATTR = "_edgeloop_handler"

# syslog priorities for the journald line prefix.
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def is_sensitive_key(key: str) -> bool:
    segments = [seg.lower() for seg in _SEGMENT_SPLIT.split(key) if seg]
    if not segments:
        return False
    lowered = key.lower()
    return segments[-1] in _SECRET_SEGMENTS or "password" in lowered or "secret" in lowered


def redact_text(text: str) -> str:
    """Mask secrets that appear inline in free text."""

    def _inline(m: re.Match[str]) -> str:
        value = m.group("value")
        quote = value[0] if value[:1] in {'"', "'"} else ""
        return f"{m.group('key')}{m.group('sep')}{quote}{MASK}{quote}"

    text = _INLINE_SECRET.sub(_inline, text)
    text = _URL_CREDENTIALS.sub(lambda m: f"{m.group('pre')}{MASK}{m.group('at')}", text)
    return _BEARER.sub(lambda m: f"{m.group(1)} {MASK}", text)


def redact(value: Any, key: str | None = None, _depth: int = 0) -> Any:
    """Return ``value`` with secrets masked: sensitive keys, then inline patterns in strings."""
    if key is not None and is_sensitive_key(key) and value is not None:
        return MASK
    if _depth > 8:
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: redact(v, str(k), _depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(v, None, _depth + 1) for v in value)
    return value


class RedactingFilter(logging.Filter):
    """Masks secrets in the message, its arguments and ``extra=`` fields, in place.

    The message is rendered first (``msg % args``) and then redacted, because a
    secret passed as an argument only becomes visible text after formatting.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the record
            message = f"{record.msg!r} % {record.args!r}"
        record.msg = redact_text(message)
        record.args = None
        for name, value in list(record.__dict__.items()):
            if name not in _STANDARD_ATTRS:
                record.__dict__[name] = redact(value, name)
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, node, then extra fields."""

    def __init__(self, node_id: str, journal: bool = False) -> None:
        super().__init__()
        self.node_id = node_id
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "node": self.node_id,
        }
        for key, value in _extras(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exc"] = redact_text(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = redact_text(record.stack_info)
        line = json.dumps(entry, default=str, ensure_ascii=False)
        return _prefix(record, line) if self.journal else line


class TextFormatter(logging.Formatter):
    """Human-readable lines; ``key=value`` extras appended; no timestamp under journald."""

    def __init__(self, node_id: str, journal: bool = False) -> None:
        fmt = "%(levelname)s %(name)s [%(node)s] %(message)s"
        if not journal:
            fmt = "%(asctime)s " + fmt
        super().__init__(fmt)
        self.node_id = node_id
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        record.node = self.node_id
        line = super().format(record)
        extras = _extras(record)
        if extras:
            tail = " ".join(
                f"{k}={json.dumps(v, default=str, ensure_ascii=False)}" for k, v in extras.items()
            )
            first, nl, rest = line.partition("\n")
            line = f"{first} {tail}{nl}{rest}"
        if record.exc_info or record.stack_info:
            line = redact_text(line)
        return _prefix(record, line) if self.journal else line


def _prefix(record: logging.LogRecord, line: str) -> str:
    prio = _PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
    return f"<{prio}>{line}"


def under_journal(stream: TextIO, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``stream`` is the journald stream systemd connected us to.

    ``$JOURNAL_STREAM`` is ``DEV:INODE`` of that stream; a child process whose
    stderr was redirected still inherits the variable, so compare when we can.
    """
    value = environ.get("JOURNAL_STREAM", "")
    if not value:
        return False
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return True  # not a real file (tests): trust the variable
    try:
        st = os.fstat(fd)
        dev, _, ino = value.partition(":")
        return int(dev) == st.st_dev and int(ino) == st.st_ino
    except (OSError, ValueError):
        return False


def setup_logging(
    cfg: LogConfig,
    node_id: str,
    stream: TextIO | None = None,
    environ: Mapping[str, str] = os.environ,
) -> logging.Handler:
    """Install the agent's handler on the root logger, replacing an earlier one.

    Calling it again (config reload, several agents in a test) swaps our handler
    instead of stacking a second one, and leaves handlers others added alone
    (pytest's caplog, for instance). ``stream`` defaults to the *current*
    ``sys.stderr``.
    """
    stream = sys.stderr if stream is None else stream
    journal = under_journal(stream, environ)
    handler = logging.StreamHandler(stream)
    formatter: logging.Formatter
    if cfg.format == "json":
        formatter = JsonFormatter(node_id, journal=journal)
    else:
        formatter = TextFormatter(node_id, journal=journal)
    handler.setFormatter(formatter)
    handler.addFilter(RedactingFilter())
    setattr(handler, _OWN_HANDLER_ATTR, True)

    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _OWN_HANDLER_ATTR, False):
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(cfg.level)
    # aiosqlite logs every statement with its parameters at DEBUG: dead-letter payloads (raw PII) included.
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, logging.getLevelName(cfg.level)))
    return handler
