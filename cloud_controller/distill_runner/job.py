"""One DistillationJob run, as a process: collect, re-distill, quantize, evaluate; write result.json.

::

    python -m cloud_controller.distill_runner --spec spec.json --out DIR --progress progress.jsonl

Why a separate process (locally) or a Kubernetes Job (cluster): training is
minutes of CPU and hundreds of MB of torch; the controller must keep
reconciling meanwhile, and a crash or OOM of training must not take it down.
The process talks to the controller only through files in its work directory
(:mod:`cloud_controller.distill_runner.protocol`), the same in both modes.

The runner never signs and never touches the API server: it has no key and no
token (least privilege); the controller gates, signs and publishes.

The task picks the half that runs: :mod:`cloud_controller.distill_runner.chat_job`
(SNIPS base data) or :mod:`cloud_controller.distill_runner.sensor_job` (SKAB);
both report the same ``fixed_*`` / ``new_*`` metrics before and after, so the
reconciler's gate does not care which task it judges.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cloud_controller.distill_runner.chat_job import run_chat
from cloud_controller.distill_runner.collect import load_hard_examples
from cloud_controller.distill_runner.exchange import RESULT, JobExchange
from cloud_controller.distill_runner.protocol import ProgressLog, RunnerSpec, resolve_paths, write_json_atomic
from cloud_controller.distill_runner.sensor_job import run_sensor

__all__ = ["main", "run"]


def run(spec: RunnerSpec, out: Path, progress: ProgressLog) -> dict[str, Any]:
    """The whole job; returns what goes into result.json (``ok`` true)."""
    if spec.task == "sensor":
        return run_sensor(spec, out, progress, load_hard_examples(spec))
    if spec.held_back:
        raise ValueError("data.heldBack is supported for task sensor only")
    return run_chat(spec, out, progress)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m cloud_controller.distill_runner",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--spec", type=Path, required=True, help="RunnerSpec JSON")
    ap.add_argument("--out", type=Path, required=True, help="work directory (result.json goes here)")
    ap.add_argument(
        "--progress", type=Path, default=None, help="progress JSON lines (default OUT/progress.jsonl)"
    )
    ap.add_argument(
        "--exchange-uid",
        default=None,
        metavar="UID",
        help="cluster mode: pull the inputs of job UID from the shared store (EDGELOOP_STORE_DSN) into OUT, "
        "push progress, bundle and result back",
    )
    args = ap.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    uid: str | None = args.exchange_uid
    exchange: JobExchange | None = None
    if uid:
        dsn = os.environ.get("EDGELOOP_STORE_DSN")
        if not dsn:
            print("distill_runner: --exchange-uid needs EDGELOOP_STORE_DSN", file=sys.stderr)
            return 2
        exchange = JobExchange(dsn)
        exchange.pull(uid, out)
    progress_path: Path = args.progress or out / "progress.jsonl"

    def push_progress() -> None:
        if exchange is not None and uid:
            exchange.push(uid, out, [progress_path.relative_to(out).as_posix()])

    progress = ProgressLog(progress_path, after=push_progress if exchange is not None else None)
    code = 0
    try:
        spec = resolve_paths(RunnerSpec.model_validate_json(args.spec.read_bytes()), out)
        result = run(spec, out, progress)
    except Exception as exc:  # reported in result.json: the reconciler turns it into Failed
        result = {
            "ok": False,
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc()[-4000:],
        }
        print(f"distill_runner failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        code = 1
    if exchange is not None and uid:
        if result.get("ok") and result.get("bundle"):
            exchange.push(uid, out, [Path(str(result["bundle"])).name])  # before the result: see the module
    write_json_atomic(out / RESULT, result)
    if exchange is not None and uid:
        exchange.push(uid, out, [RESULT])
        exchange.close()
    return code
