"""The controller on a real kube-apiserver: apply-to-status latency and leader failover time.

Starts etcd + kube-apiserver (``edgeloop_sim.harness.apiserver``, assets in
``EDGELOOP_KUBE_ASSETS``), mosquitto, and controller processes in cluster mode with
the Deployment's environment, then measures:

* apply-to-status: a spec change of an EdgePipeline (merge patch) until the controller
  wrote ``status.observedGeneration`` equal to the new generation; and the first
  reconcile of every object in ``crds/examples/`` after one ``kubectl apply``;
* failover: SIGKILL the leading replica until the other holds the Lease and says it
  leads, with the Deployment's lease timings (15/10/2 s) and with short ones (4/3/0.5 s).

    .venv/bin/python bench/bench_cluster.py [--quick] [--changes 30] [--failovers 3] [--no-write]

It rewrites the ``<!-- bench:cluster:start -->`` block of ``docs/benchmarks.md`` and ``docs/cluster.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from _report import DOC, command_line, machine_line, write_block  # noqa: E402
from kubernetes import client, config  # noqa: E402

from edge_agent.ops.tables import markdown_table  # noqa: E402
from edgeloop_sim.broker import Broker  # noqa: E402
from edgeloop_sim.harness.agent import wait_until  # noqa: E402
from edgeloop_sim.harness.apiserver import ApiServer  # noqa: E402
from edgeloop_sim.harness.kube_controller import ControllerProcess, wait_observed  # noqa: E402

NAME = "cluster"
GROUP, VERSION = "edgeloop.io", "v1alpha1"


def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    q = sorted(values)
    p95 = q[min(len(q) - 1, round(0.95 * (len(q) - 1)))]
    return f"{statistics.median(q) * 1000:.0f} / {p95 * 1000:.0f} / {q[-1] * 1000:.0f}"


def _s(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


class Bench:
    def __init__(self, kube: ApiServer, broker: Broker, work: Path) -> None:
        self.kube = kube
        self.broker = broker
        self.work = work
        self.api = config.new_client_from_config(config_file=str(kube.kubeconfig))
        self.custom = client.CustomObjectsApi(self.api)
        self.procs: list[ControllerProcess] = []

    def controller(self, ns: str, identity: str, **kw: Any) -> ControllerProcess:
        proc = ControllerProcess(self.work, kubeconfig=self.kube.kubeconfig,
                                 broker=(self.broker.host, self.broker.port), namespace=ns,
                                 identity=identity, **kw).start()
        self.procs.append(proc)
        return proc

    def namespace(self, ns: str) -> None:
        self.kube.kubectl("create", "namespace", ns)

    def get(self, kind: str, ns: str, name: str) -> dict[str, Any]:
        return dict(self.custom.get_namespaced_custom_object(GROUP, VERSION, ns, kind.lower() + "s", name))

    def apply_to_status(self, changes: int) -> tuple[float, list[float]]:
        ns = "bench-latency"
        self.namespace(ns)
        ctl = self.controller(ns, "latency-0")
        ctl.wait_ready(60)
        start = time.monotonic()
        self.kube.kubectl("apply", "-n", ns, "-f", "crds/examples/")
        names = [(d["kind"], d["metadata"]["name"]) for d in _examples()]
        for kind, name in names:
            wait_observed(lambda k=kind, n=name: self.get(k, ns, n), 60, f"{kind}/{name}")  # type: ignore[misc]
        first_all = time.monotonic() - start
        latencies = []
        for i in range(changes):
            t0 = time.monotonic()
            self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, ns, "edgepipelines", "plant-a-vibration",
                {"spec": {"window": {"lengthSeconds": 10 + i + 1}}})
            wait_observed(lambda: self.get("EdgePipeline", ns, "plant-a-vibration"), 30)
            latencies.append(time.monotonic() - t0)
        ctl.terminate()
        return first_all, latencies

    def failover(self, ns: str, reps: int, **lease: float) -> list[float]:
        self.namespace(ns)
        coord = client.CoordinationV1Api(self.api)
        times = []
        live = [self.controller(ns, f"{ns}-0", **lease), self.controller(ns, f"{ns}-1", **lease)]
        for r in live:
            r.wait_ready(60)
        for i in range(reps):
            def leader(cands: list[ControllerProcess]) -> ControllerProcess | None:
                leading = [c for c in cands if c.is_leader()]
                holder = coord.read_namespaced_lease("edgeloop-controller", ns).spec.holder_identity
                return leading[0] if len(leading) == 1 and holder == leading[0].identity else None
            current = wait_until(lambda cands=live: leader(cands), 60, "one leader", 0.05)
            rest = [c for c in live if c is not current]
            current.kill()
            t0 = time.monotonic()
            wait_until(lambda cands=rest: leader(cands), 120, "failover", 0.02)
            times.append(time.monotonic() - t0)
            replacement = self.controller(ns, f"{ns}-{i + 2}", **lease)  # the Deployment recreates the pod
            replacement.wait_ready(60)
            live = [*rest, replacement]
        for c in live:
            c.terminate()
        return times


def _examples() -> list[dict[str, Any]]:
    import yaml

    docs: list[dict[str, Any]] = []
    for path in sorted((REPO / "crds" / "examples").glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="few repetitions, short leases only")
    p.add_argument("--changes", type=int, default=30, help="spec changes timed (default %(default)s)")
    p.add_argument("--failovers", type=int, default=3,
                   help="SIGKILLs with short leases (default %(default)s)")
    p.add_argument("--doc", type=Path, default=DOC)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    changes, failovers = (5, 1) if args.quick else (args.changes, args.failovers)
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp, ApiServer() as kube:
        work = Path(tmp)
        broker = Broker(work / "mosquitto")
        broker.start()
        bench = Bench(kube, broker, work)
        try:
            kube.kubectl("apply", "--server-side", "-f", "crds/")
            kube.kubectl("wait", "--for", "condition=established", "--timeout=60s", "crd", "--all")
            first_all, latencies = bench.apply_to_status(changes)
            short = bench.failover("bench-short", failovers, lease_duration_s=4.0, renew_deadline_s=3.0,
                                   retry_period_s=0.5)
            default = [] if args.quick else bench.failover(
                "bench-default", 1, lease_duration_s=15.0, renew_deadline_s=10.0, retry_period_s=2.0)
        finally:
            for proc in bench.procs:
                proc.terminate()
            broker.stop()
            bench.api.close()
        rows = [
            ["API server start (etcd + kube-apiserver, /readyz ok)", f"{kube.startup_s:.1f} s"],
            [f"`kubectl apply -f crds/examples/` until all {len(_examples())} objects reconciled",
             f"{first_all:.2f} s"],
            [f"spec change -> status.observedGeneration, {len(latencies)} changes (median / p95 / max)",
             f"{_ms(latencies)} ms"],
            [f"failover after SIGKILL, lease 4 s / retry 0.5 s, {len(short)} runs (min / median / max)",
             f"{_s(short)} s"],
        ]
        if default:
            rows.append(["failover after SIGKILL, the Deployment's lease 15 s / retry 2 s",
                         f"{default[0]:.2f} s"])
    text = "\n\n".join([
        "Controller on a real kube-apiserver v1.20.2 (etcd 3.4), one `cloud-controller run` process per "
        "replica with the Deployment's environment; the failover clock starts at the SIGKILL and stops "
        "when the other replica holds the Lease and reports itself leader:",
        f"`{command_line()}`",
        markdown_table(["measure", "value"], rows),
        f"Machine: {machine_line()}",
    ])
    print(text)
    if not args.no_write:
        write_block(NAME, text, args.doc)
        if args.doc == DOC:  # docs/cluster.md quotes the same block
            write_block(NAME, text, REPO / "docs" / "cluster.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
