"""Install size: the edge-only venv on disk, and the largest packages in it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------- install size


def _du_kb(path: Path) -> int:
    out = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def _site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python*/site-packages"))
    if not found:
        raise RuntimeError(f"no site-packages under {venv}")
    return found[0]


def _top_entries(sp: Path, k: int = 8) -> list[tuple[str, float]]:
    sizes = []
    for entry in sp.iterdir():
        if entry.name.endswith((".dist-info", ".pth")) or entry.name == "__pycache__":
            continue
        sizes.append((entry.name, _du_kb(entry) / 1024))
    return sorted(sizes, key=lambda x: -x[1])[:k]


def bench_install(tmp: Path) -> dict[str, Any]:
    """``pip install .`` (no extras) into a fresh venv; sources copied so no build/ lands in the repo."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for pkg in ("edge_agent", "cloud_controller", "edgeloop_sim"):
        shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    venv = tmp / "edge-venv"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    p = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", "-q", str(src)],
        capture_output=True,
        text=True,
    )
    if p.returncode != 0:
        raise RuntimeError(f"pip install failed: {p.stderr[-2000:]}")
    secs = time.perf_counter() - t0
    sp = _site_packages(venv)
    names = {e.name.lower() for e in sp.iterdir()}
    heavy = sorted(
        n for n in ("torch", "transformers", "kubernetes", "sentence_transformers", "aiohttp") if n in names
    )
    res: dict[str, Any] = {
        "edge_mb": _du_kb(sp) / 1024,
        "edge_venv_mb": _du_kb(venv) / 1024,
        "top": _top_entries(sp),
        "heavy": heavy,
        "install_s": secs,
    }
    full = REPO / ".venv"
    if full.exists():
        fsp = _site_packages(full)
        res["full_mb"] = _du_kb(fsp) / 1024
        res["full_top"] = _top_entries(fsp, 5)
    return res
