"""Access to the shared, read-only datasets (SNIPS, SKAB, NAB).

The data lives outside the repository (``<repo>/../shared/datasets``) so that
nothing large ends up in git; ``EDGELOOP_DATA`` points elsewhere (CI, a
cluster volume) without code changes.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DataRootError", "data_root"]

_REPO_ROOT = Path(__file__).resolve().parents[2]


class DataRootError(FileNotFoundError):
    """The dataset root does not exist; the message names the path that was tried."""


def data_root(root: str | Path | None = None) -> Path:
    """Dataset root: ``root`` if given, else ``$EDGELOOP_DATA``, else ``<repo>/../shared/datasets``.

    Raises :class:`DataRootError` naming the resolved path (and where it came
    from) when the directory is missing, because a silent fallback would make
    a mis-set variable look like an empty dataset.
    """
    if root is not None:
        path, source = Path(root), "argument"
    elif os.environ.get("EDGELOOP_DATA"):
        path, source = Path(os.environ["EDGELOOP_DATA"]), "EDGELOOP_DATA"
    else:
        path, source = _REPO_ROOT.parent / "shared" / "datasets", "default"
    path = path.expanduser().resolve()
    if not path.is_dir():
        raise DataRootError(
            f"dataset root {path} (from {source}) does not exist; "
            "set EDGELOOP_DATA or pass root= to point at the shared datasets"
        )
    return path
