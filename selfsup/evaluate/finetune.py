"""Fine-tuning: the transfer path of a run's encoder, and its label-efficiency study against scratch.

Image encoders and token encoders (proteins, DNA, text) share one protocol; what differs is how data
reaches the model, an *inputs* object: :class:`ImageInputs` here (device-side crop + flip),
:class:`~selfsup.evaluate.sequence_finetune.SequenceInputs` for sequences (length-bucketed batches,
long sequences cropped to random windows of the run's pretraining ``max_length``).

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
import dataclasses
import itertools
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.backbones import build_backbone
from selfsup.config import check_number, from_dict, set_key
from selfsup.data.base import ImageSource
from selfsup.data.loader import BatchStream
from selfsup.data.sequences import SequenceSource
from selfsup.errors import ConfigError, DataError
from selfsup.evaluate.protocol import stratified_subset, fraction_key
from selfsup.evaluate.run import extract_features, labelled_splits, load_run_config
from selfsup.evaluate.sequence_finetune import check_sequence_settings, sequence_inputs
from selfsup.files import atomic_write
from selfsup.train.checkpoint import load_encoder
from selfsup.train.device import autocast, resolve_device, resolve_precision, seed_everything
from selfsup.train.optim import decays, lr_factor
from selfsup.views import make_views
from selfsup.views.image import to_input

MODES = ("full", "frozen")
INITS = ("pretrained", "scratch")
RESULTS_FILE = "finetune.json"

# ViT parameters that belong to the input embedding (layer 0 of layer-wise LR decay); which get no
# weight decay is ``selfsup.train.optim.decays``'s rule, shared with pretraining.
VIT_EMBEDDING_NAMES = ("patch_embed", "cls_token", "pos_embed")

DEEP_VIT_DEPTH = 12  # ViTs with at least this many blocks get MAE's ViT-B layer decay
DEEP_VIT_LAYER_DECAY = 0.65
SHALLOW_VIT_LAYER_DECAY = 0.75


@dataclass
class FinetuneSettings:
    """The fine-tuning protocol; every field is recorded with the results."""

    epochs: int = 10  # at least; small subsets run more epochs to reach min_steps
    min_steps: int = 300  # optimiser steps every run takes at least
    batch_size: int = 256  # capped at the size of the labelled subset
    lr: float = 1e-2  # the head's AdamW learning rate (absolute, not scaled by the batch size)
    weight_decay: float = 0.05  # on weight matrices only, not biases, norms or ViT tokens
    backbone_lr_scale: float = 0.1  # backbone LR / head LR (a ViT's top block; lower blocks decay)
    layer_decay: Optional[float] = None  # ViTs; None: 0.65 from 12 blocks up, else 0.75
    warmup_fraction: float = 0.1  # share of the steps with a linear warm-up
    label_smoothing: float = 0.1
    augment: bool = True  # random resized crop + horizontal flip (the crop-flip recipe)
    crop_scale: tuple[float, float] = (0.8, 1.0)  # milder than pretraining's: keep the label visible
    flip_prob: float = 0.5  # set 0 for data that is not mirror-symmetric (digits, text)
    seeds: int = 3
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32

    def check(self) -> None:
        """Raise ConfigError naming the first field with an impossible value."""
        for name, low in (("epochs", 1), ("batch_size", 1), ("seeds", 1), ("min_steps", 0)):
            check_number(getattr(self, name), f"finetune {name}", low, whole=True)
        ranges = {"lr": (0, math.inf), "weight_decay": (0, math.inf), "warmup_fraction": (0, 1),
                  "label_smoothing": (0, 1), "flip_prob": (0, 1),
                  "backbone_lr_scale": (0, 1), "layer_decay": (0, 1)}
        for name, (low, high) in ranges.items():
            value = getattr(self, name)
            if value is None and name == "layer_decay":
                continue  # the backbone's default
            check_number(value, f"finetune {name}", low, high)
        if self.lr == 0 or self.backbone_lr_scale == 0 or self.layer_decay == 0:
            raise ConfigError("finetune lr, backbone_lr_scale and layer_decay must be above 0; "
                              "for a backbone that does not train use --mode frozen")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"finetune precision must be auto, bf16 or fp32, got {self.precision!r}")
        scale = self.crop_scale
        if not (isinstance(scale, (list, tuple)) and len(scale) == 2
                and all(isinstance(v, (int, float)) for v in scale) and 0 < scale[0] <= scale[1] <= 1):
            raise ConfigError(f"finetune crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def changed_from_default(self, names: Sequence[str]) -> list[str]:
        """Those of the fields ``names`` whose value differs from the default (a list and a tuple
        of the same numbers are equal: ``to_dict`` makes both lists)."""
        ours, defaults = self.to_dict(), FinetuneSettings().to_dict()
        return [name for name in names if ours[name] != defaults[name]]


def settings_from(flags: dict[str, Any], overrides: Sequence[str] = ()) -> FinetuneSettings:
    """Settings from command-line flags (``None`` = not given) and ``key=value`` overrides."""
    data: dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
    for item in overrides:
        set_key(data, item)
    settings = from_dict(FinetuneSettings, data, "finetune")
    settings.check()
    return settings


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


def vit_depth(backbone: nn.Module) -> Optional[int]:
    """The number of Transformer blocks of a ViT-like backbone (a ``patch_embed`` and a ``blocks``
    ModuleList), else None. Token Transformers have blocks but no patch embedding: their layers get
    no decay (layer-wise decay is an image-path setting, see ``sequence_finetune``)."""
    blocks = getattr(backbone, "blocks", None)
    if not hasattr(backbone, "patch_embed") or not isinstance(blocks, nn.ModuleList):
        return None
    return len(blocks)


def default_layer_decay(depth: int) -> float:
    """0.65 for ViTs of 12 blocks or more (MAE's and BEiT's ViT-B value), else 0.75.

    The embedding trains at decay^depth of the top block's rate: 0.65 puts a 12-block ViT's
    embedding at 0.6% of it. A shallow ViT pretrained briefly on small data (what fits this library's
    CPU and small-image use) has less settled low-level features, so its lowest layers should keep
    adapting: 0.75 puts a 4-block ViT's embedding at 32% of its top block (0.65 would give 18%).
    0.75 for shallow ViTs is a choice, not a measurement; ``layer_decay`` overrides it.
    """
    return DEEP_VIT_LAYER_DECAY if depth >= DEEP_VIT_DEPTH else SHALLOW_VIT_LAYER_DECAY


def vit_layer_id(name: str, depth: int) -> int:
    """The BEiT/MAE layer id of a ViT parameter: embeddings 0, block i → i + 1, the rest (the final
    norm) depth + 1, the head's layer."""
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    if name.split(".")[0] in VIT_EMBEDDING_NAMES:
        return 0
    return depth + 1


