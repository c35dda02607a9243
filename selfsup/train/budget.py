"""Time budgets (``train.budget_minutes``): a run's step count from its measured step rate.

Before the first epoch the trainer runs a few throwaway training steps, times them, puts model,
optimiser and random state back as they were, and fixes the run's step count from the measured
rate. The count goes into ``train.total_steps`` of the saved config.yaml, so the rest is an
ordinary fixed-length run: the schedule anneals to its end value at the last step, a resume
continues to the same count, and a run given ``train.total_steps`` by hand computes the very same
steps.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from typing import Any

import torch

from selfsup.data.loader import epoch_seed
from selfsup.train.distributed import all_reduce_sum_
from selfsup.train.parts import VIEW_STREAM, Schedule, TrainingParts

# A budget's step rate: timed steps after CALIBRATION_WARMUP untimed ones (the first steps pay for
# allocations and kernel selection), at least CALIBRATION_STEPS of them over at least
# CALIBRATION_SECONDS, and never more than CALIBRATION_SHARE of the budget. (20 steps alone, a few
# seconds, caught a neighbouring run still loading its data: 20-minute runs then took 22-30.)
CALIBRATION_WARMUP, CALIBRATION_STEPS, CALIBRATION_SECONDS, CALIBRATION_SHARE = 2, 20, 30.0, 0.05


def measure_total_steps(parts: TrainingParts) -> dict[str, Any]:
    """Fix ``train.total_steps`` (and ``parts.schedule``) from ``train.budget_minutes`` and the
    measured step rate; returns the ``budget`` record for the log. Nothing the run computes
    afterwards depends on the throwaway steps: parameters, optimiser, loss scaler and the global
    random state are restored, and every epoch seeds its own streams. (``after_step`` is left
    out: its momentum updates cost little next to a step.)"""
    config, process, device = parts.config, parts.process, parts.device
    train = config.train
    budget = 60 * train.budget_minutes
    started = time.perf_counter()
    saved = copy.deepcopy({"method": parts.method.state_dict(),
                           "optimizer": parts.optimizer.state_dict(),
                           "scaler": parts.scaler.state_dict() if parts.scaler else None})
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if device.type == "cuda" else None
    view_gen = torch.Generator(device=device).manual_seed(
        epoch_seed(train.seed, 0, VIEW_STREAM, process.rank))
    parts.set_learning_rates(0)
    batches = itertools.chain.from_iterable(parts.stream.epoch(e) for e in itertools.count())
    timed_from, timed, loss = started, 0, None
    parts.method.train()
    for i, (batch, _) in enumerate(batches):
        if i == CALIBRATION_WARMUP:
            if loss is not None:
                float(loss)  # waits for the device
            timed_from = time.perf_counter()
        loss, _ = parts.step(batch, view_gen)
        timed = i + 1 - CALIBRATION_WARMUP
        now = time.perf_counter()
        enough = timed >= CALIBRATION_STEPS and now - timed_from >= CALIBRATION_SECONDS
        stop = enough or (timed >= 2 and now - started > CALIBRATION_SHARE * budget)
        if process.world_size > 1:
            # every process must take the same number of steps (each step's gradients are
            # all-reduced): stop when any of them would, a decision they share. Alone, no
            # flag: on a GPU its .item() would wait for the device at every timed step.
            flag = torch.tensor([float(stop)], device=device)
            stop = all_reduce_sum_(flag).item() > 0
        if stop:
            break
    float(loss)
    seconds = time.perf_counter() - timed_from
    parts.method.load_state_dict(saved["method"])
    parts.optimizer.load_state_dict(saved["optimizer"])
    if parts.scaler is not None:
        parts.scaler.load_state_dict(saved["scaler"])
    torch.set_rng_state(cpu_rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state_all(cuda_rng)
    # every process must train the same number of steps: the means of their rates and of
    # their calibration times, which each measured on its own clock
    measured = torch.tensor([timed / max(seconds, 1e-9), time.perf_counter() - started],
                            device=device, dtype=torch.float64)
    rate, calibration = (all_reduce_sum_(measured) / process.world_size).tolist()
    train.total_steps = max(1, math.floor(rate * max(0.0, budget - calibration)))
    parts.schedule = Schedule.from_config(config, parts.schedule.steps_per_epoch)
    return {"kind": "run", "event": "budget", "time": time.time(),
            "budget_minutes": train.budget_minutes, "steps_per_second": rate,
            "timed_steps": timed, "calibration_seconds": calibration,
            "total_steps": train.total_steps, "epochs": parts.schedule.epochs}
