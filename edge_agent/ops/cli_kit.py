"""The one way both command lines are built: ``edge-agent`` and ``cloud-controller``.

A verb is a name, a help line, an argument builder and a runner; a ``Cli`` is
the program's registry of verbs. Both programs share the global
``--log-level`` (given before the verb) and the error style: a bad flag or a
bad setting ends the verb with exit status 2 and one line on stderr
(``PROG VERB: message``), never a traceback. It lives on the edge side because
the cloud may import the edge and never the reverse.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class UsageError(Exception):
    """A bad flag, setting or config: the verb prints this as one line and exits 2."""


def _no_args(p: argparse.ArgumentParser) -> None:
    """The verb takes no options."""


@dataclass(frozen=True)
class Verb:
    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    configure: Callable[[argparse.ArgumentParser], None] = _no_args


class Cli:
    """A program's verbs. ``basic_logging``: configure stderr logging at ``--log-level`` (default INFO)
    before the verb runs; without it the verb reads ``args.log_level`` (None when not given) itself,
    as the edge agent does (its config file decides the log format and level)."""

    def __init__(
        self,
        prog: str,
        verbs: Iterable[Verb] = (),
        *,
        description: str | None = None,
        version: str | None = None,
        basic_logging: bool = True,
    ) -> None:
        self.prog = prog
        self.description = description
        self.version = version
        self.basic_logging = basic_logging
        self.verbs: dict[str, Verb] = {}
        self.extend(verbs)

    def extend(self, verbs: Iterable[Verb]) -> None:
        for v in verbs:
            if v.name in self.verbs:
                raise ValueError(f"{self.prog}: verb {v.name!r} registered twice")
            self.verbs[v.name] = v

    def parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog=self.prog, description=self.description)
        if self.version is not None:
            parser.add_argument("--version", action="version", version=f"{self.prog} {self.version}")
        parser.add_argument(
            "--log-level", type=str.upper, choices=LOG_LEVELS, default=None, help="default: INFO"
        )
        sub = parser.add_subparsers(dest="command", required=True)
        for v in self.verbs.values():
            v.configure(sub.add_parser(v.name, help=v.help))
        return parser

    def main(self, argv: Sequence[str] | None = None) -> int:
        args = self.parser().parse_args(argv)
        if self.basic_logging:
            logging.basicConfig(
                level=args.log_level or "INFO", format="%(asctime)s %(levelname)s %(name)s %(message)s"
            )
        try:
            return int(self.verbs[args.command].run(args))
        except UsageError as exc:
            print(f"{self.prog} {args.command}: {exc}", file=sys.stderr)
            return 2
