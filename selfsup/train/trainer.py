"""The training loop: the parts of a run (:mod:`selfsup.train.parts`), a loop over epochs and
steps, and hooks (:mod:`selfsup.train.hooks`) for everything else.

Exact resume: checkpoints are written at epoch boundaries and hold the model, the optimiser and
the step counter; the data order, the views and the global random stream of epoch e (which some
methods draw from inside their forward pass: masks, rotations, noise) are seeded by
(seed, e, process) alone, and the learning rate is a pure function of the step. So a run stopped
after any epoch and resumed computes the very same steps as one that never stopped.

Data parallel (``torchrun``, see ``selfsup.train.distributed``): ``train.batch_size`` is the
*global* batch, the images of one optimiser step over all processes and accumulation steps. Each
process takes its slice of every batch, batch_size / (processes × train.accumulate_steps) images
per forward pass, so a config trains the same way, at the same learning rate (the linear scaling
rule uses the global batch), on one device or many. Rank 0 alone runs the hooks (log, health,
checkpoints, export); every process loads the checkpoint on resume.

Time budgets (``train.budget_minutes``): the step count is measured before the first epoch
(:mod:`selfsup.train.budget`) and recorded in config.yaml.
"""

from __future__ import annotations

import platform
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, NoReturn, Optional, Sequence

import torch
from tqdm.auto import tqdm

from selfsup.config import Config
from selfsup.data.loader import epoch_seed
from selfsup.errors import ConfigError, DataError, TrainingDiverged
from selfsup.health import HealthMonitor
from selfsup.run_dir import CONFIG_FILE, RunDir
from selfsup.train.budget import measure_total_steps
from selfsup.train.checkpoint import load_checkpoint
from selfsup.train.distributed import all_reduce_sum_, process_group, training_device
from selfsup.train.hooks import Hook, default_hooks, scalars
from selfsup.train.parts import FORWARD_STREAM, VIEW_STREAM, TrainingParts, build_parts
from selfsup.train.process import process_info


CHECKPOINT_KEYS = ("method", "optimizer", "epoch", "step", "monitor")  # what state() always writes


