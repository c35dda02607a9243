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

import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from selfsup.config import Config, EvalConfig
from selfsup.data import load_split
from selfsup.errors import DataError
from selfsup.evaluate.data_checks import check_labelled_data
from selfsup.evaluate.protocol import evaluate_feature_sets
from selfsup.evaluate.tsne import tsne_embedding
from selfsup.health.metrics import health_metrics
from selfsup.modalities import Modality, modality_for_spec
from selfsup.run_dir import RunDir, write_tsne
from selfsup.train.checkpoint import load_encoder
from selfsup.train.device import resolve_device, resolve_precision
from selfsup.train.metrics_log import last_held_out_perplexity


def load_run_config(run_dir: str | Path) -> Config:
    """The config of the run in ``run_dir`` (:meth:`RunDir.load_config`)."""
    return RunDir(run_dir).load_config()


def run_split(config: Config, split: str, dataset: Optional[str] = None,
              data_dir: Optional[str] = None,
              options: Optional[dict[str, Any]] = None) -> tuple[str, Any]:
    """(name, the ``split``) of data set ``dataset`` from ``data_dir``, by default the run's.

    ``options`` default to the run's ``data.options`` on the run's own data set and to none on
    another: they were written for that data set (reads per gene of 16s-reads, the alphabet of a
    FASTA file).
    """
    name = dataset or config.data.dataset
    if options is None:
        options = config.data.options if name == config.data.dataset else {}
    return name, load_split(name, split, data_dir or config.data.data_dir, options)


def check_encoder_fits(modality: Modality, source: Any, dataset: str, run_dir: str | Path,
                       labelled: bool = True) -> None:
    """Raise DataError unless the run's encoder, which reads ``modality``
    (:func:`~selfsup.modalities.modality_for_spec` of its ``encoder.json``), reads ``source``, the
    data of ``dataset`` (an image encoder of the images' channels, a token encoder of the
    sequences' alphabet); with ``labelled``, ``source`` must have labels too."""
    modality.check_reads(source, dataset, run_dir)
    if labelled:
        modality.check_labelled(source, dataset)


def labelled_splits(config: Config, modality: Modality, run_dir: str | Path,
                    dataset: Optional[str] = None, data_dir: Optional[str] = None,
                    options: Optional[dict[str, Any]] = None) -> tuple[str, Any, Any]:
    """(name, train, test) of a data set the run's encoder reads (:func:`run_split`'s defaults),
    both splits labelled; checked before the test split is loaded."""
    name, train = run_split(config, "train", dataset, data_dir, options)
    check_encoder_fits(modality, train, name, run_dir)
    present = torch.unique(train.labels).tolist()
    if len(present) < 2:
        only = (train.classes[present[0]] if train.classes else present[0]) if present else "none"
        raise DataError(f"data set {name!r} has one class ({only}) in its train split: accuracy "
                        "on one class is 100 % whatever the encoder, so it measures nothing; "
                        "evaluate on data with at least two classes")
    _, test = run_split(config, "test", dataset, data_dir, options)
    if test.labels is None:
        raise DataError(f"data set {name!r} has a labelled train split but an unlabelled test "
                        "split; evaluation and fine-tuning report test accuracy, so both need labels")
    return name, train, test


def check_finite(features: torch.Tensor, what: str) -> None:
    """DataError naming ``what`` when ``features`` hold NaN or infinite values: a probe on them
    would report a number that means nothing."""
    if features.layout != torch.strided:  # sparse rows (TF-IDF): their stored values
        bad_count = int((~torch.isfinite(features.values())).sum())
        where = f"{bad_count} stored values"
    else:
        bad_count = int((~torch.isfinite(features).all(dim=1)).sum())
        where = f"{bad_count} of {len(features)} rows"
    if bad_count:
        raise DataError(f"{what} hold NaN or infinite values ({where}): the encoder's weights or "
                        "its inputs are broken; evaluate a run whose training did not diverge")


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
    run = RunDir(run_dir)
    config = run.load_config()
    cfg = eval_config or config.eval
    use_baselines = cfg.baselines if baselines is None else baselines
    dev = resolve_device(device)
    precision = resolve_precision("auto", dev)
    encoder, spec = load_encoder(run_dir, dev)
    modality = modality_for_spec(spec)
    name, train, test = labelled_splits(config, modality, run_dir, dataset, data_dir, data_options)
    num_classes = max(train.num_classes, test.num_classes)
    started = time.perf_counter()

    log(f"extracting features of {len(train)} train and {len(test)} test samples on {dev}")
    # the encoder, and the baselines of its modality (raw pixels, composition / k-mer profiles,
    # TF-IDF) and the random init, with extras such as DNA's reverse-complement consistency
    sets, extras = modality.feature_sets(
        encoder, spec, train, test, dev, cfg.batch_size, precision, use_baselines,
        config.train.seed)
    for set_name, (train_x, test_x) in sets.items():
        check_finite(train_x, f"the {set_name} features of {name}'s train split")
        check_finite(test_x, f"the {set_name} features of {name}'s test split")
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
        **_held_out_perplexity(run),
        "protocol": {"knn_k": cfg.knn_k, "knn_temperature": cfg.knn_temperature,
                     "label_fractions": list(cfg.label_fractions), "seeds": cfg.seeds,
                     "label_subsets": "stratified",
                     "validation_groups": groups is not None},
        "data_checks": checks,
    }
    other = None if name == config.data.dataset else name
    eval_file, tsne_file = run.eval_file(other), run.tsne_file(other)
    out["tsne_file"] = tsne_file.name  # the report finds the t-SNE of each evaluation by this
    run.write_json(eval_file, out)
    coords, labels = tsne_embedding(test_feats.cpu(), test_labels.cpu(), n=cfg.tsne_samples,
                                    seed=config.train.seed)
    classes = np.array(test.classes or [str(i) for i in range(num_classes)])
    write_tsne(tsne_file, coords, labels, classes)
    log(f"wrote {eval_file}")
    return out


def group_ids(source: Any) -> Optional[torch.Tensor]:
    """One int id per item of ``source`` for its group (a protein family, the reads of one gene,
    identical sequences), which the data set's split keeps on one side; None for data without
    groups (images), or whose every item is its own group."""
    groups = source.groups
    if groups is None:
        return None
    ids = {name: index for index, name in enumerate(dict.fromkeys(groups))}
    if len(ids) == len(groups):
        return None
    return torch.tensor([ids[name] for name in groups])


def _held_out_perplexity(run: RunDir) -> dict[str, float]:
    """``{"held_out_perplexity": p}``, the last one the run logged, or {} when it logged none."""
    last = last_held_out_perplexity(run.read_metrics())
    return {} if last is None else {"held_out_perplexity": last[1]}


def _accuracies(result: dict[str, Any]) -> dict[str, Any]:
    keys = ("knn_top1", "knn_k", "linear_top1", "linear_top1_std")
    return {k: result[k] for k in keys if k in result}
