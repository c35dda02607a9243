"""Evaluate a run directory: frozen features of the trained encoder vs raw pixels and random init.

Writes ``RUN/eval.json`` (accuracies are fractions in [0, 1]) and ``RUN/tsne.npz`` when the
evaluation runs on the pretraining data set; on another data set (``--dataset``) it writes
``RUN/eval-<name>.json`` and ``RUN/tsne-<name>.npz`` instead, so the in-domain results stay as
they were and every data set keeps its own. Each eval file names the pretraining data set
(``pretraining_dataset``) and the one evaluated on (``dataset``), and reports what
``selfsup.evaluate.data_checks`` found in the labelled data (``data_checks``). For runs that
logged a held-out perplexity (MLM, next-token), eval.json also holds the last one as
``held_out_perplexity``: it is measured on the pretraining data's held-out sequences, whichever
data set the probes run on.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.backbones import build_backbone
from selfsup.config import Config, EvalConfig, load_config
from selfsup.data import load_split
from selfsup.data.base import ImageSource
from selfsup.data.loader import iterate_in_order
from selfsup.data.sequences import SequenceSource
from selfsup.errors import ConfigError, DataError
from selfsup.evaluate.data_checks import check_labelled_data
from selfsup.evaluate.protocol import evaluate_feature_sets
from selfsup.evaluate.sequence_baselines import (
    encoder_features, sequence_feature_sets, token_encoder_inputs,
)
from selfsup.evaluate.tsne import tsne_embedding
from selfsup.health.metrics import health_metrics
from selfsup.files import atomic_write, save_npy
from selfsup.train.checkpoint import load_encoder
from selfsup.train.device import autocast, resolve_device, resolve_precision
from selfsup.train.metrics_log import last_held_out_perplexity, read_metrics
from selfsup.views.image import to_input

RAW_MAX_DIM = 4096  # raw-pixel baselines of larger images are average-pooled down to this
# where labels come from, for the message of an unlabelled data set: the built-in labelled data
# sets of each sequence alphabet, and the image formats
LABELLED_SEQUENCE_DATASETS = {"protein": "swissprot-loc", "dna": "16s-reads or 16s-gold",
                              "text": "20newsgroups"}
IMAGE_LABELS_HINT = "class sub-folders for a folder of images, `labels` in an .npz"

Source = ImageSource | SequenceSource


def load_run_config(run_dir: str | Path) -> Config:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise DataError(f"{run_dir} is not a selfsup run dir (no config.yaml); "
                        "pass the --out directory of `selfsup pretrain`")
    return load_config(path)


def evaluation_files(config: Config, dataset: str) -> tuple[str, str]:
    """(eval file, t-SNE file) names of an evaluation of a run on ``dataset``: ``eval.json`` and
    ``tsne.npz`` on the run's own pretraining data set, else ``eval-<name>.json`` and
    ``tsne-<name>.npz`` (a path's file name, other characters than letters, digits, ``.``, ``_``
    and ``-`` as ``-``)."""
    if dataset == config.data.dataset:
        return "eval.json", "tsne.npz"
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(dataset).name).strip("-.") or "data"
    return f"eval-{name}.json", f"tsne-{name}.npz"


def run_split(config: Config, split: str, dataset: Optional[str] = None,
              data_dir: Optional[str] = None,
              options: Optional[dict[str, Any]] = None) -> tuple[str, Source]:
    """(name, the ``split``) of data set ``dataset`` from ``data_dir``, by default the run's.

    ``options`` default to the run's ``data.options`` on the run's own data set and to none on
    another: they were written for that data set (reads per gene of 16s-reads, the alphabet of a
    FASTA file).
    """
    name = dataset or config.data.dataset
    if options is None:
        options = config.data.options if name == config.data.dataset else {}
    return name, load_split(name, split, data_dir or config.data.data_dir, options)


def check_encoder_fits(spec: dict[str, Any], source: Source, dataset: str, run_dir: str | Path,
                       labelled: bool = True) -> None:
    """Raise DataError unless the run's encoder (``spec``, its ``encoder.json``) reads ``source``,
    the data of ``dataset``: an image encoder of the images' channels, or a token encoder of the
    sequences' alphabet; with ``labelled``, ``source`` must have labels too."""
    tokens = spec.get("tokenizer")
    if isinstance(source, SequenceSource):
        alphabet = source.alphabet
        if not tokens:
            raise DataError(f"data set {dataset!r} holds {alphabet} sequences but {run_dir} holds an "
                            "image encoder; pass --dataset with an image data set, or use a run "
                            f"pretrained on {alphabet} sequences")
        reads = tokens.get("name")
        if reads != alphabet:
            raise DataError(f"data set {dataset!r} holds {alphabet} sequences but the encoder of "
                            f"{run_dir} reads {reads} tokens; pass --dataset with a {reads} data "
                            f"set ({LABELLED_SEQUENCE_DATASETS.get(reads, '?')})")
        hint = (f"pass --dataset with a labelled {alphabet} data set "
                f"({LABELLED_SEQUENCE_DATASETS.get(alphabet, '?')})")
    else:
        if tokens:
            raise DataError(f"data set {dataset!r} holds images but {run_dir} holds a token encoder "
                            f"({tokens.get('name')} sequences); pass --dataset with a "
                            f"{tokens.get('name')} data set, or use a run pretrained on images")
        if source.shape[0] != spec["in_channels"]:
            raise DataError(f"data set {dataset!r} has {source.shape[0]}-channel images but the "
                            f"encoder of {run_dir} takes {spec['in_channels']} channels; use data "
                            "like the pretraining data")
        hint = IMAGE_LABELS_HINT
    if labelled and source.labels is None:
        raise DataError(f"data set {dataset!r} has no labels; evaluation and fine-tuning need "
                        f"labelled train and test splits: {hint}")