def resolve_layer_decay(backbone: nn.Module, layer_decay: Optional[float] = None) -> Optional[float]:
    """The layer decay used on ``backbone``: None for backbones without layers, else ``layer_decay``
    or :func:`default_layer_decay`."""
    depth = vit_depth(backbone)
    if depth is None:
        return None
    return default_layer_decay(depth) if layer_decay is None else layer_decay


def backbone_lr_scales(backbone: nn.Module, backbone_lr_scale: float = 0.1,
                       layer_decay: Optional[float] = None) -> dict[str, float]:
    """Each backbone parameter's learning rate as a multiple of the head's (the base LR).

    Backbones without layers get ``backbone_lr_scale`` throughout. A ViT's parameter in layer ``l``
    (:func:`vit_layer_id`: embeddings 0, blocks 1 … depth, the head depth + 1) gets
    ``backbone_lr_scale × layer_decay^(depth + 1 − l)``; ``backbone_lr_scale=1`` is exactly the
    BEiT/MAE rule, where the head and the final norm share one rate. ``layer_decay`` defaults to
    :func:`default_layer_decay`.
    """
    decay = resolve_layer_decay(backbone, layer_decay)
    depth = vit_depth(backbone)
    return {name: backbone_lr_scale if depth is None
            else backbone_lr_scale * decay ** (depth + 1 - vit_layer_id(name, depth))
            for name, _ in backbone.named_parameters()}


def build_optimizer(model: Classifier, lr: float, weight_decay: float,
                    backbone_scales: dict[str, float]) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, one group per (LR scale, decayed or not).

    Every group carries ``lr_scale``, its learning rate as a multiple of ``lr``; the head's is 1.
    A frozen backbone contributes no parameters.
    """
    groups: dict[tuple[float, bool], list[torch.Tensor]] = {}
    named = [(f"backbone.{n}", p, backbone_scales[n]) for n, p in model.backbone.named_parameters()]
    named += [(f"head.{n}", p, 1.0) for n, p in model.head.named_parameters()]
    for name, param, scale in named:
        if param.requires_grad:
            groups.setdefault((scale, decays(name, param)), []).append(param)
    param_groups = [{"params": params, "lr": lr * scale, "lr_scale": scale,
                     "weight_decay": weight_decay if decayed else 0.0}
                    for (scale, decayed), params in groups.items()]
    cuda = any(p.is_cuda for p in model.parameters())
    return torch.optim.AdamW(param_groups, lr=lr, fused=cuda or None)


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


def schedule(num_examples: int, settings: FinetuneSettings) -> tuple[int, int, int]:
    """(batch size, steps per epoch, epochs): at least ``settings.epochs`` epochs and
    ``settings.min_steps`` steps, the batch capped at the number of examples."""
    batch_size = min(settings.batch_size, num_examples)
    steps_per_epoch = num_examples // batch_size
    epochs = max(settings.epochs, math.ceil(settings.min_steps / steps_per_epoch))
    return batch_size, steps_per_epoch, epochs


Batch = tuple[tuple[torch.Tensor, ...], torch.Tensor]  # (the model's inputs, labels)


class Inputs(Protocol):
    """How one kind of data reaches the classifier; everything else in fine-tuning is shared."""

    noun: str  # what one example is called in messages: "images", "sequences"

    def prepare(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` on ``device``, in the memory layout its inputs come in."""

    def training_epochs(self, train: Any, batch_size: int, seed: int,
                        device: torch.device) -> Callable[[int], Iterator[Batch]]:
        """epoch → the full, shuffled, augmented batches of ``train``, fixed by (seed, epoch)."""

    def logits(self, model: nn.Module, test: Any, device: torch.device, batch_size: int,
               precision: str) -> torch.Tensor:
        """float32 (N, classes) of ``model`` in eval mode on every test example, in order."""

    def recorded(self, settings: dict[str, Any]) -> dict[str, Any]:
        """The settings as this kind of data uses them, for the results file."""


