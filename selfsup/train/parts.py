"""The parts of a training run, built from a config: what the loop of :mod:`selfsup.train.trainer`
runs over, and what a benchmark or a user's own loop can take as they are.

``build_parts(config)`` reads the training split, lets its :class:`~selfsup.modalities.Modality`
build the encoder, the views and the batch stream, builds the method with its build context,
wraps it for data parallel, and makes the optimiser and the learning-rate schedule. Nothing here
writes to the run directory except a text run's learnt tokeniser, which the run needs to be read
again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from selfsup.config import Config
from selfsup.data import load_split
from selfsup.errors import ConfigError
from selfsup.methods import Method, build_method
from selfsup.methods.base import StepOutput
from selfsup.modalities import Modality, modality_of
from selfsup.backbones.hf_esm import hf_folder, load_esm_weights
from selfsup.train.checkpoint import load_initial_weights
from selfsup.train.device import resolve_precision, seed_everything
from selfsup.train.distributed import (
    broadcast_from_main, prepare_method, process_collectives, training_device,
)
from selfsup.train.optim import build_optimizer, lr_factor, set_learning_rates
from selfsup.train.process import ProcessInfo, process_info
from selfsup.train.step import split_views, train_step

VIEW_STREAM, FORWARD_STREAM = 1, 2  # the random streams of an epoch besides the data order
# With a fixed step count (a budget) the warm-up is at most this share of the steps: an epoch of
# warm-up on a large corpus can be most of a short run.
BUDGET_WARMUP_SHARE = 0.1


@dataclass
class Schedule:
    """How long a run is and how its learning rate moves: a warm-up of ``warmup_steps``, then a
    decay (``kind``: cosine or linear) to ``min_lr_ratio`` of the base rates at the last step."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    min_lr_ratio: float
    kind: str

    @property
    def epochs(self) -> int:
        """Epochs the run takes; the last may be cut short by a fixed step count."""
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def factor(self, step: int) -> float:
        """The factor of the base rates at ``step``."""
        return lr_factor(step, self.total_steps, self.warmup_steps, self.min_lr_ratio, self.kind)

    @classmethod
    def from_config(cls, config: Config, steps_per_epoch: int) -> "Schedule":
        """Steps from ``train.total_steps`` (when set) or ``train.epochs``; the warm-up from
        ``optim.warmup_epochs``, at most ``BUDGET_WARMUP_SHARE`` of a fixed step count."""
        fixed = config.train.total_steps > 0
        total = config.train.total_steps if fixed else config.train.epochs * steps_per_epoch
        warmup = round(config.optim.warmup_epochs * steps_per_epoch)
        if fixed:
            warmup = min(warmup, round(BUDGET_WARMUP_SHARE * total))
        return cls(steps_per_epoch, total, min(warmup, max(0, total - 1)),
                   config.optim.min_lr_ratio, config.optim.schedule)


@dataclass
class TrainingParts:
    """Everything one process trains with. ``method`` is the plain module (checkpoints, health
    checks, ``after_step``); ``step_fn`` is what a step calls (the method, or its DDP or
    compiled wrapper)."""

    config: Config
    process: ProcessInfo
    device: torch.device
    precision: str
    modality: Modality
    train_data: Any
    method: Method
    step_fn: nn.Module
    stream: Any
    views: Callable
    optimizer: torch.optim.Optimizer
    base_lrs: list[float]
    scaler: Optional[torch.amp.GradScaler]
    schedule: Schedule
    memory_format: torch.memory_format
    micro_batch: int  # samples per forward pass of one process
    accumulate_steps: int

    def set_learning_rates(self, step: int) -> None:
        """The optimiser's rates at ``step`` of the schedule."""
        set_learning_rates(self.optimizer, self.base_lrs, self.schedule.factor(step))

    def step(self, batch: Any, view_generator: torch.Generator) -> tuple[torch.Tensor, StepOutput]:
        """Views of one batch, then one optimiser step on them: (loss, the method's output)."""
        views = [v.contiguous(memory_format=self.memory_format)
                 for v in self.views(batch, view_generator)]
        return train_step(self.step_fn, split_views(views, self.accumulate_steps), self.optimizer,
                          self.device, self.precision, self.config.optim.clip_grad, self.scaler,
                          self.method)


