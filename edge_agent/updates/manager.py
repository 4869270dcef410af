"""Model delivery on the edge: the manager that drives fetch, verify, activate and roll back per task.

The steps live beside it: :mod:`~edge_agent.updates.download` (manifest and chunks over
a dedicated connection, resumable), :mod:`~edge_agent.updates.activate` (unpack and
verify on disk, load, health-check, prune) and :mod:`~edge_agent.updates.rollback`
(the active/previous pointers and the replay history). The manifest and its signature
check are the contract's: :mod:`edge_agent.protocol.manifest`.

Activation swaps only after the new model loaded and passed its health check in a
worker thread while the old one kept serving; a load or health failure leaves the
old model running and reports ``rolled_back``. At boot, an active version that no
longer loads falls back to the recorded previous one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.protocol.errors import ModelRejected
from edge_agent.protocol.messages import DesiredState, ModelRef, ModelStatus
from edge_agent.transport.mqtt import MqttClient
from edge_agent.updates.activate import HealthCheck, Loader, installed, load_checked, prune, unpack
from edge_agent.updates.delivery_stats import DeliveryStats
from edge_agent.updates.download import Downloader, Progress, partial_dir
from edge_agent.updates.rollback import check_replay, pointers, record_activation, write_pointer

__all__ = ["ActiveModel", "ModelManager"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActiveModel:
    name: str
    version: str
    digest: str
    path: Path
    model: Any


class ModelManager:
    """Owns ``{state_dir}/models``; one per agent. No I/O until :meth:`load_active` or :meth:`apply`."""

    def __init__(
        self,
        state_dir: str | Path,
        client: MqttClient,
        public_keys: Mapping[str, bytes],
        loaders: Mapping[str, Loader],
        health_check: HealthCheck | None = None,
        *,
        max_model_bytes: int = 256 * 1024 * 1024,
        window: int = 256,
        max_incoming: int = 16,
        manifest_timeout_s: float = 10.0,
        stall_timeout_s: float = 10.0,
        progress: Progress | None = None,
    ) -> None:
        self.root = Path(state_dir) / "models"
        self.public_keys = dict(public_keys)
        self.loaders = dict(loaders)
        self.health_check = health_check
        self.manifest_timeout_s = manifest_timeout_s
        self.stats = DeliveryStats()
        self._download = Downloader(
            self.root, client, self.public_keys, self.stats, max_model_bytes=max_model_bytes,
            window=window, max_incoming=max_incoming, stall_timeout_s=stall_timeout_s, progress=progress,
            trouble=self._transfer_trouble,
        )
        self._active: dict[str, ActiveModel] = {}
        self._status: dict[str, ModelStatus] = {}
        self._refused: dict[str, str] = {}  # digest -> error; permanent, never retried
        self._transfers: dict[str, tuple[str, asyncio.Task[None]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # Directories a convergence is using (its download, its unpacked version), with a count of
        # users: another task's activation prunes, and must not delete what this one is about to load.
        self._busy: Counter[Path] = Counter()

    # ------------------------------------------------------------------ public API

    def current(self, task: str) -> tuple[str, str, Any] | None:
        a = self._active.get(task)
        return (a.name, a.version, a.model) if a else None

    def status(self) -> dict[str, ModelStatus]:
        return dict(self._status)

    async def load_active(self) -> None:
        """Load every task's active version from disk; fall back to the previous one if it fails."""
        for task, ptr in pointers(self.root):
            if task not in self.loaders:
                continue
            try:
                await self._load_into(task, ptr["name"], ptr["version"], ptr["digest"])
                prev = ptr.get("previous")
                self._set_status(task, "active", previous=prev["version"] if prev else None)
                continue
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                log.error("active %s model %s@%s does not load: %s", task, ptr["name"], ptr["version"], error)
            prev = ptr.get("previous")
            if prev:
                try:
                    await self._load_into(task, prev["name"], prev["version"], prev["digest"])
                except Exception as exc2:
                    error += f"; previous: {exc2}"
                else:
                    write_pointer(self.root, task, prev, None)
                    self.stats.rollbacks += 1
                    self._set_status(task, "rolled_back", error=f"{ptr['version']}: {error}")
                    continue
            self._status[task] = ModelStatus(name=ptr["name"], version=ptr["version"], state="failed",
                                             error=error[:500])

    async def apply(self, desired: DesiredState) -> dict[str, ModelStatus]:
        """Converge every task to ``desired``; returns when each task is active, refused or superseded.

        Transfers run as named tasks that outlive a cancelled ``apply`` (a newer
        desired state for the same release re-joins the running transfer).
        """
        waits: list[asyncio.Task[None]] = []
        for task, ref in desired.models.items():
            active = self._active.get(task)
            if active is not None and active.digest == ref.digest:
                continue
            if ref.digest in self._refused:
                continue
            running = self._transfers.get(task)
            if running is not None and not running[1].done():
                if running[0] == ref.digest:
                    waits.append(running[1])
                    continue
                running[1].cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await running[1]
            t = asyncio.create_task(self._converge(task, ref), name=f"model-{task}-{ref.name}-{ref.version}")
            self._transfers[task] = (ref.digest, t)
            waits.append(t)
        if waits:
            await asyncio.wait(waits)
        return self.status()

    async def stop(self) -> None:
        tasks = [t for _, t in self._transfers.values() if not t.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._transfers.clear()

    # ------------------------------------------------------------------ status

    def _set_status(self, task: str, state: str, *, error: str | None = None,
                    ref: ModelRef | None = None, previous: str | None = None) -> None:
        """Status names what *runs* (the target when nothing runs yet); ``error`` names the target's fate."""
        a = self._active.get(task)
        old = self._status.get(task)
        name = a.name if a else (ref.name if ref else (old.name if old else ""))
        version = a.version if a else (ref.version if ref else (old.version if old else ""))
        if previous is None and old is not None and old.version == version:
            previous = old.previous
        self._status[task] = ModelStatus.model_validate(
            {"name": name, "version": version, "state": state, "previous": previous,
             "error": error[:500] if error else None}
        )

    def _transfer_trouble(self, task: str, error: str) -> None:
        """Still downloading, but say why it takes long (a damaged retained chunk being fetched again)."""
        st = self._status.get(task)
        if st is not None and st.state == "downloading":
            self._status[task] = st.model_copy(update={"error": error[:500]})

    def _reject(self, task: str, ref: ModelRef, exc: ModelRejected) -> None:
        self.stats.rejected[exc.reason] = self.stats.rejected.get(exc.reason, 0) + 1
        self._refused[ref.digest] = str(exc)
        shutil.rmtree(partial_dir(self.root, ref.digest), ignore_errors=True)
        log.error("refused %s model %s@%s: %s", task, ref.name, ref.version, exc)
        self._set_status(task, "failed", error=f"{ref.name}@{ref.version} {exc}", ref=ref)

    # ------------------------------------------------------------------ converge one task

    async def _converge(self, task: str, ref: ModelRef) -> None:
        lock = self._locks.setdefault(task, asyncio.Lock())
        before = self._status.get(task)
        busy = [partial_dir(self.root, ref.digest), self.root / ref.name / ref.version]
        self._busy.update(busy)
        try:
            if task != ref.task or task not in self.loaders:
                raise ModelRejected("malformed", f"release for task {ref.task!r} in slot {task!r}")
            check_replay(self.root, ref)
            self._set_status(task, "downloading", ref=ref)
            path = installed(self.root, ref)
            if path is None:
                manifest, partial = await self._download.fetch(task, ref)
                path = await asyncio.to_thread(unpack, self.root, manifest, partial, ref.digest)
            async with lock:
                await self._activate(task, ref, path)
        except ModelRejected as exc:
            self._reject(task, ref, exc)
        except asyncio.CancelledError:
            if before is not None:
                self._status[task] = before
            else:
                self._status.pop(task, None)
            raise
        except Exception as exc:  # disk full, loader bug: report, retry on the next apply
            log.exception("installing %s model %s@%s failed", task, ref.name, ref.version)
            self._set_status(task, "failed", error=f"{ref.name}@{ref.version} {type(exc).__name__}: {exc}",
                             ref=ref)
        finally:
            self._busy.subtract(busy)
            self._busy += Counter()  # drop the zero counts

    # ------------------------------------------------------------------ activate

    def _load_checked(self, task: str, path: Path, digest: str) -> Any:
        return load_checked(task, path, digest, self.public_keys, self.loaders[task], self.health_check)

    async def _load_into(self, task: str, name: str, version: str, digest: str) -> None:
        path = self.root / name / version
        model = await asyncio.to_thread(self._load_checked, task, path, digest)
        self._active[task] = ActiveModel(name, version, digest, path, model)

    async def _activate(self, task: str, ref: ModelRef, path: Path) -> None:
        old = self._active.get(task)
        try:
            model = await asyncio.to_thread(self._load_checked, task, path, ref.digest)
        except ModelRejected:
            raise
        except Exception as exc:
            self.stats.rollbacks += 1
            self._refused[ref.digest] = f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(OSError):
                if old is None or old.path != path:
                    shutil.rmtree(path)
            err = f"{ref.name}@{ref.version} failed to load or health check: {type(exc).__name__}: {exc}"
            log.error("%s model: %s; %s", task, err, f"kept {old.version}" if old else "nothing to keep")
            self._set_status(task, "rolled_back" if old else "failed", error=err, ref=ref)
            return
        cur = {"name": ref.name, "version": ref.version, "digest": ref.digest}
        prev = {"name": old.name, "version": old.version, "digest": old.digest} if old else None
        # No await from here to the swap: a cancellation cannot leave pointer and memory disagreeing.
        write_pointer(self.root, task, cur, prev)
        record_activation(self.root, ref)
        self._active[task] = ActiveModel(ref.name, ref.version, ref.digest, path, model)
        self.stats.activations += 1
        self._set_status(task, "active", previous=old.version if old else None)
        log.info("%s model now %s@%s (previous %s)", task, ref.name, ref.version, prev)
        downloading = [partial_dir(self.root, d) for d, t in self._transfers.values() if not t.done()]
        prune(self.root, set(self._busy), downloading)