def labelled_splits(config: Config, spec: dict[str, Any], run_dir: str | Path,
                    dataset: Optional[str] = None, data_dir: Optional[str] = None,
                    options: Optional[dict[str, Any]] = None) -> tuple[str, Source, Source]:
    """(name, train, test) of a data set the run's encoder reads (:func:`run_split`'s defaults),
    both splits labelled; checked before the test split is loaded."""
    name, train = run_split(config, "train", dataset, data_dir, options)
    check_encoder_fits(spec, train, name, run_dir)
    _, test = run_split(config, "test", dataset, data_dir, options)
    if test.labels is None:
        raise DataError(f"data set {name!r} has a labelled train split but an unlabelled test "
                        "split; evaluation and fine-tuning report test accuracy, so both need labels")
    return name, train, test


@torch.no_grad()
def extract_features(fn: Callable[[torch.Tensor], torch.Tensor], source: ImageSource,
                     device: torch.device, batch_size: int = 1024, precision: str = "fp32",
                     num_workers: int = 0) -> torch.Tensor:
    """Apply ``fn`` to every image of ``source`` in order; float32 (N, D) features on ``device``."""
    parts = []
    for images, _ in iterate_in_order(source, batch_size, device):
        x = to_input(images).contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            parts.append(fn(x).float())
    return torch.cat(parts)


def random_image_encoder(spec: dict[str, Any], seed: int, device: torch.device) -> nn.Module:
    """The random-init baseline: the backbone of ``spec`` (a run's encoder.json) built afresh
    under ``seed``, the run's training seed."""
    torch.manual_seed(seed)
    return build_backbone(spec["backbone"], spec["in_channels"], spec["image_size"]).to(device)


def raw_pixels(x: torch.Tensor) -> torch.Tensor:
    """The raw-pixel baseline's features: normalised pixels, pooled to ≤ RAW_MAX_DIM values."""
    c, h, w = x.shape[1:]
    while c * h * w > RAW_MAX_DIM:
        x = F.avg_pool2d(x, 2)
        c, h, w = x.shape[1:]
    return x.flatten(1)