def micro_batch_size(config: Config, world_size: int) -> int:
    """Samples per forward pass of one process; the global batch must split evenly."""
    train = config.train
    parts = world_size * train.accumulate_steps
    if train.batch_size % parts:
        raise ConfigError(
            f"train.batch_size={train.batch_size} is the global batch: it must be a multiple of "
            f"the number of processes ({world_size}) × train.accumulate_steps "
            f"({train.accumulate_steps}) = {parts}; e.g. {max(parts, train.batch_size // parts * parts)}")
    return train.batch_size // parts


def build_parts(config: Config, resume: bool = False,
                process: Optional[ProcessInfo] = None) -> TrainingParts:
    """The parts of a run of ``config`` on this process (``process``: torchrun's environment by
    default). ``resume``: a text run loads the tokeniser it learnt instead of learning it again."""
    process = process or process_info()
    device = training_device(process, config.train.device)
    precision = resolve_precision(config.train.precision, device)
    if device.type == "cuda":
        # Image shapes are fixed for a whole run, so cuDNN's autotuner pays for itself in a few
        # steps (length-bucketed sequences vary, but run no convolutions); TF32 covers the
        # float32 matmuls that autocast leaves (the loss, the LARS norms).
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    seed_everything(config.train.seed)
    train_data = load_split(config.data.dataset, "train", config.data.data_dir,
                            config.data.options)
    modality = modality_of(train_data).for_training(train_data, config, Path(config.out), resume,
                                                    process.rank, broadcast_from_main)
    encoder = modality.build_encoder(config.backbone)
    init = config.backbone.get("init") if not resume else None  # resumes: the checkpoint's
    esm = hf_folder(init)
    if init and esm is None:
        # before the method is built: its EMA teachers start as copies of these weights
        load_initial_weights(encoder, init)
    context = modality.build_context(len(train_data), process_collectives(process))
    method: Method = build_method(config.method, encoder, context)
    if esm is not None:  # ESM-2's encoder, and its LM head where the method has one (mlm)
        load_esm_weights(encoder, method, esm)
    method = method.to(device)
    memory_format = modality.memory_format(config.train.channels_last)
    method = method.to(memory_format=memory_format)
    micro_batch = micro_batch_size(config, process.world_size)
    # SyncBatchNorm and DDP (no-ops for one process)
    step_module = prepare_method(method, process, device, config.train.sync_bn)
    # the method's recipe for this kind of data (seq-contrastive's differ by alphabet)
    recipe = config.views.get("recipe") or type(method).view_recipe_for(modality.name)
    views = modality.make_views(recipe, config.views)
    stream = modality.batch_stream(train_data, config, device, process.rank, process.world_size)
    steps_per_epoch = len(stream)
    if config.train.steps_per_epoch > 0:
        steps_per_epoch = min(steps_per_epoch, config.train.steps_per_epoch)
    schedule = Schedule.from_config(config, steps_per_epoch)
    optimizer = build_optimizer(method, config.optim, config.train.batch_size,
                                fixed_modules=method.fixed_lr_modules())
    # fp16 needs its loss scaled: small gradients would otherwise flush to zero (bf16 has
    # float32's exponent range and needs no scaler).
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    step_fn = step_module
    if config.train.compile:
        if device.type == "cuda":
            step_fn = torch.compile(step_module)
        elif process.is_main:
            print("note: train.compile is only used on CUDA; running eagerly on the CPU")
    return TrainingParts(config, process, device, precision, modality, train_data, method,
                         step_fn, stream, views, optimizer,
                         [g["lr"] for g in optimizer.param_groups], scaler, schedule,
                         memory_format, micro_batch, config.train.accumulate_steps)
