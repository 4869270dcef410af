"""``cloud-controller train chat|sensor``: train on your own data, end with a bundle ready to release.

The work is in :mod:`cloud_controller.training.chat_pipeline` and
:mod:`cloud_controller.training.sensor_pipeline` (the train extra: torch);
they are imported when the verb runs so that the rest of the command line
works on an install without torch. A malformed dataset ends the verb with one
line naming the file and line, and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
from pathlib import Path

from cloud_controller.datasets.formats.format_errors import DatasetFormatError
from edge_agent.ops.cli_kit import UsageError, Verb

__all__ = ["VERBS"]


def configure_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("task", choices=["chat", "sensor"])
    p.add_argument("--data", type=Path, required=True, help="dataset folder or file (see docs/training.md)")
    p.add_argument("--format", default="auto", choices=["auto", "bio", "jsonl", "csv"])
    p.add_argument("--config", default="full", choices=["tiny", "full"])
    p.add_argument("--out", type=Path, required=True, help="work dir: rerunning resumes it")
    p.add_argument("--name", default=None, help="model name in the bundle (default from the data path)")
    p.add_argument("--epochs", type=int, default=None, help="override the config's epochs (smoke runs)")
    p.add_argument("--max-train", type=int, default=None, help="train on at most N examples (smoke runs)")
    p.add_argument("--no-teacher", action="store_true", help="chat: train the student on hard labels only")
    p.add_argument("--windows", type=Path, default=None, help="sensor: NAB-style anomaly windows JSON")
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the student (chat: and of any split cut from train; the teacher is reused); default 0",
    )


def run_train(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("torch") is None:
        raise UsageError("needs the train extra (pip install 'edgeloop[train]')")
    # A training run owns the machine: every core, unless EDGELOOP_TORCH_THREADS says otherwise (the
    # library default of 1 thread is for a distillation job sharing a box with agents and the controller).
    os.environ.setdefault("EDGELOOP_TORCH_THREADS", str(os.cpu_count() or 1))
    if args.log_level is None:  # onnxruntime's quantizer logs every tensor at INFO on the root logger
        logging.getLogger().setLevel(logging.WARNING)
    try:
        if args.task == "chat":
            if args.format == "csv":
                raise UsageError("--format csv is for sensor data; chat takes auto, bio or jsonl")
            from cloud_controller.training.chat_pipeline import ChatRunOptions, run_chat

            report = run_chat(
                ChatRunOptions(
                    data=args.data,
                    out=args.out,
                    format=args.format,
                    config=args.config,
                    teacher=not args.no_teacher,
                    epochs=args.epochs,
                    max_train=args.max_train,
                    name=args.name,
                    seed=args.seed,
                ),
                log=lambda m: print(m, file=sys.stderr),
            )
        else:
            if args.format not in ("auto", "csv"):
                raise UsageError(f"--format {args.format} is for chat data; sensor takes auto or csv")
            from cloud_controller.training.sensor_pipeline import SensorRunOptions, run_sensor

            report = run_sensor(
                SensorRunOptions(
                    data=args.data,
                    out=args.out,
                    config=args.config,
                    windows=args.windows,
                    epochs=args.epochs,
                    name=args.name,
                    seed=args.seed,
                ),
                log=lambda m: print(m, file=sys.stderr),
            )
    except DatasetFormatError as exc:
        raise UsageError(str(exc)) from exc
    print(json.dumps({"bundle": report["bundle"], "report": str(args.out / "report.md")}))
    return 0


VERBS = (
    Verb(
        "train",
        "train chat or sensor models on your own data: teacher, distilled int8 student, report, bundle",
        run_train,
        configure_train,
    ),
)
