"""``cloud-controller``: the one registry of verbs; each verb lives in its own module of this package.

Adding a verb is a module with a ``VERBS`` tuple and one line below; the
parser, ``--log-level`` and the error style come from the CLI kit the edge
agent's command line uses too (``edge_agent/ops/cli_kit.py``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from cloud_controller.cli import call, keys, kubectl, receive, release, run, totals, train
from cloud_controller.cli import settings_reference as config_reference
from edge_agent.ops.cli_kit import Cli

CLI = Cli("cloud-controller")
for _module in (receive, totals, kubectl, keys, release, train, run, call, config_reference):
    CLI.extend(_module.VERBS)


def main(argv: Sequence[str] | None = None) -> int:
    return CLI.main(argv)


if __name__ == "__main__":
    sys.exit(main())
