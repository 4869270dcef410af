"""``edge-agent``: run the daemon, check a config, inspect the local store."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from edge_agent import __version__
from edge_agent.config import load_config
from edge_agent.protocol.errors import ConfigError


def _check_config(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
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


def _run(args: argparse.Namespace) -> int:
    _limit_malloc_arenas()
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    from edge_agent.daemon import run_agent

    return run_agent(cfg, Path(args.config))


def _dead_letters(args: argparse.Namespace) -> int:
    from edge_agent.outbox.agent_store import AgentStore

    cfg = load_config(args.config)

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
    from edge_agent.config_reference import render

    print(render(), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent", description="EdgeLoop edge agent")
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the daemon (systemd Type=notify aware)")
    p.add_argument("--config", "-c", required=True)
    p.set_defaults(func=_run)
    p = sub.add_parser(
        "check-config", help="validate a config file and print every error with its field path"
    )
    p.add_argument("config")
    p.set_defaults(func=_check_config)
    p = sub.add_parser("dead-letters", help="print the newest rejected inbound messages")
    p.add_argument("--config", "-c", required=True)
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=_dead_letters)
    p = sub.add_parser("config-reference", help="print the configuration reference (Markdown)")
    p.set_defaults(func=_config_reference)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
