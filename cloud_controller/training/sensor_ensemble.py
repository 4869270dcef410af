"""The sensor teacher's recipe: targets that look at a window's neighbours, and several members averaged.

Why. The sensor teacher labels the windows the fleet's students were unsure
about, and a DistillationJob can only move a student as far as its teacher is
ahead of it. A teacher that is one more MLP distilled from the same per-window
detector is not ahead: on the demo's held-back SKAB experiments one such draw
scores F1 71 to 75.5 depending on its seed, the first students 70.5 to 75.6
(``bench/bench_sensor_loop.py``), so a job fine-tuned towards it gained +0.4 F1
on average over five draws of v1. Two changes make it a teacher, both cheap and
both things only the cloud can do:

* **Context targets.** SKAB anomalies (and most pump faults) last many windows,
  while the per-window detector dips under its alarm limit inside them. The
  cloud trains on whole recordings, so a window's target can be the detector's
  highest score over the window and its neighbours (``context`` windows,
  centred): a window next to a clear alarm is labelled an alarm. The teacher
  still reads one window (the hard example's vector); it learns what windows
  inside a fault look like. The edge student cannot be trained this way with
  benefit, its job is the window it sees.
* **An ensemble.** ``members`` MLPs on different seeds, their probabilities
  averaged inside one ONNX graph: one bundle, the labeller and the edge runtime
  read it unchanged (``features`` in, ``score`` out), and the seed-to-seed
  spread of one MLP stops deciding what the fleet learns.

Measured by ``bench/bench_sensor_loop.py`` (the ``bench:sensor-loop`` block of
``docs/benchmarks.md``): with the demo's v1 the job's held-back gain went from
+4.22 +- 0.52 to +4.99 +- 0.79 F1 (3 job seeds); when the seed also draws v1 and
the teacher, from +0.92 +- 2.42 to +2.53 +- 1.84. What it does not fix: a v1 drawn
at F1 ~74.5 or more on the held-back experiments is within 2 points of every
teacher of this family (ensemble 75.2 to 76.5, the per-file detector itself 76.3),
so its job cannot gain 2. Cost: ``members`` x one wide student, 27 s CPU for the
demo's 5 on the full SKAB set (one: 5 s).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from cloud_controller.training.sensor_train import SensorStudent, SensorTrainConfig, fit

__all__ = ["SensorEnsemble", "context_scores", "fit_ensemble"]


def context_scores(scores: np.ndarray, windows: int) -> np.ndarray:
    """Each window's highest detector score over itself and its neighbours (``windows`` centred, odd).

    ``windows`` <= 1 returns the scores unchanged; an even count is widened to the next odd one.
    Edges use the windows that exist (a recording's first window looks only forward).
    """
    s = np.asarray(scores, dtype=np.float64)
    if windows <= 1 or len(s) == 0:
        return s.copy()
    half = windows // 2
    padded = np.pad(s, (half, half), mode="constant", constant_values=-np.inf)
    view = np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1)
    return np.asarray(view.max(axis=1), dtype=np.float64)


class SensorEnsemble(nn.Module):
    """The mean probability of several students: exports to one ONNX graph, int8 like one student."""

    def __init__(self, members: Sequence[SensorStudent]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(dim=0)


def fit_ensemble(
    x: np.ndarray,
    y: np.ndarray,
    cfg: SensorTrainConfig,
    members: int,
    *,
    epochs: int | None = None,
    on_epoch: Callable[[int, int], None] | None = None,
) -> nn.Module:
    """``members`` students on seeds ``cfg.seed * members + k``; one student when ``members`` <= 1.

    Seeds are disjoint between recipe seeds, so two draws of the teacher share no member.
    """
    n = max(1, members)
    if n == 1:
        return fit(x, y, cfg, epochs=epochs, on_epoch=on_epoch)
    total = epochs or cfg.epochs
    out = []
    for k in range(n):

        def tick(ep: int, _n: int, k: int = k) -> None:
            if on_epoch is not None:
                on_epoch(k * total + ep, n * total)

        out.append(fit(x, y, replace(cfg, seed=cfg.seed * n + k), epochs=total, on_epoch=tick))
    model = SensorEnsemble(out)
    model.eval()
    return model