def encoder_fn(encoder: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The encoder in eval mode (BatchNorm running statistics), NHWC for faster convolutions."""
    encoder.eval()
    return encoder.to(memory_format=torch.channels_last)


def evaluate_run(run_dir: str | Path, dataset: Optional[str] = None, data_dir: Optional[str] = None,
                 device: str = "auto", eval_config: Optional[EvalConfig] = None,
                 baselines: Optional[bool] = None, log: Callable[[str], None] = print,
                 data_options: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Run the k-NN and linear-probe protocols on the run's encoder and the baselines.

    The data set (``dataset``, default the run's) must be one the run's encoder reads, labelled
    (:func:`check_encoder_fits`). ``data_options`` replace its options (e.g. fewer reads per gene
    of 16s-reads; default: :func:`run_split`'s).
    """
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    cfg = eval_config or config.eval
    use_baselines = cfg.baselines if baselines is None else baselines
    dev = resolve_device(device)
    precision = resolve_precision("auto", dev)
    encoder, spec = load_encoder(run_dir, dev)
    name, train, test = labelled_splits(config, spec, run_dir, dataset, data_dir, data_options)
    num_classes = max(train.num_classes, test.num_classes)
    started = time.perf_counter()

    def features(fn) -> tuple[torch.Tensor, torch.Tensor]:
        return (extract_features(fn, train, dev, cfg.batch_size, precision),
                extract_features(fn, test, dev, cfg.batch_size, precision))

    log(f"extracting features of {len(train)} train and {len(test)} test samples on {dev}")
    extras: dict[str, Any] = {}
    if isinstance(train, SequenceSource):  # encoder, composition / k-mer baselines, random init
        sets, extras = sequence_feature_sets(encoder, spec, train, test, dev, cfg.batch_size,
                                             precision, use_baselines, config.train.seed)
    else:
        sets = {"ssl": features(encoder_fn(encoder))}
        if use_baselines:
            sets["raw"] = features(raw_pixels)
            sets["random_init"] = features(encoder_fn(random_image_encoder(spec, config.train.seed,
                                                                            dev)))
    checks, warnings = check_labelled_data(train, test, num_classes, cfg.label_fractions)
    for warning in warnings:
        log(f"WARNING: {name}: {warning}")
    train_labels, test_labels = train.labels.to(dev), test.labels.to(dev)
    groups = group_ids(train)  # validation keeps them apart, as the split does
    log(f"running k-NN and linear probes on: {', '.join(sets)}")
    results = evaluate_feature_sets(sets, train_labels, test_labels, num_classes=num_classes,
                                    fractions=tuple(cfg.label_fractions), seeds=cfg.seeds,
                                    knn_k=cfg.knn_k, knn_temperature=cfg.knn_temperature,
                                    train_groups=groups)
    test_feats = sets["ssl"][1]
    health = health_metrics(test_feats[: min(len(test_feats), 4096)])
    out: dict[str, Any] = {
        **_accuracies(results["ssl"]),
        "health": {k: health[k] for k in ("effective_rank", "embedding_std", "mean_cosine",
                                          "embedding_std_x_sqrt_dim", "dim")},
        "baselines": {k: _accuracies(v) for k, v in results.items() if k != "ssl"},
        "dataset": name, "pretraining_dataset": config.data.dataset,
        "num_train": len(train), "num_test": len(test),
        "feature_dim": int(test_feats.shape[1]), "device": str(dev),
        "eval_seconds": time.perf_counter() - started, **extras,
        **_held_out_perplexity(run_dir),
        "protocol": {"knn_k": cfg.knn_k, "knn_temperature": cfg.knn_temperature,
                     "label_fractions": list(cfg.label_fractions), "seeds": cfg.seeds,
                     "label_subsets": "stratified",
                     "validation_groups": groups is not None},
        "data_checks": checks,
    }
    eval_file, tsne_file = evaluation_files(config, name)
    out["tsne_file"] = tsne_file  # the report finds the t-SNE of each evaluation by this
    atomic_write(run_dir / eval_file, lambda tmp: Path(tmp).write_text(json.dumps(out, indent=2)))
    coords, labels = tsne_embedding(test_feats.cpu(), test_labels.cpu(), n=cfg.tsne_samples,
                                    seed=config.train.seed)
    classes = np.array(test.classes or [str(i) for i in range(num_classes)])

    def save_tsne(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a file object: np.savez would append .npz to a name
            np.savez(handle, coords=coords, labels=labels, class_names=classes)

    atomic_write(run_dir / tsne_file, save_tsne)
    log(f"wrote {run_dir / eval_file}")
    return out


def group_ids(source: Source) -> Optional[torch.Tensor]:
    """One int id per item of ``source`` for its group (a protein family, the reads of one gene,
    identical sequences), which the data set's split keeps on one side; None for data without
    groups (images), or whose every item is its own group."""
    groups = getattr(source, "groups", None)
    if groups is None:
        return None
    ids = {name: index for index, name in enumerate(dict.fromkeys(groups))}
    if len(ids) == len(groups):
        return None
    return torch.tensor([ids[name] for name in groups])


def _held_out_perplexity(run_dir: Path) -> dict[str, float]:
    """``{"held_out_perplexity": p}``, the last one the run logged, or {} when it logged none."""
    last = last_held_out_perplexity(read_metrics(run_dir / "metrics.jsonl"))
    return {} if last is None else {"held_out_perplexity": last[1]}


def _accuracies(result: dict[str, Any]) -> dict[str, Any]:
    keys = ("knn_top1", "knn_k", "linear_top1", "linear_top1_std")
    return {k: result[k] for k in keys if k in result}


@torch.no_grad()
def embed_run(run_dir: str | Path, dataset: Optional[str], split: str, out: str | Path,
              data_dir: Optional[str] = None, device: str = "auto") -> np.ndarray:
    """Encoder features of every image or sequence of a split (of the data set the run's encoder
    reads; :func:`run_split`'s defaults), saved as a float32 .npy of shape (N, D)."""
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; name a .npy file in it")
    if out.suffix != ".npy":  # numpy would append .npy and write another file than the one named
        raise ConfigError(f"--out {out}: name the .npy file to write, e.g. {out.with_suffix('.npy')}")
    config = load_run_config(run_dir)
    dev = resolve_device(device)
    encoder, spec = load_encoder(run_dir, dev)
    name, source = run_split(config, split, dataset, data_dir)
    check_encoder_fits(spec, source, name, run_dir, labelled=False)
    precision = resolve_precision("auto", dev)
    if isinstance(source, SequenceSource):
        tokenizer, max_length = token_encoder_inputs(spec)
        feats = encoder_features(encoder, source, tokenizer, dev, config.eval.batch_size,
                                 max_length, precision).cpu().numpy()
    else:
        feats = extract_features(encoder_fn(encoder), source, dev, config.eval.batch_size,
                                 precision).cpu().numpy()
    save_npy(out, feats)
    return feats
