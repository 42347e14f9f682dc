"""A training run sized to a wall-clock budget (alexnet-train --time-budget).

The number of images a CPU trains in ten minutes varies fourfold between the machines this
project runs on (19 img/s on an AVX2-only Zen 2, 34 on an AVX-512 EPYC).  A fixed image count
makes the demo's length a property of the machine; a budget makes its accuracy one instead, and
reports it.  After a few steps (the first ones compile and fill caches) the run measures its
time per step, keeps back what validation will take, and caps the optimiser steps so the run
ends inside the budget.  With the one-cycle schedule the cycle is re-sized to the cap, so the
learning rate still anneals to its end on the last step, which is where its accuracy comes from.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

WARMUP_STEPS = 3  # compile, allocator and caches: not representative
PROBE_STEPS = 10  # then timed, and the cap set
RECHECK_STEPS = 25  # then the cap is set again from the pace since the probe began (a CPU slows as it warms)
# A validation image is 10 forward passes of a crop, each about a third of a training step's
# per-image cost (forward only, no backward or optimiser update).
EVAL_COST_PER_CROP = 1 / 3


@dataclass
class TimeBudget:
    """Caps the optimiser steps of a run so that it ends within ``seconds`` of ``started``.

    ``planned_steps``: the run's steps without a budget (epochs x batches per epoch);
    ``batch_size``: images per step on this rank; ``eval_images`` and ``eval_crops``: the
    validation each remaining epoch runs; ``epochs_left``: epochs still to run.  ``reduce``
    averages a float over the ranks (so every rank computes the same cap).  Units: seconds."""

    seconds: float
    planned_steps: int
    batch_size: int
    eval_images: int
    eval_crops: int
    epochs_left: int
    started: float = field(default_factory=time.perf_counter)
    reduce: Callable[[float], float] = lambda x: x
    clock: Callable[[], float] = time.perf_counter
    steps: int = 0
    cap: int | None = None
    seconds_per_step: float | None = None
    eval_reserve_s: float = 0.0
    _probe_start: float | None = None

    def step(self) -> bool:
        """Count one optimiser step; True when the cap was set or changed on this step."""
        self.steps += 1
        timed = self.steps - WARMUP_STEPS
        if timed == 0:
            self._probe_start = self.clock()
        elif timed == PROBE_STEPS or (timed > PROBE_STEPS and timed % RECHECK_STEPS == 0 and not self.exhausted()):
            before = self.cap
            self._set_cap(max(self.reduce((self.clock() - self._probe_start) / timed), 1e-9))
            return self.cap != before
        return False

    def _set_cap(self, per_step: float) -> None:
        per_image = per_step / max(self.batch_size, 1)
        self.seconds_per_step = per_step
        self.eval_reserve_s = self.epochs_left * self.eval_images * self.eval_crops * EVAL_COST_PER_CROP * per_image
        left = self.seconds - (self.clock() - self.started) - self.eval_reserve_s
        self.cap = min(self.planned_steps, self.steps + max(0, int(left / per_step)))

    def exhausted(self) -> bool:
        """True once the capped number of steps has been taken."""
        return self.cap is not None and self.steps >= self.cap

    def describe(self) -> str:
        if self.cap is None:
            return f"time budget {self.seconds:.0f} s: not measured yet"
        fits = "all" if self.cap >= self.planned_steps else f"{self.cap}"
        return (f"time budget {self.seconds:.0f} s: {self.seconds_per_step:.3f} s/step over {self.steps - WARMUP_STEPS} steps, "
                f"{self.eval_reserve_s:.0f} s kept for validation; {fits} of {self.planned_steps} steps fit")  # fmt: skip