@dataclass
class ImageInputs:
    """Images for fine-tuning: NHWC, with the ``crop-flip`` recipe on the device when ``augment``."""

    augment: bool
    crop_scale: tuple[float, float]
    flip_prob: float
    noun: str = "images"

    @classmethod
    def from_settings(cls, settings: FinetuneSettings) -> "ImageInputs":
        return cls(settings.augment, tuple(settings.crop_scale), settings.flip_prob)

    def prepare(self, model: nn.Module, device: torch.device) -> nn.Module:
        return model.to(device=device, memory_format=torch.channels_last)

    def training_epochs(self, train: ImageSource, batch_size: int, seed: int,
                        device: torch.device) -> Callable[[int], Iterator[Batch]]:
        views = make_views("crop-flip", train.shape, {"crop_scale": list(self.crop_scale),
                                                      "flip_prob": self.flip_prob})
        stream = BatchStream(train, batch_size, device, seed, shuffle=True, drop_last=True)
        view_generator = torch.Generator(device=device).manual_seed(seed)

        def epoch(index: int) -> Iterator[Batch]:
            for images, labels in stream.epoch(index):
                x = views(images, view_generator)[0] if self.augment else to_input(images)
                yield (x.contiguous(memory_format=torch.channels_last),), labels

        return epoch

    def logits(self, model: nn.Module, test: ImageSource, device: torch.device, batch_size: int,
               precision: str) -> torch.Tensor:
        return extract_features(model, test, device, batch_size, precision)

    def recorded(self, settings: dict[str, Any]) -> dict[str, Any]:
        return settings


def finetune_model(model: Classifier, train: ImageSource | SequenceSource,
                   test: ImageSource | SequenceSource, settings: FinetuneSettings, seed: int,
                   device: torch.device, backbone_scales: dict[str, float],
                   eval_batch_size: int = 1024, inputs: Optional[Inputs] = None) -> FinetuneOutcome:
    """Train ``model`` on the labelled ``train`` examples in place; return its accuracy on ``test``.

    ``backbone_scales`` (from :func:`backbone_lr_scales`) sets each backbone parameter's learning
    rate relative to the head's ``settings.lr``. ``inputs`` turns the data into the model's inputs
    (default: images, :class:`ImageInputs` of ``settings``). Data order and augmentations follow
    ``seed``.
    """
    inputs = inputs or ImageInputs.from_settings(settings)
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
    model = inputs.prepare(model, device)
    optimizer = build_optimizer(model, settings.lr, settings.weight_decay, backbone_scales)
    training_epoch = inputs.training_epochs(train, batch_size, seed, device)
    started = time.perf_counter()
    history, step = [], 0
    model.train()
    for epoch in range(epochs):
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        for x, labels in training_epoch(epoch):
            factor = lr_factor(step, total_steps, warmup_steps, 0.0)
            for group in optimizer.param_groups:
                group["lr"] = settings.lr * group["lr_scale"] * factor
            with autocast(device, precision):
                logits = model(*x)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=settings.label_smoothing)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss_sum += loss.detach()
            correct += (logits.argmax(1) == labels).sum()
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
        device = next(pretrained.parameters()).device
        torch.manual_seed(seed)
        return build_backbone(spec["backbone"], spec["in_channels"], spec["image_size"]).to(device)
    raise ConfigError(f"unknown initialisation {init!r}; choose one of {', '.join(INITS)}")


