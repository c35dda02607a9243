"""Typed run configuration: dataclasses, YAML files and ``--set a.b=c`` overrides.

The resolved config is written to ``RUN/config.yaml`` and is enough to reproduce the run. Sections
whose keys depend on a choice (the method, the backbone, the view recipe) are plain mappings with a
``name``; the chosen component validates its own keys with its own dataclass (see ``build_options``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, TypeVar, Union

import yaml

from selfsup.errors import ConfigError, DataError, SelfsupError
from selfsup.files import atomic_write_text

T = TypeVar("T")


def check_number(value: Any, key: str, low: float = 0.0, high: float = math.inf, *,
                 above: bool = False, whole: bool = False) -> float:
    """``value`` as a float when it is a finite number in [``low``, ``high``] (``above``: ``low``
    itself excluded; ``whole``: an int); else a ConfigError naming ``key``. The one range check of
    config sections, view recipes and fine-tuning settings."""
    number = isinstance(value, int if whole else (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or not low <= value <= high or (above and value == low):
        if high == math.inf:
            limit = f"{'>' if above else '≥'} {_shown(low)}"
        else:
            limit = f"in {'(' if above else '['}{_shown(low)}, {_shown(high)}]"
        raise ConfigError(f"{key} must be a {'whole ' if whole else ''}number {limit}, got {value!r}")
    return float(value)


def _shown(bound: float) -> str:
    """A range's bound as people write it: 16,777,216 rather than 1.67772e+07."""
    return f"{int(bound):,}" if float(bound).is_integer() and abs(bound) < 1e15 else f"{bound:g}"


def check_ranges(section: object, where: str, bounds: dict[str, tuple[float, float]],
                 above: tuple[str, ...] = ()) -> None:
    """:func:`check_number` on each field of ``section`` named in ``bounds`` ((low, high)), low
    excluded for those in ``above``. Run when a section is built, so a bad value stops a run before
    it writes anything, not after an epoch."""
    for name, (low, high) in bounds.items():
        check_number(getattr(section, name), f"{where}.{name}", low, high, above=name in above)


ANY = (0, math.inf)
COUNT = (1, math.inf)
FRACTION = (0, 1)
# Upper bounds where a larger value is surely a slip (an extra zero, 1e30): the run would never
# end or never fit. Far above any real run: ImageNet for 1,000 epochs is 1.3 M steps.
TRAIN_LIMITS = {
    "epochs": (1, 100_000),
    # at least 2: a batch of one has no other sample to contrast with (SimCLR's loss is exactly
    # 0) and BatchNorm no batch statistics
    "batch_size": (2, 2**24),
    "accumulate_steps": (1, 2**16),
    "steps_per_epoch": (0, 10**9),
    "total_steps": (0, 10**9),
    "budget_minutes": (0, 366 * 24 * 60),  # a year
    # fewer give an unstable effective rank; checked here, where every process of a distributed
    # run sees it, not in the health hook, which runs on rank 0 alone
    "health_samples": (512, math.inf),
}
LR_SCALINGS = ("linear", "sqrt", "none")  # optim.lr_scaling (selfsup.train.optim.scaled_lr)
LR_SCHEDULES = ("cosine", "linear")  # optim.schedule (selfsup.train.optim.lr_factor)


@dataclass
class DataConfig:
    dataset: str = "fashion-mnist"
    data_dir: Optional[str] = None  # else $SELFSUP_DATA, else the dataset's standard location
    device_max_gb: float = 4.0  # uint8 data sets up to this size live on the training device
    num_workers: int = 4  # decoding workers for data sets that stream from files
    max_length: int = 1024  # sequences: tokens per row, specials included; longer ones are cropped
    kmer: int = 1  # DNA: letters per token (overlapping k-mers when > 1)
    vocab_size: int = 8192  # text: tokens of the BPE vocabulary learnt from the training texts
    bucket_batches: int = 50  # sequences: batches per length-sorted chunk (1: no bucketing)
    # keyword options of a registered data set, e.g. {reads_per_gene: 2} for 16s-reads
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or not self.dataset.strip():
            raise ConfigError("data.dataset is empty: name a data set (selfsup list) or a file")
        check_ranges(self, "data", {"device_max_gb": ANY, "num_workers": ANY, "max_length": COUNT,
                                    "kmer": COUNT, "vocab_size": COUNT, "bucket_batches": COUNT})


