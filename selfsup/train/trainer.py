"""The training loop: one place that owns devices, precision, optimisation, logging and checkpoints.

Exact resume: checkpoints are written at epoch boundaries and hold the model, the optimiser and
the step counter; the data order, the views and the global random stream of epoch e (which some
methods draw from inside their forward pass: masks, rotations, noise) are seeded by
(seed, e, process) alone, and the learning rate is a pure function of the step. So a run stopped
after any epoch and resumed computes the very same steps as one that never stopped.

Data parallel (``torchrun``, see ``selfsup.train.distributed``): ``train.batch_size`` is the
*global* batch, the images of one optimiser step over all processes and accumulation steps. Each
process takes its slice of every batch, batch_size / (processes × train.accumulate_steps) images
per forward pass, so a config trains the same way, at the same learning rate (the linear scaling
rule uses the global batch), on one device or many. Rank 0 alone logs, checkpoints and checks
health; every process loads the checkpoint on resume.

Time budgets (``train.budget_minutes``): before the first epoch the trainer runs a few throwaway
training steps, times them, puts model, optimiser and random state back as they were, and fixes
the run's step count from the measured rate (``_measure_total_steps``). The count goes into
``train.total_steps`` of the saved config.yaml, so the rest is an ordinary fixed-length run: the
schedule anneals to its end value at the last step, a resume continues to the same count, and a
run given ``train.total_steps`` by hand computes the very same steps.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from selfsup.backbones import build_backbone
from selfsup.config import Config
from selfsup.data import load_split
from selfsup.data.base import ImageSource
from selfsup.data.loader import BatchStream, epoch_seed
from selfsup.data.sequence_loader import SequenceBatchStream
from selfsup.data.sequences import SequenceSource
from selfsup.errors import ConfigError, DataError, TrainingDiverged
from selfsup.evaluate.knn import knn_accuracy, online_knn_k
from selfsup.health import HealthMonitor
from selfsup.methods import Method, build_method
from selfsup.methods.base import StepOutput
from selfsup.train.checkpoint import (
    image_encoder_spec,
    load_checkpoint,
    save_checkpoint,
    save_encoder,
    token_encoder_spec,
)
from selfsup.train.device import autocast, resolve_precision, seed_everything
from selfsup.train.distributed import (
    all_reduce_sum_,
    broadcast_from_main,
    no_sync,
    prepare_method,
    process_group,
    training_device,
)
from selfsup.train.metrics_log import MetricsLog
from selfsup.train.process import process_info
from selfsup.train.optim import build_optimizer, lr_factor, set_learning_rates
from selfsup.tokenize import make_tokenizer
from selfsup.tokenize.base import Tokenizer
from selfsup.views import make_sequence_views, make_views
from selfsup.views.image import to_input

CHECKPOINT = "checkpoints/last.pt"
CHECKPOINT_KEYS = ("method", "optimizer", "epoch", "step", "monitor")  # what _state always writes
VIEW_STREAM, FORWARD_STREAM = 1, 2  # the random streams of an epoch besides the data order
HEALTH_MAX_TOKENS = 512  # sequences in the health batch and probe bank keep their first 512 tokens
HELD_OUT_SAMPLES = 256  # health-batch samples the held-out loss (perplexity) is measured on
# A budget's step rate: timed steps after CALIBRATION_WARMUP untimed ones (the first steps pay for
# allocations and kernel selection), at least CALIBRATION_STEPS of them over at least
# CALIBRATION_SECONDS, and never more than CALIBRATION_SHARE of the budget. (20 steps alone, a few
# seconds, caught a neighbouring run still loading its data: 20-minute runs then took 22-30.)
CALIBRATION_WARMUP, CALIBRATION_STEPS, CALIBRATION_SECONDS, CALIBRATION_SHARE = 2, 20, 30.0, 0.05
# With a fixed step count (a budget) the warm-up is at most this share of the steps: an epoch of
# warm-up on a large corpus can be most of a short run.
BUDGET_WARMUP_SHARE = 0.1


def train_step(step_fn: nn.Module, micro_batches: Sequence[list[torch.Tensor]],
               optimizer: torch.optim.Optimizer, device: torch.device, precision: str = "fp32",
               clip_grad: float = 0.0, scaler: Optional[torch.amp.GradScaler] = None,
               method: Optional[Method] = None) -> tuple[torch.Tensor, StepOutput]:
    """One optimiser step on the mean loss of ``micro_batches`` (gradient accumulation).

    Each micro-batch is a list of views that ``step_fn`` (a method, or its DDP or compiled
    wrapper) turns into a ``StepOutput``; ``method`` is the method inside a wrapper (default:
    ``step_fn`` itself). Under DDP the gradients are all-reduced once, in the backward pass of the
    last micro-batch. With a ``scaler`` (fp16) the loss is scaled for the backward pass, the
    gradients are unscaled before clipping, and a step whose gradients overflowed is skipped (the
    scaler then lowers its scale). Micro-batches count equally, or by ``micro_batch_weights``
    where the method weighs them (MLM: by masked tokens). Returns the step's loss (detached, on
    the device: no host sync) and the last micro-batch's output.
    """
    count = len(micro_batches)
    weights = micro_batch_weights(step_fn if method is None else method, micro_batches, device)
    total = torch.zeros((), device=device)
    for i, views in enumerate(micro_batches):
        with no_sync(step_fn) if i + 1 < count else contextlib.nullcontext():
            with autocast(device, precision):
                out = step_fn(views)
            loss = out.loss.float()
            # the (weighted) mean over micro-batches, one backward pass at a time
            share = loss / count if weights is None else loss * weights[i]
            (share if scaler is None else scaler.scale(share)).backward()
        total += share.detach()
    if scaler is not None:
        scaler.unscale_(optimizer)
    if clip_grad > 0:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, clip_grad)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return total, out


def micro_batch_weights(method: Method, micro_batches: Sequence[list[torch.Tensor]],
                        device: torch.device) -> Optional[torch.Tensor]:
    """(k,) shares of the step's loss for ``k`` micro-batches, summing to 1, from the method's
    ``loss_weight`` (e.g. masked tokens) summed over the processes; None when there is one
    micro-batch or the method weighs them equally.

    With micro-batch losses that are means over their own terms (under DDP: over every process's
    terms of that micro-batch), weighting micro-batch i by its share of the step's terms makes the
    accumulated gradient that of the mean over all the step's terms: exactly one big batch.
    """
    if len(micro_batches) == 1:
        return None
    if not isinstance(method, Method):  # a DDP or compiled wrapper would hide loss_weight
        raise TypeError(f"weighing micro-batches needs the method itself, got a "
                        f"{type(method).__name__}: pass train_step(..., method=...) with the "
                        "method inside the wrapper")
    raw = [method.loss_weight(views) for views in micro_batches]
    if any(weight is None for weight in raw):
        return None
    weights = torch.stack([torch.as_tensor(w, device=device) for w in raw]).float()
    all_reduce_sum_(weights)  # micro-batch i of every process is one part of the global batch
    return weights / weights.sum().clamp(min=1)


def split_views(views: list[torch.Tensor], parts: int) -> list[list[torch.Tensor]]:
    """``parts`` micro-batches of views: sample slices of equal size, every view cut alike."""
    return [list(micro) for micro in zip(*(view.tensor_split(parts) for view in views))]


@dataclass
class HealthData:
    """The fixed held-out batch the health monitor and the online k-NN probe look at every time."""

    images: torch.Tensor  # on the device: uint8 images, or int64 token ids for sequences
    query_images: Optional[torch.Tensor]  # held-out labelled queries of the k-NN probe
    query_labels: Optional[torch.Tensor]
    bank_images: Optional[torch.Tensor]  # labelled training images for the k-NN probe
    bank_labels: Optional[torch.Tensor]
    num_classes: int


class Trainer:
    """Pretrains ``config.method`` on ``config.data.dataset`` and writes the run directory."""

    def __init__(self, config: Config, resume: bool = False) -> None:
        self.config = config
        self.resume = resume
        self.run_dir = Path(config.out)
        self.process = process_info()
        self.device = training_device(self.process, config.train.device)
        self.precision = resolve_precision(config.train.precision, self.device)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            # Image shapes are fixed for a whole run, so cuDNN's autotuner pays for itself in a few
            # steps (length-bucketed sequences vary, but run no convolutions);
            # TF32 covers the float32 matmuls that autocast leaves (the loss, the LARS norms).
            torch.backends.cudnn.benchmark = True
            torch.set_float32_matmul_precision("high")

    # ---------------------------------------------------------------- set-up
    def _prepare_run_dir(self) -> None:
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ConfigError(f"--out {self.run_dir} is a file; the run directory must be a folder")
        checkpoint = self.run_dir / CHECKPOINT
        if self.resume and not checkpoint.is_file():
            shared = (" (every process reads it: on several nodes the run directory must be on a "
                      "file system they all see)" if self.process.distributed else "")
            raise DataError(f"--resume: no checkpoint at {checkpoint}{shared}; start the run "
                            "without --resume")
        if not self.resume and checkpoint.is_file():
            raise ConfigError(f"{self.run_dir} already holds a run; continue it with --resume, "
                              "or choose another --out")
        if self.process.is_main:
            (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            if not self.resume:  # a resumed run's config is saved once its checkpoint fits it
                self.config.save(self.run_dir / "config.yaml")

    def _micro_batch_size(self) -> int:
        """Images per forward pass of one process; the global batch must split evenly."""
        train = self.config.train
        accumulate = train.accumulate_steps
        parts = self.process.world_size * accumulate
        if train.batch_size % parts:
            raise ConfigError(
                f"train.batch_size={train.batch_size} is the global batch: it must be a multiple of "
                f"the number of processes ({self.process.world_size}) × train.accumulate_steps "
                f"({accumulate}) = {parts}; e.g. {max(parts, train.batch_size // parts * parts)}")
        self.accumulate_steps = accumulate
        return train.batch_size // parts

    def _build(self) -> None:
        cfg = self.config
        seed_everything(cfg.train.seed)
        self.train_data = load_split(cfg.data.dataset, "train", cfg.data.data_dir,
                                     cfg.data.options)
        # Sequence data: token ids instead of images, a tokeniser instead of an image shape.
        self.tokenizer = (self._make_tokenizer()
                          if isinstance(self.train_data, SequenceSource) else None)
        if self.tokenizer is None:
            self.in_shape = self.train_data.shape
            encoder = build_backbone(cfg.backbone, self.in_shape[0], self.in_shape[1])
        else:
            self.in_shape = None
            encoder = build_backbone(cfg.backbone, 0, 0, tokenizer=self.tokenizer)
        self.method: Method = build_method(cfg.method, encoder, self.in_shape,
                                           num_train=len(self.train_data)).to(self.device)
        # channels_last pays on both: cuDNN's NHWC kernels on GPUs, oneDNN's on CPUs (1.5× for the
        # small CNN on 2 cores, measured). Token ids are 2-D: no memory format to choose.
        images_nhwc = cfg.train.channels_last and self.tokenizer is None
        self.memory_format = torch.channels_last if images_nhwc else torch.contiguous_format
        self.method = self.method.to(memory_format=self.memory_format)
        self.micro_batch = self._micro_batch_size()
        # SyncBatchNorm, the gather hooks and DDP (all no-ops for one process); self.method stays
        # the plain module that checkpoints, health checks and after_step use.
        sync_bn = cfg.train.sync_bn
        self.step_module = prepare_method(self.method, self.process, self.device, sync_bn)
        recipe = cfg.views.get("recipe") or self.method.view_recipe_for(self.tokenizer)
        if self.tokenizer is None:
            self.views = make_views(recipe, self.in_shape, cfg.views)
            self.stream = BatchStream(self.train_data, cfg.train.batch_size, self.device,
                                      cfg.train.seed, shuffle=True, drop_last=True,
                                      device_max_gb=cfg.data.device_max_gb,
                                      num_workers=cfg.data.num_workers, rank=self.process.rank,
                                      world_size=self.process.world_size)
        else:
            self.views = make_sequence_views(recipe, self.tokenizer, cfg.views)
            self.stream = SequenceBatchStream(self.train_data, self.tokenizer, cfg.train.batch_size,
                                              self.device, cfg.train.seed,
                                              max_length=cfg.data.max_length,
                                              bucket_batches=cfg.data.bucket_batches,
                                              rank=self.process.rank,
                                              world_size=self.process.world_size)
        self.steps_per_epoch = len(self.stream)
        if cfg.train.steps_per_epoch > 0:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.train.steps_per_epoch)
        self._set_schedule()
        self.optimizer = build_optimizer(self.method, cfg.optim, cfg.train.batch_size)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        # fp16 needs its loss scaled: small gradients would otherwise flush to zero (bf16 has
        # float32's exponent range and needs no scaler).
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self.step_fn = self.step_module
        if cfg.train.compile:
            if self.cuda:
                self.step_fn = torch.compile(self.step_module)
            elif self.process.is_main:
                print("note: train.compile is only used on CUDA; running eagerly on the CPU")
        main = self.process.is_main
        self.health_data = self._health_data() if main else None
        self.monitor = HealthMonitor()
        self.log = MetricsLog(self.run_dir / "metrics.jsonl") if main else None

    def _set_schedule(self) -> None:
        """Steps, epochs and warm-up from train.total_steps (when set) or train.epochs."""
        cfg = self.config
        fixed = cfg.train.total_steps > 0
        self.total_steps = (cfg.train.total_steps if fixed
                            else cfg.train.epochs * self.steps_per_epoch)
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)  # the last may be cut short
        warmup = round(cfg.optim.warmup_epochs * self.steps_per_epoch)
        if fixed:
            warmup = min(warmup, round(BUDGET_WARMUP_SHARE * self.total_steps))
        self.warmup_steps = min(warmup, max(0, self.total_steps - 1))

    def _lr_factor(self, step: int) -> float:
        """The schedule's factor of the base rates at ``step`` (warm-up, then the decay)."""
        optim = self.config.optim
        return lr_factor(step, self.total_steps, self.warmup_steps, optim.min_lr_ratio,
                         optim.schedule)

    def _optimizer_step(self, images: torch.Tensor, view_gen: torch.Generator
                        ) -> tuple[torch.Tensor, StepOutput]:
        """Views of one batch, then one optimiser step on them: (loss, the method's output)."""
        views = [v.contiguous(memory_format=self.memory_format) for v in self.views(images, view_gen)]
        return train_step(self.step_fn, split_views(views, self.accumulate_steps), self.optimizer,
                          self.device, self.precision, self.config.optim.clip_grad, self.scaler,
                          self.method)

    def _measure_total_steps(self) -> None:
        """Fix ``train.total_steps`` from ``train.budget_minutes`` and the measured step rate
        (see the module docstring); saved to config.yaml. Nothing the run computes afterwards
        depends on the throwaway steps: parameters, optimiser, loss scaler and the global random
        state are restored, and every epoch seeds its own streams. (``after_step`` is left out:
        its momentum updates cost little next to a step.)"""
        train = self.config.train
        budget = 60 * train.budget_minutes
        started = time.perf_counter()
        saved = copy.deepcopy({"method": self.method.state_dict(),
                               "optimizer": self.optimizer.state_dict(),
                               "scaler": self.scaler.state_dict() if self.scaler else None})
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if self.cuda else None
        view_gen = torch.Generator(device=self.device).manual_seed(
            epoch_seed(train.seed, 0, VIEW_STREAM, self.process.rank))
        set_learning_rates(self.optimizer, self.base_lrs, self._lr_factor(0))
        batches = itertools.chain.from_iterable(self.stream.epoch(e) for e in itertools.count())
        timed_from, timed, loss = started, 0, None
        self.method.train()
        for i, (images, _) in enumerate(batches):
            if i == CALIBRATION_WARMUP:
                if loss is not None:
                    float(loss)  # waits for the device
                timed_from = time.perf_counter()
            loss, _ = self._optimizer_step(images, view_gen)
            timed = i + 1 - CALIBRATION_WARMUP
            now = time.perf_counter()
            enough = timed >= CALIBRATION_STEPS and now - timed_from >= CALIBRATION_SECONDS
            stop = enough or (timed >= 2 and now - started > CALIBRATION_SHARE * budget)
            if self.process.world_size > 1:
                # every process must take the same number of steps (each step's gradients are
                # all-reduced): stop when any of them would, a decision they share. Alone, no
                # flag: on a GPU its .item() would wait for the device at every timed step.
                flag = torch.tensor([float(stop)], device=self.device)
                stop = all_reduce_sum_(flag).item() > 0
            if stop:
                break
        float(loss)
        seconds = time.perf_counter() - timed_from
        self.method.load_state_dict(saved["method"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.scaler is not None:
            self.scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        # every process must train the same number of steps: the means of their rates and of
        # their calibration times, which each measured on its own clock
        measured = torch.tensor([timed / max(seconds, 1e-9), time.perf_counter() - started],
                                device=self.device, dtype=torch.float64)
        rate, calibration = (all_reduce_sum_(measured) / self.process.world_size).tolist()
        train.total_steps = max(1, math.floor(rate * max(0.0, budget - calibration)))
        self._set_schedule()
        if self.process.is_main:
            self.config.save(self.run_dir / "config.yaml")
        self._write({"kind": "run", "event": "budget", "time": time.time(),
                     "budget_minutes": train.budget_minutes, "steps_per_second": rate,
                     "timed_steps": timed, "calibration_seconds": calibration,
                     "total_steps": train.total_steps, "epochs": self.epochs})
        if train.progress and self.process.is_main:
            print(f"budget {train.budget_minutes:g} min: {rate:.2f} steps/s measured on {timed} "
                  f"steps -> {train.total_steps} steps ({self.epochs} epochs of "
                  f"{self.steps_per_epoch}); recorded as train.total_steps in config.yaml")

    def _make_tokenizer(self) -> Tokenizer:
        """The tokeniser of the data's alphabet. A text tokeniser is learnt from the training
        texts by rank 0 alone and saved in the run dir (a resumed run loads it); the other
        processes of a distributed run wait for it and load that very file (its SHA-256 checked),
        so every process holds rank 0's vocabulary."""
        data = self.config.data
        if self.train_data.alphabet != "text":
            return make_tokenizer(self.train_data.alphabet, data.kmer)
        from selfsup.tokenize.text import TOKENIZER_FILE, TextTokenizer

        path = self.run_dir / TOKENIZER_FILE
        if self.resume and path.is_file():
            return TextTokenizer.load(path)
        if self.process.is_main:
            sha256 = None
            try:
                tokenizer = TextTokenizer.train(self.train_data.sequences, data.vocab_size)
                tokenizer.save(path)
                sha256 = tokenizer.sha256
            finally:
                # The others wait for this hash: send None when learning or saving failed, so that
                # they stop too rather than wait out the process group's timeout.
                broadcast_from_main(sha256)
            return tokenizer
        sha256 = broadcast_from_main(None)
        if sha256 is None:
            raise DataError("rank 0 could not make the text tokeniser; its error says why")
        if not path.is_file():
            raise DataError(f"rank 0 saved the text tokeniser at {path}, but rank "
                            f"{self.process.rank} does not see it: on several nodes the run "
                            "directory must be on a file system they all see")
        return TextTokenizer.load(path, sha256)

    def _encoder_spec(self) -> dict[str, Any]:
        """How to rebuild the encoder (``encoder.json``)."""
        cfg = self.config
        if self.tokenizer is None:
            return image_encoder_spec(cfg.backbone, self.in_shape, cfg.data.dataset)
        return token_encoder_spec(self.method.export_encoder.config(), self.tokenizer.config(),
                                  cfg.data.dataset, cfg.data.max_length)

    def _inputs_of(self, source: Any, indices: torch.Tensor) -> torch.Tensor:
        """Samples ``indices`` of ``source`` on the device: uint8 images, or right-padded token ids
        (their attention mask is ids != <pad>)."""
        if self.tokenizer is None:
            return source.get(indices).to(self.device)
        max_length = min(self.config.data.max_length, HEALTH_MAX_TOKENS)
        return source.encode(indices, self.tokenizer, max_length).ids.to(self.device)

    def _write(self, record: dict[str, Any]) -> None:
        """Append a record to metrics.jsonl (rank 0 alone keeps the log)."""
        if self.log is not None:
            self.log.write(record)

    def _health_data(self) -> HealthData:
        """A fixed batch from the test split (else from train) and a labelled probe bank."""
        cfg = self.config.train
        if cfg.health_samples < 512:
            raise ConfigError(f"train.health_samples must be ≥ 512 for a stable effective rank, "
                              f"got {cfg.health_samples}")
        try:
            test: Optional[ImageSource] = load_split(self.config.data.dataset, "test",
                                                     self.config.data.data_dir,
                                                     self.config.data.options)
        except DataError:
            test = None
        # The health batch needs ≥ health_samples images: the test split when it is that large.
        health_source = test if test is not None and len(test) >= cfg.health_samples else self.train_data
        pick = torch.Generator().manual_seed(12345)
        order = torch.randperm(len(health_source), generator=pick)[: cfg.health_samples]
        images = self._inputs_of(health_source, order)
        bank_images = bank_labels = query_images = query_labels = None
        num_classes = 0
        train = self.train_data
        if train.labels is not None:
            if test is not None and test.labels is not None:  # queries: labelled held-out images
                bank = torch.randperm(len(train), generator=pick)[: cfg.probe_train_samples]
                query_source = test
                queries = torch.randperm(len(test), generator=pick)[: cfg.probe_test_samples]
            else:  # no labelled test split: disjoint query and bank parts of the training set
                shuffled = torch.randperm(len(train), generator=pick)
                num_queries = min(cfg.probe_test_samples, len(train) // 5)
                query_source, queries = train, shuffled[:num_queries]
                bank = shuffled[num_queries:num_queries + cfg.probe_train_samples]
            if len(queries) > 0 and len(bank) > 0:
                bank_images = self._inputs_of(train, bank)
                bank_labels = train.labels[bank].to(self.device)
                query_images = self._inputs_of(query_source, queries)
                query_labels = query_source.labels[queries].to(self.device)
                num_classes = max(train.num_classes, query_source.num_classes)
        return HealthData(images, query_images, query_labels, bank_images, bank_labels,
                          num_classes)

    # ---------------------------------------------------------------- checkpoints
    def _state(self, epoch: int, step: int) -> dict[str, Any]:
        state = {
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": epoch,  # epochs completed
            "step": step,
            "monitor": self.monitor.state_dict(),
            "wall_seconds": self.wall_seconds,
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def _restore(self) -> tuple[int, int]:
        """Every process loads the checkpoint (the processes must agree on all of it)."""
        path = self.run_dir / CHECKPOINT
        state = load_checkpoint(path, map_location=self.device)
        missing = [key for key in CHECKPOINT_KEYS
                   if not isinstance(state, dict) or key not in state]
        if missing:
            raise DataError(f"checkpoint {path} lacks {', '.join(missing)}: it is not a selfsup "
                            "training checkpoint, or it is damaged; start the run afresh")
        try:
            self.method.load_state_dict(state["method"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            first_line = str(error).strip().splitlines()[0]
            raise ConfigError(f"checkpoint {path} does not fit the model this config builds "
                              f"({first_line}); a resumed run keeps the method, backbone and "
                              "optimiser it was trained with: drop the --set that changes them"
                              ) from None
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.monitor.load_state_dict(state["monitor"])
        self.wall_seconds = state.get("wall_seconds", 0.0)
        if self.log is not None:
            self.log.truncate_after(state["step"])
        return state["epoch"], state["step"]

    # ---------------------------------------------------------------- the loop
    def fit(self) -> Path:
        """Train to the configured number of epochs (from the last checkpoint with resume)."""
        with process_group(self.process, self.device):
            self._prepare_run_dir()
            self._build()
            self.wall_seconds = 0.0
            if self.config.train.budget_minutes > 0 and self.config.train.total_steps == 0:
                self._measure_total_steps()  # a resumed budget run has its count already
            start_epoch, step = (self._restore() if self.resume else (0, 0))
            if self.resume and self.process.is_main:
                self.config.save(self.run_dir / "config.yaml")  # with this resume's changes
            self._write({"kind": "run", "event": "resume" if self.resume else "start",
                         "time": time.time(), "epoch": start_epoch, "step": step,
                         "device": str(self.device), "device_name": self._device_name(),
                         "precision": self.precision, "torch": torch.__version__,
                         "processes": self.process.world_size,
                         "batch_size": self.config.train.batch_size, "micro_batch": self.micro_batch,
                         "accumulate_steps": self.accumulate_steps,
                         "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
                         "num_train": len(self.train_data), "host": platform.node()})
            for epoch in range(start_epoch, self.epochs):
                step = self._train_epoch(epoch, step)
                self._end_of_epoch(epoch, step)
            self._finish(step)
        return self.run_dir

    def _device_name(self) -> str:
        return torch.cuda.get_device_name(self.device) if self.cuda else platform.processor() or "cpu"

    def _train_epoch(self, epoch: int, step: int) -> int:
        cfg = self.config.train
        rank, processes = self.process.rank, self.process.world_size
        self.method.train()
        # Per process: the processes' views must differ, as must their draws inside forward passes.
        view_gen = torch.Generator(device=self.device).manual_seed(
            epoch_seed(cfg.seed, epoch, VIEW_STREAM, rank))
        torch.manual_seed(epoch_seed(cfg.seed, epoch, FORWARD_STREAM, rank))
        epoch_start = time.perf_counter()
        interval_start, interval_steps = epoch_start, 0
        # [Σ loss over the log interval, Σ over the epoch, count of non-finite losses]
        sums = torch.zeros(3, device=self.device)
        show = cfg.progress and self.process.is_main
        # the last epoch of a fixed step count may be cut short
        steps_this_epoch = min(self.steps_per_epoch, self.total_steps - step)
        bar = tqdm(total=steps_this_epoch, desc=f"epoch {epoch + 1}/{self.epochs}",
                   disable=not show, dynamic_ncols=True, leave=False)
        for i, (images, _) in enumerate(self.stream.epoch(epoch)):
            if i >= steps_this_epoch:
                break
            set_learning_rates(self.optimizer, self.base_lrs, self._lr_factor(step))
            loss, out = self._optimizer_step(images, view_gen)
            self.method.after_step(step, self.total_steps)
            step += 1
            interval_steps += 1
            sums += torch.stack([loss, loss, (~torch.isfinite(loss)).float()])
            bar.update(1)
            last = i + 1 == steps_this_epoch
            if interval_steps == cfg.log_every or last:
                # The only host-device syncs (and, between processes, the only collective outside
                # the training step) of the loop: once per log interval. The logged loss is the
                # mean over processes, i.e. the loss of the global batch.
                interval_sum, _, nonfinite = all_reduce_sum_(sums.clone()).tolist()
                if nonfinite:  # every process sees the sum, so all of them stop together
                    bar.close()
                    self._diverged(epoch, step)
                now = time.perf_counter()
                rate = interval_steps * cfg.batch_size / max(now - interval_start, 1e-9)
                mean_loss = interval_sum / (interval_steps * processes)
                self._write({"kind": "step", "step": step, "epoch": epoch + 1, "loss": mean_loss,
                             "lr": self.optimizer.param_groups[0]["lr"],
                             "images_per_s": rate, "time": time.time(),
                             **_scalars(out.logs)})
                bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{rate:,.0f}")
                interval_start, interval_steps = now, 0
                sums[0] = 0
        bar.close()
        seconds = time.perf_counter() - epoch_start
        self.wall_seconds += seconds
        epoch_loss = all_reduce_sum_(sums[1].clone()).item() / (steps_this_epoch * processes)
        images_per_s = steps_this_epoch * cfg.batch_size / seconds
        self._write({"kind": "epoch", "epoch": epoch + 1, "step": step, "loss": epoch_loss,
                     "images_per_s": images_per_s, "epoch_seconds": seconds, "time": time.time()})
        self.monitor.loss(epoch + 1, epoch_loss)
        if show:
            print(f"epoch {epoch + 1}/{self.epochs}: loss {epoch_loss:.4f}, "
                  f"{images_per_s:,.0f} images/s, {seconds:.1f} s")
        return step

    def _diverged(self, epoch: int, step: int) -> None:
        checkpoint = self.run_dir / CHECKPOINT
        kept = (f"the last good checkpoint ({checkpoint}) is kept; fix the cause and continue with "
                "--resume" if checkpoint.is_file() else "no checkpoint was written yet")
        message = (f"the training loss became NaN or infinite by step {step} (epoch {epoch + 1}); "
                   f"{kept}. Usual fixes: a lower optim.lr, gradient clipping "
                   "(--set optim.clip_grad=1.0), or train.precision=fp32.")
        self._write({"kind": "run", "event": "diverged", "time": time.time(), "epoch": epoch + 1,
                     "step": step, "message": message})
        raise TrainingDiverged(message)

    @torch.no_grad()
    def _embed(self, images: torch.Tensor, fn, chunk: int = 1024) -> dict[str, torch.Tensor]:
        outs: dict[str, list[torch.Tensor]] = {}
        for start in range(0, len(images), chunk):
            x = images[start:start + chunk]
            x = (to_input(x) if x.dtype == torch.uint8 else x).contiguous(memory_format=self.memory_format)
            with autocast(self.device, self.precision):
                for name, z in fn(x).items():
                    outs.setdefault(name, []).append(z.float())
        return {name: torch.cat(parts) for name, parts in outs.items()}

    @torch.no_grad()
    def _held_out(self, inputs: torch.Tensor) -> dict[str, float]:
        """The method's loss and logs on fixed views of held-out inputs (eval mode, no update)."""
        views = self.views(inputs, torch.Generator(device=self.device).manual_seed(778))
        with autocast(self.device, self.precision):
            out = self.method(views)
        return {"loss": float(out.loss), **_scalars(out.logs)}

    def _end_of_epoch(self, epoch: int, step: int) -> None:
        """Health checks, the online probe and the checkpoint: rank 0 alone, with the plain module
        in eval mode (no collective runs in there, so the other processes need not wait)."""
        if not self.process.is_main:
            return
        cfg = self.config.train
        last = epoch + 1 == self.epochs
        data = self.health_data
        self.method.eval()
        records: list[dict] = []
        if (epoch + 1) % cfg.health_every == 0 or last:
            clean = self._embed(data.images, self.method.health_embeddings)
            pair_gen = torch.Generator(device=self.device).manual_seed(777)
            augmented = self.views(data.images, pair_gen)[0]
            paired = self._embed(augmented, self.method.health_embeddings)
            records += self.monitor.check(epoch + 1, step, {k: (clean[k], paired[k]) for k in clean})
        if getattr(self.method, "held_out_logs", False):  # e.g. MLM's held-out perplexity
            records.append({"kind": "held_out", "epoch": epoch + 1, "step": step,
                            **self._held_out(data.images[:HELD_OUT_SAMPLES])})
        if data.bank_images is not None and ((epoch + 1) % cfg.probe_every == 0 or last):
            embed = lambda x: {"f": self.method.embed(x)}  # noqa: E731
            bank = self._embed(data.bank_images, embed)["f"]
            queries = self._embed(data.query_images, embed)["f"]
            accuracy = knn_accuracy(bank, data.bank_labels, queries, data.query_labels, data.num_classes,
                                    k=online_knn_k(self.config.eval.knn_k, data.bank_labels),
                                    temperature=self.config.eval.knn_temperature)
            records += self.monitor.probe(epoch + 1, step, accuracy)
        self.method.train()
        for record in records:
            self._write(record)
            for message in ([record["message"]] if record.get("kind") == "warning" else
                            record.get("warnings", [])):
                print(f"WARNING (epoch {epoch + 1}): {message}")
        if cfg.progress:
            summary = [f"{r['embedding']} rank {r['effective_rank']:.1f}/{r['dim']}" for r in records
                       if r.get("kind") == "health"]
            summary += [f"k-NN {r['knn_top1']:.3f}" for r in records if r.get("kind") == "probe"]
            if summary:
                print("  health: " + ", ".join(summary))
        save_checkpoint(self.run_dir / CHECKPOINT, self._state(epoch + 1, step))

    def _finish(self, step: int) -> None:
        import json

        if not self.process.is_main:
            return
        save_encoder(self.run_dir, self.method.export_encoder, self._encoder_spec())
        verdict = self.monitor.verdict()
        (self.run_dir / "health_verdict.json").write_text(json.dumps(verdict, indent=2))
        self._write({"kind": "run", "event": "end", "time": time.time(), "step": step,
                     "wall_seconds": self.wall_seconds, "health": verdict.get("status")})


def _scalars(logs: dict[str, Any]) -> dict[str, float]:
    """A method's extra logs of the latest step (loss terms, momentum, ...) as plain floats."""
    return {key: float(value.item() if isinstance(value, torch.Tensor) else value)
            for key, value in logs.items()}


def pretrain(config: Config, resume: bool = False) -> Path:
    """Run (or resume) pretraining and return the run directory."""
    return Trainer(config, resume).fit()
