"""``cloud-controller keys``: the release signing key pair (the work is in ``releases/signing.py``)."""

from __future__ import annotations

from cloud_controller.releases.signing import configure_keys_command, run_keys_command
from edge_agent.ops.cli_kit import Verb

VERBS = (
    Verb(
        "keys",
        "release signing key: 'keys init --dir DIR', 'keys id PATH'",
        run_keys_command,
        configure_keys_command,
    ),
)