class Trainer:
    """Pretrains ``config.method`` on ``config.data.dataset`` into the run directory
    ``config.out``. ``hooks`` replace the default ones (:func:`~selfsup.train.hooks.default_hooks`)."""

    def __init__(self, config: Config, resume: bool = False,
                 hooks: Optional[Sequence[Hook]] = None) -> None:
        self.config = config
        self.resume = resume
        self.run = RunDir(config.out)
        self.run_dir = self.run.path
        self.process = process_info()
        self.hooks = list(default_hooks(self.run) if hooks is None else hooks)
        self.monitor = HealthMonitor()
        self.wall_seconds = 0.0
        self.parts: Optional[TrainingParts] = None

    # ---------------------------------------------------------------- set-up
    def _prepare_run_dir(self, held: ExitStack) -> None:
        """Check the run directory fits the start (fresh or resumed) and, on rank 0, lock it for
        the run (``held`` keeps the lock until training ends), clear what killed attempts left
        (half-written files; a fresh start's log of an attempt that died before its first
        checkpoint) and save the config."""
        run = self.run
        if run.path.exists() and not run.path.is_dir():
            raise ConfigError(f"--out {run.path} is a file; the run directory must be a folder")
        if self.process.is_main:
            held.enter_context(run.lock())  # before anything is read: one writer at a time
        checkpoint = run.checkpoint_file
        if self.resume and not checkpoint.is_file():
            shared = (" (every process reads it: on several nodes the run directory must be on a "
                      "file system they all see)" if self.process.distributed else "")
            raise DataError(f"--resume: no checkpoint at {checkpoint}{shared}; start the run "
                            "without --resume")
        if not self.resume and checkpoint.is_file():
            raise ConfigError(f"{run.path} already holds a run; continue it with --resume, "
                              "or choose another --out")
        if self.process.is_main:
            run.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            run.remove_stale_temporaries()
            if not self.resume:  # a resumed run's config is saved once its checkpoint fits it
                run.metrics_log().start_afresh()
                run.save_config(self.config)

    def _hooks_here(self) -> list[Hook]:
        """The hooks this process runs: all on rank 0, those with ``all_ranks`` elsewhere."""
        return [hook for hook in self.hooks if self.process.is_main or hook.all_ranks]

    def emit(self, record: dict[str, Any]) -> None:
        """A record of the run to every hook (the log writes it); rank 0 alone keeps records."""
        if self.process.is_main:
            for hook in self.hooks:
                hook.on_record(self, record)

    # ---------------------------------------------------------------- checkpoints
    def state(self, epoch: int, step: int) -> dict[str, Any]:
        """The training state after ``epoch`` epochs and ``step`` steps (a checkpoint)."""
        parts = self.parts
        state = {"method": parts.method.state_dict(), "optimizer": parts.optimizer.state_dict(),
                 "epoch": epoch, "step": step, "monitor": self.monitor.state_dict(),
                 "wall_seconds": self.wall_seconds}
        if parts.scaler is not None:
            state["scaler"] = parts.scaler.state_dict()
        return state

    def _restore(self) -> tuple[int, int]:
        """Every process loads the checkpoint (the processes must agree on all of it)."""
        path, parts = self.run.checkpoint_file, self.parts
        state = load_checkpoint(path, map_location=parts.device)
        missing = [key for key in CHECKPOINT_KEYS
                   if not isinstance(state, dict) or key not in state]
        if missing:
            raise DataError(f"checkpoint {path} lacks {', '.join(missing)}: it is not a selfsup "
                            "training checkpoint, or it is damaged; start the run afresh")
        try:
            parts.method.load_state_dict(state["method"])
            parts.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            first_line = str(error).strip().splitlines()[0]
            raise ConfigError(f"checkpoint {path} does not fit the model this config builds "
                              f"({first_line}); a resumed run keeps the method, backbone and "
                              "optimiser it was trained with: drop the --set that changes them"
                              ) from None
        if parts.scaler is not None and "scaler" in state:
            parts.scaler.load_state_dict(state["scaler"])
        self.monitor.load_state_dict(state["monitor"])
        self.wall_seconds = state.get("wall_seconds", 0.0)
        for hook in self._hooks_here():
            hook.on_resume(self, state["step"])
        return state["epoch"], state["step"]

    # ---------------------------------------------------------------- the loop
    def fit(self) -> Path:
        """Train to the configured number of epochs (from the last checkpoint with resume)."""
        device = training_device(self.process, self.config.train.device)  # the group's backend
        with process_group(self.process, device), ExitStack() as held:
            self._prepare_run_dir(held)
            self.parts = parts = build_parts(self.config, self.resume, self.process)
            main = self.process.is_main
            for hook in self._hooks_here():
                hook.on_start(self)
            if self.config.train.budget_minutes > 0 and self.config.train.total_steps == 0:
                self._set_budget()  # a resumed budget run has its count already
            start_epoch, step = (self._restore() if self.resume else (0, 0))
            # A resume's changes (a new LR, more epochs) reach config.yaml with its first
            # checkpoint, so the file always describes the checkpoint beside it: a resume that
            # diverges at once leaves the config that still fits the kept checkpoint.
            config_pending = self.resume and main
            schedule = parts.schedule
            self.emit({"kind": "run", "event": "resume" if self.resume else "start",
                       "time": time.time(), "epoch": start_epoch, "step": step,
                       "device": str(parts.device), "device_name": self._device_name(),
                       "precision": parts.precision, "torch": torch.__version__,
                       "processes": self.process.world_size,
                       "batch_size": self.config.train.batch_size, "micro_batch": parts.micro_batch,
                       "accumulate_steps": parts.accumulate_steps,
                       "steps_per_epoch": schedule.steps_per_epoch,
                       "total_steps": schedule.total_steps, "num_train": len(parts.train_data),
                       "host": platform.node()})
            for epoch in range(start_epoch, schedule.epochs):
                step = self._train_epoch(epoch, step)
                for hook in self._hooks_here():
                    hook.on_epoch_end(self, epoch, step)
                if config_pending:
                    self.run.save_config(self.config)
                    config_pending = False
            if config_pending:  # nothing was left to train
                self.run.save_config(self.config)
            for hook in self._hooks_here():
                hook.on_end(self, step)
            # the run's last record, whichever hooks ran (after the export, as before hooks)
            self.emit({"kind": "run", "event": "end", "time": time.time(), "step": step,
                       "wall_seconds": self.wall_seconds,
                       "health": self.monitor.verdict().get("status")})
        return self.run_dir

    def _device_name(self) -> str:
        device = self.parts.device
        if device.type == "cuda":
            return torch.cuda.get_device_name(device)
        return platform.processor() or "cpu"

    def _set_budget(self) -> None:
        record = measure_total_steps(self.parts)
        train, schedule = self.config.train, self.parts.schedule
        if self.process.is_main:
            self.run.save_config(self.config)
        self.emit(record)
        if train.progress and self.process.is_main:
            print(f"budget {train.budget_minutes:g} min: {record['steps_per_second']:.2f} steps/s "
                  f"measured on {record['timed_steps']} steps -> {train.total_steps} steps "
                  f"({schedule.epochs} epochs of {schedule.steps_per_epoch}); recorded as "
                  f"train.total_steps in {CONFIG_FILE}")

    def _train_epoch(self, epoch: int, step: int) -> int:
        cfg, parts = self.config.train, self.parts
        schedule, device = parts.schedule, parts.device
        rank, processes = self.process.rank, self.process.world_size
        parts.method.train()
        # Per process: the processes' views must differ, as must their draws inside forward passes.
        view_gen = torch.Generator(device=device).manual_seed(
            epoch_seed(cfg.seed, epoch, VIEW_STREAM, rank))
        torch.manual_seed(epoch_seed(cfg.seed, epoch, FORWARD_STREAM, rank))
        epoch_start = time.perf_counter()
        interval_start, interval_steps = epoch_start, 0
        # [Σ loss over the log interval, Σ over the epoch, count of non-finite losses]
        sums = torch.zeros(3, device=device)
        show = cfg.progress and self.process.is_main
        # the last epoch of a fixed step count may be cut short
        steps_this_epoch = min(schedule.steps_per_epoch, schedule.total_steps - step)
        bar = tqdm(total=steps_this_epoch, desc=f"epoch {epoch + 1}/{schedule.epochs}",
                   disable=not show, dynamic_ncols=True, leave=False)
        for i, (batch, _) in enumerate(parts.stream.epoch(epoch)):
            if i >= steps_this_epoch:
                break
            parts.set_learning_rates(step)
            loss, out = parts.step(batch, view_gen)
            parts.method.after_step(step, schedule.total_steps)
            step += 1
            interval_steps += 1
            sums += torch.stack([loss, loss, (~torch.isfinite(loss)).float()])
            bar.update(1)
            if interval_steps == cfg.log_every or i + 1 == steps_this_epoch:
                # The only host-device syncs (and, between processes, the only collective outside
                # the training step) of the loop: once per log interval. The logged loss is the
                # mean over processes, i.e. the loss of the global batch.
                interval_sum, _, nonfinite = all_reduce_sum_(sums.clone()).tolist()
                if nonfinite:  # every process sees the sum, so all of them stop together
                    bar.close()
                    self.diverged(epoch, step)
                now = time.perf_counter()
                rate = interval_steps * cfg.batch_size / max(now - interval_start, 1e-9)
                mean_loss = interval_sum / (interval_steps * processes)
                self.emit({"kind": "step", "step": step, "epoch": epoch + 1, "loss": mean_loss,
                           "lr": parts.optimizer.param_groups[0]["lr"], "images_per_s": rate,
                           "time": time.time(), **scalars(out.logs)})
                bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{rate:,.0f}")
                interval_start, interval_steps = now, 0
                sums[0] = 0
        bar.close()
        seconds = time.perf_counter() - epoch_start
        self.wall_seconds += seconds
        epoch_loss = all_reduce_sum_(sums[1].clone()).item() / (steps_this_epoch * processes)
        images_per_s = steps_this_epoch * cfg.batch_size / seconds
        self.emit({"kind": "epoch", "epoch": epoch + 1, "step": step, "loss": epoch_loss,
                   "images_per_s": images_per_s, "epoch_seconds": seconds, "time": time.time()})
        if show:
            print(f"epoch {epoch + 1}/{schedule.epochs}: loss {epoch_loss:.4f}, "
                  f"{images_per_s:,.0f} images/s, {seconds:.1f} s")
        return step

    def diverged(self, epoch: int, step: int,
                 what: str = "the training loss became NaN or infinite") -> NoReturn:
        """Stop the run: ``what`` happened by ``step`` (epoch ``epoch`` + 1). The last good
        checkpoint is kept (the epoch's own is not written), and the message says so."""
        checkpoint = self.run.checkpoint_file
        kept = (f"the last good checkpoint ({checkpoint}) is kept; fix the cause and continue with "
                "--resume" if checkpoint.is_file() else "no checkpoint was written yet")
        message = (f"{what} by step {step} (epoch {epoch + 1}); "
                   f"{kept}. Usual fixes: a lower optim.lr, gradient clipping "
                   "(--set optim.clip_grad=1.0), or train.precision=fp32.")
        self.emit({"kind": "run", "event": "diverged", "time": time.time(), "epoch": epoch + 1,
                   "step": step, "message": message})
        raise TrainingDiverged(message)


def pretrain(config: Config, resume: bool = False) -> Path:
    """Run (or resume) pretraining and return the run directory."""
    return Trainer(config, resume).fit()