@dataclass
class OptimConfig:
    name: str = "lars"  # sgd | lars | lamb | adamw
    lr: float = 0.3  # base learning rate for a batch of 256, scaled to the global batch by lr_scaling
    lr_scaling: str = "linear"  # linear: × batch/256 | sqrt: × √(batch/256) (Adam) | none
    weight_decay: float = 1e-6
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = 10.0
    min_lr_ratio: float = 0.0  # the decay ends at lr * min_lr_ratio
    schedule: str = "cosine"  # the decay after warm-up: cosine | linear (both end at the last step)
    clip_grad: float = 0.0  # max global grad norm; 0 disables clipping
    lars_eta: float = 0.02  # LARS trust coefficient

    def __post_init__(self) -> None:
        check_ranges(self, "optim", {"lr": ANY, "weight_decay": ANY, "momentum": FRACTION,
                                     "warmup_epochs": ANY, "min_lr_ratio": FRACTION,
                                     "clip_grad": ANY, "lars_eta": ANY}, above=("lr", "lars_eta"))
        if self.schedule not in LR_SCHEDULES:
            raise ConfigError(f"optim.schedule must be one of {', '.join(LR_SCHEDULES)}, got "
                              f"{self.schedule!r}")
        if self.lr_scaling not in LR_SCALINGS:
            raise ConfigError(f"optim.lr_scaling must be one of {', '.join(LR_SCALINGS)}, got "
                              f"{self.lr_scaling!r}")
        betas = self.betas
        pair = isinstance(betas, (list, tuple)) and len(betas) == 2
        # a beta of 1 would freeze Adam's running average
        if not pair or any(check_number(beta, "optim.betas", 0, 1) == 1 for beta in betas):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {betas!r}")


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 512  # global: images per optimiser step over all processes and accumulation
    accumulate_steps: int = 1  # micro-batches per optimiser step (gradient accumulation)
    sync_bn: Optional[bool] = None  # SyncBatchNorm under torchrun; None: on for losses that couple samples
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun: auto, cuda or cpu)
    precision: str = "auto"  # auto (bf16 on CUDA, fp16 on GPUs without bf16, fp32 on CPU) | bf16 | fp16 | fp32
    compile: bool = False  # torch.compile the training step (CUDA only)
    channels_last: bool = True  # NHWC activations: faster convolutions on GPUs and CPUs
    log_every: int = 20  # steps between loss/throughput records
    health_every: int = 1  # epochs between health checks
    probe_every: int = 5  # epochs between online k-NN probes (labelled data only)
    health_samples: int = 1024  # fixed held-out batch for health (>= 512)
    probe_train_samples: int = 10000  # labelled bank of the online k-NN probe
    probe_test_samples: int = 10000  # its held-out queries (more queries, less noise: ±0.35 pt at 10k)
    steps_per_epoch: int = 0  # 0: one pass over the data; >0: cap (for quick runs)
    # > 0: train for this many minutes of wall time (health checks, checkpoints and evaluation
    # not counted): the trainer times its first steps and writes the step count to total_steps
    budget_minutes: float = 0.0
    # > 0: train exactly this many optimiser steps, the last epoch cut short (overrides epochs);
    # 0: epochs × steps per epoch. A budget run records its measured count here.
    total_steps: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        check_ranges(self, "train", {name: COUNT for name in (
            "log_every", "health_every", "probe_every", "probe_train_samples",
            "probe_test_samples")} | {"seed": ANY} | TRAIN_LIMITS)
        if self.sync_bn not in (None, True, False):
            raise ConfigError(f"train.sync_bn must be true, false or null (automatic), got "
                              f"{self.sync_bn!r}")


@dataclass
class EvalConfig:
    # a whole number, or "auto" (the default; None reads as auto): chosen per feature set from the
    # training labels (selfsup.evaluate.knn.choose_knn_k)
    knn_k: Union[int, str, None] = None
    knn_temperature: float = 0.1
    label_fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    seeds: int = 3  # repeats for label fractions below 1
    baselines: bool = True
    tsne_samples: int = 2000
    batch_size: int = 1024

    def __post_init__(self) -> None:
        if self.knn_k in (None, "auto"):
            self.knn_k = "auto"
        elif isinstance(self.knn_k, str):
            raise ConfigError(f"eval.knn_k must be a whole number ≥ 1 or auto, got {self.knn_k!r}")
        else:
            check_number(self.knn_k, "eval.knn_k", 1, whole=True)
        check_ranges(self, "eval", {"knn_temperature": ANY, "seeds": COUNT,
                                    "tsne_samples": ANY, "batch_size": COUNT},
                     above=("knn_temperature",))
        fractions = self.label_fractions
        if not (isinstance(fractions, (list, tuple)) and fractions):
            raise ConfigError(f"eval.label_fractions must be a list of fractions in (0, 1], e.g. "
                              f"[0.01, 0.1, 1.0]; got {fractions!r}")
        for fraction in fractions:
            check_number(fraction, "eval.label_fractions", 0, 1, above=True)


