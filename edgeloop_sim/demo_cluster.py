"""The demo's handle on the running system: the CLI it drives, the resources it applies, the nodes,
rollouts and sensor traffic it waits on. :mod:`edgeloop_sim.demo_loop` tells the story with it."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from cloud_controller.datasets.snips import Example
from edgeloop_sim.broker import Broker
from edgeloop_sim.demo_chat import ChatTraffic, Utterance, score
from edgeloop_sim.supervisor import ProcessSupervisor

Say = Callable[[str], None]
PY = sys.executable
NODES = ("edge-pump-a", "edge-pump-b", "edge-city")
PUMP_NODES = NODES[:2]  # the SKAB devices (the sensor model's traffic) are on these two


def say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cli(*args: str, check: bool = True) -> str:
    """Run ``cloud-controller ARGS`` as the operator would; its stdout."""
    p = subprocess.run(
        [PY, "-m", "cloud_controller.cli.main", "--log-level", "WARNING", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if check and p.returncode != 0:
        raise RuntimeError(f"cloud-controller {' '.join(args)} failed: {p.stderr.strip()[-800:]}")
    return p.stdout


def distillation_flags(artifacts: Path, key: Path, work: Path, config: str) -> list[str] | None:
    """Flags that give ``cloud-controller run`` its DistillationJob reconciler; None if it has none.

    Read from the controller's own parser, so the demo follows the controller
    instead of guessing: until the reconciler is registered, the demo runs the
    loop without step 5 and says so.
    """
    from cloud_controller.cli.run import configure_run_args

    ap = argparse.ArgumentParser()
    configure_run_args(ap)
    opts = {o for a in ap._actions for o in a.option_strings}
    wanted = {
        "artifacts": (("--artifacts", "--artifact-store", "--artifacts-dir"), str(artifacts)),
        "key": (("--signing-key", "--release-key", "--key"), str(key)),
        "work": (("--distill-work-dir", "--work-dir", "--jobs-dir"), str(work)),
        "config": (("--distillation-config", "--distill-config"), config),
    }
    flags: list[str] = []
    found: set[str] = set()
    for what, (names, value) in wanted.items():
        for n in names:
            if n in opts:
                flags += [n, value]
                found.add(what)
                break
    return flags if {"artifacts", "key"} <= found else None


def agent_config(
    out: Path, node: str, devices: list[str], port: int, pub: Path, window_s: float, threshold: float
) -> dict[str, Any]:
    return {
        "node_id": node,
        "state_dir": str(out / "state" / node),
        "mqtt": {"host": "127.0.0.1", "port": port},
        "devices": {"allowed": devices, "allow_unknown": False, "subscribe_enrolled_only": True},
        "windows": {"length_s": window_s, "idle_close_s": 2.0},
        "metrics": {"enabled": True, "port": 0},
        "log": {"level": "INFO", "format": "json"},
        "uplink": {"status_interval_s": 2.0},
        "models": {"trusted_keys": [str(pub)]},
        # A plain threshold (not the budget) so the escalation rate measures the student: with a
        # budget it would sit at the budget whatever the student knows. No answer cache: the same
        # test utterances are sent to v1 and to v2, and a cached teacher answer would hide v2.
        "chat": {"escalation": {"mode": "threshold", "threshold": threshold, "cache_max_entries": 0}},
        # The replay runs SKAB far faster than real time (a real pump makes 6 windows a minute):
        # lift the per-minute cap on sensor hard examples so the sample is not all drops.
        "sensor": {"max_hard_examples_per_minute": 100_000},
    }


def start_collector() -> Any:
    """A running :class:`~edgeloop_sim.trace_collector.TraceCollector`, or None without OpenTelemetry."""
    try:
        from edgeloop_sim.trace_collector import TraceCollector
    except ImportError:
        return None
    return TraceCollector().start()


def chat_plan(
    examples: list[Example], devices: list[str], held: tuple[str, ...]
) -> list[tuple[str, Example, bool]]:
    return [(devices[i % len(devices)], e, e.intent in held) for i, e in enumerate(examples)]



class DemoCluster:
    """Processes, resources and waits of one demo run; every process it starts is stopped in ``close()``."""

    store: Path  # the controller's resource store, set once the controller is started

    def __init__(self, args: argparse.Namespace, out: Path) -> None:
        self.args, self.out = args, out
        self.broker = Broker(out / "broker")
        self.sup = ProcessSupervisor(out / "logs")
        self.traffic: ChatTraffic | None = None
        self.timeline: list[dict[str, Any]] = []  # phase marks for the plot
        self.report: dict[str, Any] = {"phases": {}, "wall": {}}
        self.t0 = time.time()
        self.collect_since = 0
        # The OTLP receiver the agents and the controller export their spans to (None without the
        # tracing extra: the demo then runs untraced and its report says so).
        self.collector = start_collector()

    @property
    def trace_env(self) -> dict[str, str]:
        """Environment of the traced processes: the demo's receiver, spans exported within 0.2 s."""
        if self.collector is None:
            return {}
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": self.collector.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}

    def mark(self, name: str) -> None:
        self.timeline.append({"t": time.time(), "phase": name})
        say(f"== {name}")

    def close(self) -> None:
        if self.traffic is not None:
            self.traffic.close()
        self.sup.stop_all()
        self.broker.stop()
        if self.collector is not None:
            self.collector.stop()

    # ------------------------------------------------------------------ resources

    def get(self, kind: str, name: str | None = None) -> Any:
        text = cli(
            "get", kind, *([name] if name else []), "--store", str(self.store), "-o", "json", check=False
        )
        try:
            return json.loads(text) if text.strip() else None
        except ValueError:
            return None

    def apply(self, docs: list[dict[str, Any]], name: str) -> None:
        path = self.out / "manifests" / f"{name}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        cli("apply", "-f", str(path), "--store", str(self.store))
        say(f"applied {path.relative_to(self.out)}")


    # ------------------------------------------------------------------ release and waits

    def release(self, bundle: Path, key: Path, artifacts: Path) -> Any:
        """``cloud-controller release`` as an operator runs it: sign, store, publish the chunks."""
        ref = json.loads(
            cli(
                "release",
                "--bundle",
                str(bundle),
                "--key",
                str(key),
                "--store",
                str(artifacts),
                "--broker",
                f"127.0.0.1:{self.broker.port}",
            )
        )
        from cloud_controller.releases.artifacts import ArtifactStore

        rel = ArtifactStore(artifacts).get(ref["name"], ref["version"])
        say(f"released {rel.name}@{rel.version} {rel.digest[:19]}… ({rel.size:,} bytes)")
        return rel

    def sensor_settle(self, phase: str, quiet_s: float = 5.0, timeout: float = 120.0) -> dict[str, Any]:
        """Wait until the pump nodes' sensor counters stop moving; what the sensor model did so far.

        After a replay the last windows close on the idle timeout (2 s) and are
        reported by the next status (every 2 s): counters unchanged for
        ``quiet_s`` means every window of the phase was scored and reported.
        Counters run from the model's activation, so the caller compares phases
        that each start on a freshly activated version (or subtracts).
        """
        deadline = time.monotonic() + timeout
        last: Any = None
        since = time.monotonic()
        while time.monotonic() < deadline:
            snap = tuple(
                (n, s.sensor_version, s.sensor_samples, s.sensor_escalated)
                for n, s in sorted(self.latest().items())
                if n in PUMP_NODES
            )
            if snap != last:
                last, since = snap, time.monotonic()
            elif time.monotonic() - since >= quiet_s and any(x[2] for x in snap):
                # Quiet only counts once a status carries scored windows: before the first one
                # arrives the counters are quiet too, and the phase would be measured as empty.
                break
            time.sleep(0.5)
        else:
            say(
                f"{phase}: the pump nodes' sensor counters did not settle with scored windows in "
                f"{timeout:.0f} s; the figures below are what they showed (see {self.out / 'logs'})"
            )
        samples = sum(x[2] for x in last or ())
        escalated = sum(x[3] for x in last or ())
        versions = sorted({str(x[1]) for x in last or ()})
        r = {
            "versions": versions,
            "windows_scored": samples,
            "escalated": escalated,
            "escalation_rate": round(100 * escalated / samples, 2) if samples else None,
        }
        say(
            f"{phase}: {samples:,} windows scored by sensor v{'/'.join(versions)}, "
            f"{r['escalation_rate']}% unsure"
        )
        self.report["phases"][phase] = r
        return r

    # ------------------------------------------------------------------ helpers

    def latest(self) -> dict[str, Any]:
        assert self.traffic is not None
        return {n: s for n, s in self.traffic.latest().items() if n in NODES}

    def wait_nodes(self, ok: Callable[[Any], bool], what: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        last = -1
        while time.monotonic() < deadline:
            done = [n for n, s in self.latest().items() if ok(s)]
            if len(done) != last:
                say(f"{what}: {len(done)}/{len(NODES)} nodes")
                last = len(done)
            if len(done) == len(NODES):
                return
            time.sleep(0.5)
        raise RuntimeError(f"timed out waiting for {what} (see {self.out / 'logs'})")

    def chat(self, plan: list[tuple[str, Example, bool]], phase: str) -> list[Utterance]:
        assert self.traffic is not None

        def progress(i: int, n: int, sent: list[Utterance]) -> None:
            s = score([u for u in sent if u.answered is not None])
            say(
                f"{phase}: {i}/{n} utterances, accuracy {s.get('accuracy', 0)}%, "
                f"escalated {s.get('escalation_rate', 0)}%"
            )

        us = self.traffic.drive(plan, phase, rate=self.args.chat_rate, on_progress=progress)
        s = score(us)
        say(
            f"{phase}: {s['n']} utterances, accuracy {s['accuracy']}%, escalated {s['escalation_rate']}%, "
            f"held-back intents accuracy {score([u for u in us if u.held_back]).get('accuracy')}%"
        )
        self.report["phases"][phase] = s
        return us

    def trickle(
        self, pool: list[Example], devs: list[str], held: tuple[str, ...], stop: threading.Event
    ) -> None:
        """A few utterances a second while the job runs and the canary pauses: the analysis needs samples."""
        assert self.traffic is not None
        i = 0
        while not stop.is_set() and i < len(pool):
            self.traffic.drive(
                chat_plan(pool[i : i + 10], devs, held), "during-loop", rate=self.args.trickle_rate
            )
            i += 10

    def wait_rollout(self, model: str, version: str, task: str) -> None:
        deadline = time.monotonic() + self.args.job_timeout
        last = ""
        while time.monotonic() < deadline:
            items = (self.get("modelrollouts") or {}).get("items", [])
            ro = next(
                (r for r in items if r["spec"].get("model") == model and r["spec"].get("version") == version),
                None,
            )
            st = (ro or {}).get("status") or {}
            line = (
                f"rollout {model}@{version}: {st.get('phase')} step {st.get('currentStep')} "
                f"weight {st.get('currentWeight')}% updated {st.get('updatedNodes')}/{st.get('totalNodes')} "
                f"ready {st.get('readyNodes')}"
            )
            if line != last:
                say(line)
                last = line
            if st.get("phase") in ("Succeeded", "RolledBack", "Failed"):
                self.report["rollout" if task == "chat" else "sensor_rollout"] = {
                    "phase": st.get("phase"),
                    "name": (ro or {}).get("metadata", {}).get("name"),
                }
                break
            time.sleep(2.0)
        if task == "chat":
            self.wait_nodes(
                lambda s: s.chat_version == version and s.chat_state == "active",
                f"v{version} active on",
                timeout=60,
            )
        else:
            self.wait_nodes(
                lambda s: s.sensor_version == version and s.sensor_state == "active",
                f"sensor v{version} active on",
                timeout=60,
            )


def edge_model(rel: Any, artifacts: Path) -> dict[str, Any]:
    """The EdgeModel an operator applies for a release (its own metrics copied into the spec)."""
    from cloud_controller.releases.artifacts import ArtifactStore

    metrics = {k: float(v) for k, v in rel.parsed.get("metrics", {}).items() if isinstance(v, int | float)}
    return ArtifactStore(artifacts).edge_model(rel, metrics=metrics)


def rollout(name: str, model: str, version: str, weights: list[int], pause: int = 0) -> dict[str, Any]:
    steps = [{"setWeight": w, **({"pauseSeconds": pause} if pause and w < 100 else {})} for w in weights]
    return {
        "apiVersion": "edgeloop.io/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"model": model, "version": version, "steps": steps},
    }