def _subset(source: ImageSource | SequenceSource,
            indices: torch.Tensor) -> ImageSource | SequenceSource:
    if hasattr(source, "subset"):
        return source.subset(indices)
    if hasattr(source, "paths"):  # FileImages: keep decoding lazily
        return dataclasses.replace(source, paths=[source.paths[int(i)] for i in indices],
                                   labels=source.labels[indices])
    raise DataError(f"{source.name}: cannot take a subset of a {type(source).__name__}")


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


def effective_settings(settings: FinetuneSettings, init: str, backbone: nn.Module) -> dict[str, Any]:
    """The settings as used on ``backbone``: the layer decay resolved; a scratch backbone (nothing
    pretrained to protect) at the full base rate, without layer decay."""
    used = settings.to_dict()
    if init == "scratch":
        used["backbone_lr_scale"], used["layer_decay"] = 1.0, 1.0
    used["layer_decay"] = resolve_layer_decay(backbone, used["layer_decay"])
    return used


def finetune_run(run_dir: str | Path, fractions: Optional[Sequence[float]] = None,
                 modes: Sequence[str] = ("full",), inits: Sequence[str] = ("pretrained",),
                 settings: Optional[FinetuneSettings] = None, dataset: Optional[str] = None,
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
    config = load_run_config(run_dir)
    settings = settings or FinetuneSettings()
    settings.check()
    fractions = list(config.eval.label_fractions if fractions is None else fractions)
    check_choices(fractions, modes, inits)
    dev = resolve_device(device)
    encoder, spec = load_encoder(run_dir, dev)
    token_encoder = bool(spec.get("tokenizer"))  # and so sequence data: labelled_splits checks it
    if token_encoder:  # before any data loads
        check_sequence_settings(dataset or config.data.dataset, settings)
    name, train, test = labelled_splits(config, spec, run_dir, dataset, data_dir)
    inputs = sequence_inputs(spec, settings) if token_encoder else ImageInputs.from_settings(settings)
    study = _Study(encoder, spec, train, test, max(train.num_classes, test.num_classes), settings, dev,
                   config.eval.batch_size, log, inputs)
    out = Path(out) if out is not None else run_dir / RESULTS_FILE
    merged = read_results(out)  # a damaged file fails now, not after the first hour
    for mode, init, fraction in itertools.product(modes, inits, fractions):
        entry = study.entry(mode, init, fraction)
        merged = merge_results(out, {name: {mode: {init: {fraction_key(fraction): entry}}}})
    return merged


@dataclass
class _Study:
    """What every run of a label-efficiency study shares."""

    encoder: nn.Module
    spec: dict[str, Any]
    train: ImageSource | SequenceSource
    test: ImageSource | SequenceSource
    num_classes: int
    settings: FinetuneSettings
    device: torch.device
    eval_batch_size: int
    log: Callable[[str], None]
    inputs: Inputs

    def entry(self, mode: str, init: str, fraction: float) -> dict[str, Any]:
        """Fine-tune once per seed at one (mode, init, fraction); the finetune.json entry."""
        runs = []
        for seed, indices in enumerate(label_subsets(self.train.labels, fraction, self.settings.seeds)):
            seed_everything(seed)
            backbone = initial_backbone(self.encoder, self.spec, init, seed)
            used = effective_settings(self.settings, init, backbone)
            scales = backbone_lr_scales(backbone, used["backbone_lr_scale"], used["layer_decay"])
            model = Classifier(backbone, self.num_classes, freeze_backbone=mode == "frozen")
            outcome = finetune_model(model, _subset(self.train, indices), self.test, self.settings,
                                     seed, self.device, scales, self.eval_batch_size, self.inputs)
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


def read_results(path: str | Path) -> dict[str, Any]:
    """The contents of a finetune.json (``{"datasets": {}}`` when there is none yet)."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a folder; name the results file (e.g. {path / RESULTS_FILE})")
    if not path.is_file():
        return {"datasets": {}}
    try:
        data = json.loads(path.read_text())
    except ValueError as error:
        raise DataError(f"{path} is not valid JSON ({error}); move it away or pass --out another "
                        "file") from None
    if not isinstance(data, dict) or not isinstance(data.get("datasets"), dict):
        raise DataError(f"{path} is not a fine-tuning results file (no \"datasets\" mapping); move it "
                        "away or pass --out another file")
    return data


def merge_results(path: str | Path, new: dict[str, Any]) -> dict[str, Any]:
    """Merge ``new`` (``{dataset: {mode: {init: {fraction: entry}}}}``) into the file at ``path``.

    An entry replaces the entry of the same dataset, mode, init and fraction; every other entry is
    kept. The file is written atomically; returns the merged contents.
    """
    merged = read_results(path)
    for dataset, modes in new.items():
        for mode, inits in modes.items():
            for init, entries in inits.items():
                target = merged["datasets"].setdefault(dataset, {}).setdefault(mode, {})
                target.setdefault(init, {}).update(copy.deepcopy(entries))
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(merged, indent=2)))
    return merged
