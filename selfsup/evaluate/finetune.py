"""Fine-tuning: the transfer path of a run's encoder, and its label-efficiency study against scratch.

Image encoders and token encoders (proteins, DNA, text) share one protocol; what differs is how data
reaches the model, an *inputs* object that the run's modality gives (:mod:`selfsup.modalities`):
device-side crop + flip for images, length-bucketed batches for sequences (long sequences cropped to
random windows of the run's pretraining ``max_length``). The training step, the optimiser builder
and the learning-rate schedule are pretraining's (:mod:`selfsup.train`).

A new linear head goes on top of the encoder and the pair trains on a stratified fraction of the
training labels, in one of two modes:

* ``full``: backbone and head train; the backbone at a smaller learning rate than the new head, so
  the first large, noisy gradients of a random head do not wash out the pretrained features. For a
  ViT the rate also falls layer by layer towards the input (layer-wise LR decay, BEiT/MAE); CNNs and
  token Transformers train at one backbone rate throughout;
* ``frozen``: only the head trains. The backbone runs in eval mode without gradients, so its
  parameters and its BatchNorm statistics stay exactly as they were.

Defaults: the head at AdamW 1e-2 and the backbone at 0.1 of it; crops keep 80–100% of the area.
How they were picked, said plainly: during development, on scikit-learn's 8×8 digits and on the
*test* split of digits (a frozen small CNN's head reached 53% at 1e-3 and 70.5% at 1e-2, against
71.9% for the L-BFGS linear probe on the same features; full fine-tuning 78% and 96%; crops down to
50% plus flips cost full fine-tuning 9 points, 88% vs 97%). So numbers on digits are optimistic by
that choice; numbers on other data sets (Fashion-MNIST, …) use these fixed defaults and choose
nothing on their test split. Flips stay on by default (natural images); turn them
off (``flip_prob=0``) for data that is not mirror-symmetric, such as digits or text.

The baseline (``init="scratch"``) is the same backbone from a random initialisation under the same
protocol, except that its backbone trains at the full base rate: a smaller rate exists to protect
pretrained features, and a random init has none to protect, so a smaller rate would only handicap the
baseline and flatter the pretraining. ``frozen`` from scratch is the random-features baseline.

Protocol (a run chooses nothing on the test split): a fixed schedule, AdamW with linear warm-up and cosine
decay, label smoothing, light crop + flip augmentation on the device (the ``crop-flip`` view recipe;
for sequences, random windows of long sequences), bf16 autocast on CUDA; the reported number is the
test accuracy after the last step. Every label fraction is run with ``seeds`` seeds; seed s trains on
its own stratified subset (seed s of :func:`~selfsup.evaluate.protocol.stratified_subset`), head
init, data order and augmentations. At a fraction of 1 the subsets coincide and only the training
randomness differs. Small subsets train for more epochs, so that every run takes at least
``min_steps`` optimiser steps.

Results are merged into ``RUN/finetune.json``: ``{"datasets": {dataset: {mode: {init: {fraction:
entry}}}}}`` where an entry holds the per-seed test accuracies, their mean and population std (as the
linear probes of ``eval.json``) and the settings used. Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import copy
import itertools
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.backbones import Layered
from selfsup.config import FinetuneConfig, OptimConfig, from_dict, set_key
from selfsup.errors import ConfigError, DataError
from selfsup.evaluate.protocol import stratified_subset, fraction_key
from selfsup.evaluate.run import labelled_splits
from selfsup.methods.base import StepOutput
from selfsup.modalities import FinetuneInputs, modality_for_spec
from selfsup.run_dir import RunDir, merge_finetune_results, read_finetune_results
from selfsup.train.checkpoint import load_encoder, random_init_encoder
from selfsup.train.device import resolve_device, resolve_precision, seed_everything
from selfsup.train.optim import build_optimizer, set_learning_rates
from selfsup.train.parts import Schedule
from selfsup.train.step import train_step

MODES = ("full", "frozen")
INITS = ("pretrained", "scratch")


DEEP_VIT_DEPTH = 12  # ViTs with at least this many blocks get MAE's ViT-B layer decay
DEEP_VIT_LAYER_DECAY = 0.65
SHALLOW_VIT_LAYER_DECAY = 0.75


def settings_from(flags: dict[str, Any], overrides: Sequence[str] = (),
                  base: Optional[FinetuneConfig] = None) -> FinetuneConfig:
    """Settings from ``base`` (a run's ``finetune`` config section; default: the defaults),
    command-line flags (``None`` = not given) and ``key=value`` overrides over it, checked as
    every config section is."""
    data: dict[str, Any] = (base or FinetuneConfig()).to_dict()
    data.update({k: v for k, v in flags.items() if v is not None})
    for item in overrides:
        # keys of this section, written with or without it (lr=..., finetune.lr=..., as the
        # section is spelt in a run's config.yaml)
        set_key(data, item.removeprefix("finetune."))
    return from_dict(FinetuneConfig, data, "finetune")


# ----------------------------------------------------------------------------------------------
# the model and its learning rates


class Classifier(nn.Module):
    """A backbone and a new linear head; with ``freeze_backbone`` the backbone never changes.

    The head standardises the features with a BatchNorm without affine parameters before the linear
    layer (as MAE's linear probe): the features of different encoders, and of a random init, differ
    in scale by orders of magnitude, and one learning rate should suit them all.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, freeze_backbone: bool) -> None:
        super().__init__()
        self.backbone = backbone
        self.freeze_backbone = freeze_backbone
        linear = nn.Linear(backbone.out_dim, num_classes)
        # A near-zero head (MAE: std 2e-5) sends almost no gradient into the pretrained backbone
        # until it has learned something.
        nn.init.trunc_normal_(linear.weight, std=2e-5, a=-4e-5, b=4e-5)
        nn.init.zeros_(linear.bias)
        self.head = nn.Sequential(nn.BatchNorm1d(backbone.out_dim, affine=False), linear)
        if freeze_backbone:
            backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> "Classifier":
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()  # keep BatchNorm statistics (and dropout) as they were
        return self

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Logits of the backbone's inputs: images (B, C, H, W), or token ids and attention mask."""
        if self.freeze_backbone:
            with torch.no_grad():
                features = self.backbone(*inputs)
        else:
            features = self.backbone(*inputs)
        return self.head(features)


def layer_count(backbone: nn.Module) -> Optional[int]:
    """The number of layers of a backbone that has them (:class:`~selfsup.backbones.Layered`:
    the ViTs), else None: CNNs and token Transformers train at one backbone rate throughout."""
    return backbone.num_layers if isinstance(backbone, Layered) else None


def default_layer_decay(depth: int) -> float:
    """0.65 for ViTs of 12 blocks or more (MAE's and BEiT's ViT-B value), else 0.75.

    The embedding trains at decay^depth of the top block's rate: 0.65 puts a 12-block ViT's
    embedding at 0.6% of it. A shallow ViT pretrained briefly on small data (what fits this library's
    CPU and small-image use) has less settled low-level features, so its lowest layers should keep
    adapting: 0.75 puts a 4-block ViT's embedding at 32% of its top block (0.65 would give 18%).
    0.75 for shallow ViTs is a choice, not a measurement; ``layer_decay`` overrides it.
    """
    return DEEP_VIT_LAYER_DECAY if depth >= DEEP_VIT_DEPTH else SHALLOW_VIT_LAYER_DECAY


def resolve_layer_decay(backbone: nn.Module, layer_decay: Optional[float] = None) -> Optional[float]:
    """The layer decay used on ``backbone``: None for backbones without layers, else ``layer_decay``
    or :func:`default_layer_decay`."""
    depth = layer_count(backbone)
    if depth is None:
        return None
    return default_layer_decay(depth) if layer_decay is None else layer_decay


def backbone_lr_scales(backbone: nn.Module, backbone_lr_scale: float = 0.1,
                       layer_decay: Optional[float] = None) -> dict[str, float]:
    """Each backbone parameter's learning rate as a multiple of the head's (the base LR).

    Backbones without layers get ``backbone_lr_scale`` throughout. A layered backbone's parameter
    in layer ``l`` (its ``layer_id``: a ViT's embeddings 0, blocks 1 … depth, the rest depth + 1)
    gets ``backbone_lr_scale × layer_decay^(depth + 1 − l)``; ``backbone_lr_scale=1`` is exactly
    the BEiT/MAE rule, where the head and the final norm share one rate. ``layer_decay`` defaults
    to :func:`default_layer_decay`.
    """
    decay = resolve_layer_decay(backbone, layer_decay)
    depth = layer_count(backbone)
    return {name: backbone_lr_scale if depth is None
            else backbone_lr_scale * decay ** (depth + 1 - backbone.layer_id(name))
            for name, _ in backbone.named_parameters()}


def classifier_optimizer(model: Classifier, lr: float, weight_decay: float,
                         backbone_scales: dict[str, float]) -> torch.optim.Optimizer:
    """AdamW at ``lr`` (not scaled by the batch size) over the trainable parameters, built by
    pretraining's builder (:func:`selfsup.train.optim.build_optimizer`): the head at ``lr``, each
    backbone parameter at its multiple in ``backbone_scales``; every group carries that multiple
    as ``lr_scale``. A frozen backbone contributes no parameters."""
    scales = {f"backbone.{name}": scale for name, scale in backbone_scales.items()}
    config = OptimConfig(name="adamw", lr=lr, lr_scaling="none", weight_decay=weight_decay)
    return build_optimizer(model, config, global_batch_size=1, lr_scales=scales)


class ClassifierStep(nn.Module):
    """A classifier as a step module of :func:`~selfsup.train.step.train_step`: a batch
    ``[*inputs, labels]`` to the label-smoothed cross-entropy, with the logits as embeddings."""

    def __init__(self, model: Classifier, label_smoothing: float) -> None:
        super().__init__()
        self.model = model
        self.label_smoothing = label_smoothing

    def forward(self, batch: list[torch.Tensor]) -> StepOutput:
        *inputs, labels = batch
        logits = self.model(*inputs)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        return StepOutput(loss=loss, embeddings=logits.detach())


# ----------------------------------------------------------------------------------------------
# one fine-tuning run


@dataclass
class FinetuneOutcome:
    """One run: the test accuracy after the last step and the per-epoch training record."""

    test_accuracy: float
    epochs: int
    steps: int
    batch_size: int
    seconds: float
    # per epoch: epoch, mean loss and train_accuracy, both on the augmented batches as trained on
    history: list[dict[str, float]] = field(default_factory=list)


def schedule(num_examples: int, settings: FinetuneConfig) -> tuple[int, int, int]:
    """(batch size, steps per epoch, epochs): at least ``settings.epochs`` epochs and
    ``settings.min_steps`` steps, the batch capped at the number of examples."""
    batch_size = min(settings.batch_size, num_examples)
    steps_per_epoch = num_examples // batch_size
    epochs = max(settings.epochs, math.ceil(settings.min_steps / steps_per_epoch))
    return batch_size, steps_per_epoch, epochs


def finetune_model(model: Classifier, train: Any, test: Any, settings: FinetuneConfig,
                   seed: int, device: torch.device, backbone_scales: dict[str, float],
                   inputs: FinetuneInputs, eval_batch_size: int = 1024) -> FinetuneOutcome:
    """Train ``model`` on the labelled ``train`` examples in place; return its accuracy on ``test``.

    ``backbone_scales`` (from :func:`backbone_lr_scales`) sets each backbone parameter's learning
    rate relative to the head's ``settings.lr``. ``inputs`` (the run's modality's
    ``finetune_inputs``) turns the data into the model's inputs. Data order and
    augmentations follow ``seed``. Each step is pretraining's :func:`train_step`, at the rates of
    a :class:`Schedule` (warm-up, then a cosine to zero).
    """
    if train.labels is None or test.labels is None:
        raise DataError(f"{train.name}: fine-tuning needs labelled train and test {inputs.noun}")
    if len(train) < 2:
        raise DataError(f"{train.name}: {len(train)} labelled example is too few to fine-tune on "
                        "(the head's BatchNorm needs batches of 2 or more); use a larger label fraction")
    # fp16 (GPUs without bf16) would need a gradient scaler here; fine-tuning is short enough to
    # run in fp32 on those GPUs instead.
    precision = resolve_precision(settings.precision, device)
    precision = "fp32" if precision == "fp16" else precision
    batch_size, steps_per_epoch, epochs = schedule(len(train), settings)
    total_steps = epochs * steps_per_epoch
    warmup_steps = min(round(settings.warmup_fraction * total_steps), total_steps - 1)
    rates = Schedule(steps_per_epoch, total_steps, warmup_steps, 0.0, "cosine")
    model = inputs.prepare(model, device)
    step_module = ClassifierStep(model, settings.label_smoothing)
    optimizer = classifier_optimizer(model, settings.lr, settings.weight_decay, backbone_scales)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    training_epoch = inputs.training_epochs(train, batch_size, seed, device)
    started = time.perf_counter()
    history, step = [], 0
    model.train()
    for epoch in range(epochs):
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        for x, labels in training_epoch(epoch):
            set_learning_rates(optimizer, base_lrs, rates.factor(step))
            loss, out = train_step(step_module, [[*x, labels]], optimizer, device, precision)
            step += 1
            loss_sum += loss
            correct += (out.embeddings.argmax(1) == labels).sum()
        history.append({"epoch": epoch + 1, "loss": (loss_sum / steps_per_epoch).item(),
                        "train_accuracy": (correct / (steps_per_epoch * batch_size)).item()})
    model.eval()
    logits = inputs.logits(model, test, device, eval_batch_size, precision)
    accuracy = (logits.argmax(1).cpu() == test.labels).float().mean().item()
    return FinetuneOutcome(accuracy, epochs, step, batch_size, time.perf_counter() - started, history)


# ----------------------------------------------------------------------------------------------
# the study over label fractions, modes and initialisations


def label_subsets(labels: torch.Tensor, fraction: float, seeds: int) -> list[torch.Tensor]:
    """The stratified labelled subsets of seeds 0 … seeds − 1, as sorted index tensors."""
    return [stratified_subset(labels, fraction, seed) for seed in range(seeds)]


def initial_backbone(pretrained: nn.Module, spec: dict[str, Any], init: str, seed: int) -> nn.Module:
    """A copy of the run's trained encoder (``pretrained``), or the architecture ``spec`` describes
    (``encoder.json``) freshly initialised under ``seed`` (``scratch``), on the encoder's device."""
    if init == "pretrained":
        return copy.deepcopy(pretrained)
    if init == "scratch":
        return random_init_encoder(spec, seed, next(pretrained.parameters()).device)
    raise ConfigError(f"unknown initialisation {init!r}; choose one of {', '.join(INITS)}")


def check_choices(fractions: Sequence[float], modes: Sequence[str], inits: Sequence[str]) -> None:
    """Raise ConfigError for a label fraction outside (0, 1], an unknown mode or initialisation."""
    if not fractions or not modes or not inits:
        raise ConfigError("fine-tuning needs at least one label fraction, mode and initialisation")
    for fraction in fractions:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise ConfigError(f"label fraction {fraction!r} is not in (0, 1]; "
                              "pass e.g. --labels-fraction 0.01,0.1,1.0")
    for mode in modes:
        if mode not in MODES:
            raise ConfigError(f"unknown fine-tune mode {mode!r}; choose {' or '.join(MODES)}")
    for init in inits:
        if init not in INITS:
            raise ConfigError(f"unknown initialisation {init!r}; choose one of {', '.join(INITS)}")


def effective_settings(settings: FinetuneConfig, init: str, backbone: nn.Module) -> dict[str, Any]:
    """The settings as used on ``backbone``: the layer decay resolved; a scratch backbone (nothing
    pretrained to protect) at the full base rate, without layer decay."""
    used = settings.to_dict()
    if init == "scratch":
        used["backbone_lr_scale"], used["layer_decay"] = 1.0, 1.0
    used["layer_decay"] = resolve_layer_decay(backbone, used["layer_decay"])
    return used


def finetune_run(run_dir: str | Path, fractions: Optional[Sequence[float]] = None,
                 modes: Sequence[str] = ("full",), inits: Sequence[str] = ("pretrained",),
                 settings: Optional[FinetuneConfig] = None, dataset: Optional[str] = None,
                 data_dir: Optional[str] = None, device: str = "auto",
                 out: Optional[str | Path] = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fine-tune the run's encoder (``inits`` "pretrained") and/or the same backbone from a random
    init ("scratch") in each mode at each label fraction, ``settings.seeds`` times each.

    The data set (``dataset``, default the run's, with the run's ``data.options`` there and none
    on another) must be one the run's encoder reads, labelled (a corpus pretrained on without
    labels needs a labelled ``dataset``; :func:`~selfsup.evaluate.run.check_encoder_fits`).
    ``fractions`` defaults to the run's ``eval.label_fractions``. Each finished (mode, init,
    fraction) is merged into ``out`` (default
    ``RUN/finetune.json``) at once, so an interrupted study keeps what it finished; returns the whole
    merged file.
    """
    run_dir = Path(run_dir)
    run = RunDir(run_dir)
    config = run.load_config()
    settings = settings or config.finetune
    settings.check()
    fractions = list(config.eval.label_fractions if fractions is None else fractions)
    check_choices(fractions, modes, inits)
    dev = resolve_device(device)
    encoder, spec = load_encoder(run_dir, dev)
    modality = modality_for_spec(spec)
    modality.check_finetune_settings(dataset or config.data.dataset, settings)  # before any data
    name, train, test = labelled_splits(config, modality, run_dir, dataset, data_dir)
    inputs = modality.finetune_inputs(settings)
    study = _Study(encoder, spec, train, test, max(train.num_classes, test.num_classes), settings, dev,
                   config.eval.batch_size, log, inputs)
    out = Path(out) if out is not None else run.finetune_file
    merged = read_finetune_results(out)  # a damaged file fails now, not after the first hour
    for mode, init, fraction in itertools.product(modes, inits, fractions):
        entry = study.entry(mode, init, fraction)
        merged = merge_finetune_results(out, {name: {mode: {init: {fraction_key(fraction): entry}}}})
    return merged


@dataclass
class _Study:
    """What every run of a label-efficiency study shares."""

    encoder: nn.Module
    spec: dict[str, Any]
    train: Any
    test: Any
    num_classes: int
    settings: FinetuneConfig
    device: torch.device
    eval_batch_size: int
    log: Callable[[str], None]
    inputs: FinetuneInputs

    def entry(self, mode: str, init: str, fraction: float) -> dict[str, Any]:
        """Fine-tune once per seed at one (mode, init, fraction); the finetune.json entry."""
        runs = []
        for seed, indices in enumerate(label_subsets(self.train.labels, fraction, self.settings.seeds)):
            seed_everything(seed)
            backbone = initial_backbone(self.encoder, self.spec, init, seed)
            used = effective_settings(self.settings, init, backbone)
            scales = backbone_lr_scales(backbone, used["backbone_lr_scale"], used["layer_decay"])
            model = Classifier(backbone, self.num_classes, freeze_backbone=mode == "frozen")
            outcome = finetune_model(model, self.train.subset(indices), self.test, self.settings,
                                     seed, self.device, scales, self.inputs, self.eval_batch_size)
            self.log(f"fine-tune {mode}, {init}, {100 * fraction:g}% labels "
                     f"({len(indices)} {self.inputs.noun}), "
                     f"seed {seed}: test top-1 {100 * outcome.test_accuracy:.1f}% after "
                     f"{outcome.epochs} epochs ({outcome.steps} steps, {outcome.seconds:.1f} s)")
            runs.append((len(indices), outcome))
        return results_entry(runs, self.inputs.recorded(used), self.device, len(self.test))


def results_entry(runs: Sequence[tuple[int, FinetuneOutcome]], settings: dict[str, Any],
                  device: torch.device, num_test: int) -> dict[str, Any]:
    """The finetune.json entry of the seeds (run in order 0, 1, …) at one fraction, mode and init."""
    accuracies = [outcome.test_accuracy for _, outcome in runs]
    return {
        "accuracy": accuracies,
        "mean": statistics.fmean(accuracies),
        "std": statistics.pstdev(accuracies),
        "seeds": list(range(len(runs))),
        "train_examples": [count for count, _ in runs],
        "num_test": num_test,
        "epochs": [outcome.epochs for _, outcome in runs],
        "steps": [outcome.steps for _, outcome in runs],
        "seconds": sum(outcome.seconds for _, outcome in runs),
        "device": str(device),
        "settings": settings,
    }


# ----------------------------------------------------------------------------------------------
# finetune.json


