"""``edge-agent``: run the daemon, check a config, inspect the local store.

Built with the CLI kit ``cloud-controller`` uses too (``edge_agent/ops/cli_kit.py``):
the same ``--log-level`` before the verb and the same error style. The agent's
log format and level come from its config; ``--log-level`` overrides the level
for ``run`` (a flag beats ``EDGE_AGENT_LOG__LEVEL`` and the file).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from edge_agent import __version__
from edge_agent.config import AgentConfig, load_config
from edge_agent.ops.cli_kit import Cli, UsageError, Verb
from edge_agent.protocol.errors import ConfigError


def _check_config(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:  # this verb's job is the full list, one error per line
        print(f"{exc.source}: {len(exc.problems)} error(s)", file=sys.stderr)
        for path, msg in exc.problems:
            print(f"  {path or '<root>'}: {msg}", file=sys.stderr)
        return 2
    print(f"{args.config}: ok (node {cfg.node_id}, broker {cfg.mqtt.host}:{cfg.mqtt.port}, db {cfg.db_path})")
    return 0


def _limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's per-thread malloc arenas before any thread starts.

    onnxruntime, aiosqlite and the inference executor each run threads; by
    default glibc gives threads their own arenas (up to 8 per core), whose
    fragmentation is most of the agent's RSS growth. Same as MALLOC_ARENA_MAX.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def _flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Config values given as flags (the highest precedence)."""
    return {"log": {"level": args.log_level}} if args.log_level else {}


def load_or_fail(args: argparse.Namespace) -> AgentConfig:
    """The config, or one line naming every bad field (exit 2, the CLI kit's style)."""
    try:
        return load_config(args.config, overrides=_flag_overrides(args))
    except ConfigError as exc:
        problems = "; ".join(f"{path or '<root>'}: {msg}" for path, msg in exc.problems)
        raise UsageError(f"invalid config {exc.source}: {problems}") from exc


def _run(args: argparse.Namespace) -> int:
    _limit_malloc_arenas()
    cfg = load_or_fail(args)
    from edge_agent.daemon import run_agent  # the daemon's imports (onnxruntime) only for this verb

    return run_agent(cfg, Path(args.config))


def _dead_letters(args: argparse.Namespace) -> int:
    from edge_agent.outbox.agent_store import AgentStore

    cfg = load_or_fail(args)

    async def read() -> list[dict[str, object]]:
        store = AgentStore(cfg.db_path, cfg.outbox)
        await store.open()
        try:
            return [
                {
                    "ts": d.ts,
                    "topic": d.topic,
                    "reason": d.reason,
                    "detail": d.detail,
                    "bytes": len(d.payload),
                }
                for d in await store.dead_letters(args.limit)
            ]
        finally:
            await store.close()

    for row in asyncio.run(read()):
        print(json.dumps(row))
    return 0


def _config_reference(args: argparse.Namespace) -> int:
    from edge_agent.ops.config_reference import render

    print(render(), end="")
    return 0


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", required=True, help="YAML or TOML config file")


def _check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config")


def _dead_letter_args(p: argparse.ArgumentParser) -> None:
    _config_arg(p)
    p.add_argument("--limit", type=int, default=50)


VERBS = (
    Verb("run", "run the daemon (systemd Type=notify aware)", _run, _config_arg),
    Verb(
        "check-config",
        "validate a config file and print every error with its field path",
        _check_config,
        _check_args,
    ),
    Verb("dead-letters", "print the newest rejected inbound messages", _dead_letters, _dead_letter_args),
    Verb("config-reference", "print the configuration reference (Markdown)", _config_reference),
)
CLI = Cli("edge-agent", VERBS, description="EdgeLoop edge agent", version=__version__, basic_logging=False)


def main(argv: list[str] | None = None) -> int:
    return CLI.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
