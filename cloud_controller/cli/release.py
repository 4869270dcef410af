"""``cloud-controller release``: sign a bundle into the artifact store (the work is in ``releases/``)."""

from __future__ import annotations

from cloud_controller.releases.release_command import configure_release_command, run_release_command
from edge_agent.ops.cli_kit import Verb

VERBS = (
    Verb(
        "release",
        "sign a bundle into the artifact store (--broker HOST:PORT also publishes it)",
        run_release_command,
        configure_release_command,
    ),
)
