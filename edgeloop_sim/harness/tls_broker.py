"""The shipped broker (mutual TLS, per-node ACL) for tests and the demo, with its own small CA.

Certificates come from ``deploy/pki/issue-node-cert.sh`` and the broker runs
``deploy/kubernetes/broker/mosquitto.conf`` with its ``acl``, only file paths
and the port rewritten: what is tested is what is deployed.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

from edge_agent.config import MqttConfig, TlsConfig
from edgeloop_sim.broker import Broker

REPO = Path(__file__).resolve().parents[2]
DEPLOY_CONF = REPO / "deploy" / "kubernetes" / "broker" / "mosquitto.conf"
DEPLOY_ACL = REPO / "deploy" / "kubernetes" / "broker" / "acl"
ISSUE = REPO / "deploy" / "pki" / "issue-node-cert.sh"
CONTROLLER = "edgeloop-controller"


class Pki:
    """A CA directory with a broker certificate (for 127.0.0.1) and one client certificate per name."""

    def __init__(self, directory: Path, names: Iterable[str] = ()) -> None:
        self.dir = directory
        if not (directory / "ca.crt").exists():
            self._issue("init-ca", str(directory))
            self._issue(
                "issue",
                str(directory),
                "broker",
                "--server",
                "--san",
                "IP:127.0.0.1",
                "--san",
                "DNS:localhost",
            )
        for name in names:
            self.add(name)

    @staticmethod
    def _issue(*args: str) -> None:
        subprocess.run(["bash", str(ISSUE), *args], check=True, capture_output=True, timeout=30)

    def add(self, name: str) -> None:
        if not (self.dir / f"{name}.crt").exists():
            self._issue("issue", str(self.dir), name)

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    def cert(self, name: str) -> tuple[Path, Path]:
        return self.dir / f"{name}.crt", self.dir / f"{name}.key"

    def tls(self, name: str) -> TlsConfig:
        crt, key = self.cert(name)
        return TlsConfig(ca_file=self.ca, cert_file=crt, key_file=key)


def rewrite(text: str, replacements: dict[str, str]) -> str:
    """Replace the value of each ``key`` line, which must be there exactly once (else the config drifted)."""
    for key, value in replacements.items():
        pattern = re.compile(rf"^{re.escape(key)}\s.*$", re.MULTILINE)
        found = pattern.findall(text)
        if len(found) != 1:
            raise ValueError(f"expected one {key!r} line in {DEPLOY_CONF}, found {found}")
        line = f"{key} {value}"
        text = pattern.sub(lambda _m: line, text)  # noqa: B023 - used right here
    return text


class TlsBroker(Broker):
    """The shared Broker lifecycle with the deploy/ config, its ACL and ``pki``'s certificates."""

    def __init__(self, directory: Path, pki: Pki, acl: Path = DEPLOY_ACL) -> None:
        super().__init__(directory)
        self.pki = pki
        self.acl = acl

    def config_text(self) -> str:
        crt, key = self.pki.cert("broker")
        text = rewrite(
            DEPLOY_CONF.read_text(encoding="utf-8"),
            {
                "listener": f"{self.port} {self.host}",
                "cafile": str(self.pki.ca),
                "certfile": str(crt),
                "keyfile": str(key),
                "acl_file": str(self.acl),
                "persistence_location": f"{self.directory}/",
                "log_dest": f"file {self.log_path}",
            },
        )
        if os.geteuid() == 0:
            # Started as root, mosquitto drops to user "mosquitto", which cannot read 0600 keys here.
            text += "\n# test only: read the root-owned keys\nuser root\n"
        return text

    def mqtt(self, name: str, **overrides: object) -> MqttConfig:
        """Client settings for identity ``name`` (its certificate CN)."""
        base: dict[str, object] = {
            "host": self.host,
            "port": self.port,
            "tls": self.pki.tls(name),
            "reconnect_min_s": 0.05,
            "reconnect_max_s": 0.5,
            "connect_timeout_s": 5.0,
        }
        return MqttConfig.model_validate({**base, **overrides})
