"""The one error type of the datasets room: a malformed file, named with its line.

Why one type: the ``train`` verb turns it into one line on stderr and exit
status 2, whatever the format; the original exception stays chained
(``raise ... from``) for a debugger.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DatasetFormatError", "read_text_lines"]


class DatasetFormatError(ValueError):
    """A dataset file cannot be used as given; ``str()`` is ``FILE[:LINE]: message``."""

    def __init__(self, path: str | Path, message: str, line: int | None = None) -> None:
        self.path = Path(path)
        self.line = line
        self.detail = message
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        super().__init__(f"{where}: {message}")


def read_text_lines(path: Path) -> list[str]:
    """The file's lines as UTF-8 text; a bad byte is reported with its line number, not a traceback."""
    if not path.is_file():
        raise DatasetFormatError(path, "file is missing")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DatasetFormatError(
            path, f"not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})", line
        ) from exc
    lines = text.removeprefix("\ufeff").splitlines()
    while lines and not lines[-1].strip():  # blank lines at the very end are an editor's, not data
        lines.pop()
    return lines
