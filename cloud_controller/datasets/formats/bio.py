"""The BIO folder format (the SNIPS/ATIS layout): ``<split>/seq.in``, ``seq.out``, ``label``.

One utterance per line in each of the three files: whitespace-separated
tokens, the same number of BIO tags, and the intent. Several intents on one
utterance are joined with ``#`` (``PlayMusic#AddToPlaylist``); they become one
composite class (see :func:`cloud_controller.datasets.formats.intents.composite_intent`).
A blank line in the middle of a file is an error, not a skipped utterance:
it almost always means the three files drifted apart.
"""

from __future__ import annotations

from pathlib import Path

from cloud_controller.datasets.formats.format_errors import DatasetFormatError, read_text_lines
from cloud_controller.datasets.formats.intents import composite_intent
from cloud_controller.datasets.snips import Example

__all__ = ["BIO_FILES", "has_bio_split", "load_bio_split"]

BIO_FILES = ("seq.in", "seq.out", "label")


def has_bio_split(root: Path, split: str) -> bool:
    return all((root / split / name).is_file() for name in BIO_FILES)


def load_bio_split(root: Path, split: str) -> list[Example]:
    """One split of a BIO folder; every problem names the file and the 1-based line."""
    base = root / split
    files = {name: read_text_lines(base / name) for name in BIO_FILES}
    counts = {name: len(lines) for name, lines in files.items()}
    if len(set(counts.values())) != 1:
        shortest = min(counts, key=lambda n: counts[n])
        raise DatasetFormatError(
            base / shortest,
            f"line counts differ ({', '.join(f'{n}={c}' for n, c in counts.items())})",
            counts[shortest] + 1,
        )
    out: list[Example] = []
    for i, (text, tag_line, label) in enumerate(zip(*files.values(), strict=True)):
        lineno = i + 1
        tokens, tags = text.split(), tag_line.split()
        for name, value in (("seq.in", tokens), ("seq.out", tags), ("label", label.split())):
            if not value:
                raise DatasetFormatError(base / name, "empty line", lineno)
        if len(tokens) != len(tags):
            raise DatasetFormatError(base / "seq.out", f"{len(tokens)} tokens but {len(tags)} tags", lineno)
        bad = next((t for t in tags if t != "O" and not t.startswith(("B-", "I-"))), None)
        if bad is not None:
            raise DatasetFormatError(base / "seq.out", f"tag {bad!r} is not O, B-x or I-x", lineno)
        out.append(Example(tuple(tokens), tuple(tags), composite_intent(label.strip())))
    return out
