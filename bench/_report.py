"""Shared helpers for the bench scripts: machine facts and named blocks in ``docs/benchmarks.md``.

Every benchmark owns exactly one block between ``<!-- bench:NAME:start -->`` and
``<!-- bench:NAME:end -->``. Rewriting one block must never touch another: several
scripts (some run by other people) write the same file, and the numbers in it are
only trustworthy if each came out of the script that measured it, with the
machine and the exact command next to it.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import shlex
import statistics
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks.md"

__all__ = ["DOC", "REPO", "command_line", "machine_info", "machine_line", "write_block"]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, str]:
    """What a reader needs to judge a number: CPU, cores, RAM, interpreter, key library versions, date."""
    ram = _ram_gib()
    return {
        "cpu": cpu_model(),
        "cores": str(os.cpu_count() or "?"),
        "ram": f"{ram:.1f} GiB" if ram is not None else "?",
        "python": platform.python_version(),
        "onnxruntime": _version("onnxruntime"),
        "paho-mqtt": _version("paho-mqtt"),
        "os": f"{platform.system()} {platform.release()}",
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        # Other work on a shared machine skews every timing: say how busy it was.
        "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }


def machine_line(info: dict[str, str] | None = None) -> str:
    i = info or machine_info()
    return (
        f"{i['cpu']}, {i['cores']} cores, {i['ram']} RAM, Python {i['python']}, "
        f"onnxruntime {i['onnxruntime']}, paho-mqtt {i['paho-mqtt']}, {i['os']}; measured {i['date']}"
        + (f", load average {i['load']} (1/5/15 min) at start" if i.get("load") else "")
    )


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as it was run, relative to the repo when possible, so it can be pasted."""
    args = list(sys.argv if argv is None else argv)
    exe = sys.executable
    try:
        # absolute(), not resolve(): the venv's python is a symlink out of the repo.
        exe = os.path.relpath(exe, REPO) if Path(exe).absolute().is_relative_to(REPO) else exe
    except ValueError:
        pass
    if args:
        script = Path(args[0])
        if script.is_absolute() and script.resolve().is_relative_to(REPO):
            args[0] = str(script.resolve().relative_to(REPO))
    return shlex.join([exe, *args])


def proc_status_kb(pid: int | str, field: str) -> int:
    """One ``kB`` field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``, ...); 0 when absent."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def write_block(name: str, body: str, doc: Path = DOC) -> Path:
    """Replace (or append) the ``bench:NAME`` block of ``doc``; every other byte stays as it was.

    A file or markers that do not exist yet are created. A start marker without
    its end marker is an error rather than a guess: rewriting to the end of the
    file could eat someone else's block.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
        raise ValueError(f"bad block name {name!r}")
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    text = doc.read_text(encoding="utf-8") if doc.exists() else "# Benchmarks\n"
    i = text.find(start)
    if i < 0:
        if text.find(end) >= 0:
            raise ValueError(f"{doc}: {end} without {start}")
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    else:
        j = text.find(end, i)
        if j < 0:
            raise ValueError(f"{doc}: {start} without {end}; fix the file by hand")
        text = text[:i] + block + text[j + len(end) :]
    doc.parent.mkdir(parents=True, exist_ok=True)
    tmp = doc.with_name(f".{doc.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, doc)  # a reader (or a concurrent bench) never sees half a file
    return doc


def write_marked_block(doc: Path, block: str) -> Path:
    """``write_block`` for a block rendered with its own ``<!-- bench:NAME:start/end -->`` markers."""
    m = re.match(r"<!-- bench:([A-Za-z0-9][A-Za-z0-9_.-]{0,63}):start -->\n?", block)
    end = f"<!-- bench:{m.group(1)}:end -->" if m else ""
    if m is None or not block.rstrip().endswith(end):
        raise ValueError("block must start and end with its bench markers")
    return write_block(m.group(1), block[m.end() :].rstrip()[: -len(end)], doc)


def median_range(values: list[float], fmt: str = "{:.0f}") -> str:
    """``median (min-max)`` of repeated runs, or the one value: how every bench states its spread."""
    if len(values) == 1:
        return fmt.format(values[0])
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    return f"{fmt.format(statistics.median(values))} ({lo}-{hi})"