@dataclass
class FinetuneConfig:
    """The fine-tuning protocol (``selfsup finetune``; the ``finetune`` section of a run's config
    is its default); every field is recorded with the results."""

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

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ConfigError naming the first field with an impossible value."""
        for name, low in (("epochs", 1), ("batch_size", 1), ("seeds", 1), ("min_steps", 0)):
            check_number(getattr(self, name), f"finetune.{name}", low, whole=True)
        check_ranges(self, "finetune", {"lr": ANY, "weight_decay": ANY, "warmup_fraction": FRACTION,
                                        "label_smoothing": FRACTION, "flip_prob": FRACTION,
                                        "backbone_lr_scale": FRACTION})
        if self.layer_decay is not None:  # None: the backbone's default
            check_number(self.layer_decay, "finetune.layer_decay", 0, 1)
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
        ours, defaults = self.to_dict(), FinetuneConfig().to_dict()
        return [name for name in names if ours[name] != defaults[name]]


@dataclass
class Config:
    method: dict[str, Any] = field(default_factory=lambda: {"name": "simclr"})
    backbone: dict[str, Any] = field(default_factory=lambda: {"name": "resnet18"})
    views: dict[str, Any] = field(default_factory=dict)  # {"recipe": name, ...}; default: the method's
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    out: str = "runs/run"

    def __post_init__(self) -> None:
        if not isinstance(self.out, str) or not self.out.strip():
            raise ConfigError(f"out (--out) must name the run directory, got {self.out!r}; an "
                              "empty one would train into the current folder")

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def save(self, path: str | Path) -> None:
        """Written atomically: a kill leaves the old file or the new one, never half."""
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def _plain(value: Any) -> Any:
    """Tuples → lists so YAML stays plain."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys with a named error."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(
                f"unknown config key {where + '.' if where else ''}{key}; "
                f"known: {', '.join(sorted(fields))}"
            )
        default = _default_of(fields[key])
        if dataclasses.is_dataclass(default):
            value = from_dict(type(default), value, f"{where + '.' if where else ''}{key}")
        elif isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        kwargs[key] = _coerce(value, default, f"{where + '.' if where else ''}{key}")
    return cls(**kwargs)  # type: ignore[call-arg]


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _coerce(value: Any, default: Any, key: str) -> Any:
    """Accept ints where floats are expected; reject values of the wrong kind by name."""
    if default is None or value is None or isinstance(default, dict):
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-6" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(default, (int, float)):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {value!r}")
    if isinstance(default, (tuple, list)) and not isinstance(value, (tuple, list)):
        raise ConfigError(f"{key} must be a list, e.g. {list(default)}, got {value!r}")
    return value


def build_options(cls: type[T], section: dict[str, Any], where: str) -> T:
    """Validate a named section (``method``, ``backbone``, ``views``) against a component's options."""
    options = {k: v for k, v in section.items() if k not in ("name", "recipe")}
    return from_dict(cls, options, where)


def read_yaml_file(path: Path, fix: str,
                   error: type[SelfsupError] = DataError) -> tuple[str, Any]:
    """(text, parsed YAML) of the file at ``path``: the one reader of config files (a run's
    config.yaml, a user's --config). ``error`` naming the file and ``fix`` when it cannot be
    read, is not UTF-8 or is not YAML."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as problem:
        raise error(f"{path} is not UTF-8 text (byte {problem.start}); {fix}") from None
    except OSError as problem:
        raise error(f"cannot read {path}: {problem.strerror or problem}") from None
    try:
        return text, yaml.safe_load(text)
    except yaml.YAMLError as problem:
        raise error(f"{path} is not valid YAML ({problem}); {fix}") from None


def read_saved_config(path: str | Path) -> Config:
    """The config a run saved (``Config.save``), read as written: no method defaults or data
    recipe under it, since it holds them already. DataError naming the file when it is not a
    saved config: unreadable, not UTF-8, not YAML, empty, or without a method."""
    path = Path(path)
    _, data = read_yaml_file(path, "restore it from a copy, or train the run again")
    if not isinstance(data, dict) or not isinstance(data.get("method"), dict) \
            or "name" not in data["method"]:
        what = "empty" if not data else "not a saved run config (no method.name)"
        raise DataError(f"{path} is {what}: the run's settings are lost, so its encoder cannot "
                        "be rebuilt or evaluated; restore the file from a copy, or train the run "
                        "again")
    try:
        return from_dict(Config, data)
    except ConfigError as error:
        raise DataError(f"{path}: {error}") from None


def merge_into(into: dict[str, Any], new: dict[str, Any]) -> None:
    """Merge mapping ``new`` into ``into`` in place, section by section (``new`` wins)."""
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge_into(into[key], value)
        else:
            into[key] = value


def set_key(data: dict[str, Any], item: str) -> None:
    """Apply one ``a.b.c=value`` override; the value is parsed as YAML (``true``, ``0.1``, ``[1, 2]``)."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        if part not in node or not isinstance(node[part], dict):
            if part in node:
                raise ConfigError(f"--set {key}: {part} is not a section")
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value
