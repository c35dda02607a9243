"""The run directory: its layout, and the readers and writers of its files.

``selfsup pretrain --out RUN`` writes a run directory; evaluation, fine-tuning, the report and the
apps read it and add to it. Every file name of it is spelt here and nowhere else: the other
modules ask a :class:`RunDir` for the path (``run.config_file``, ``run.eval_file(dataset)``, ...).

The layout::

    config.yaml             the run's full config (train.total_steps fixed by a time budget)
    metrics.jsonl           one JSON record per line: steps, epochs, health, probes, run events
    checkpoints/last.pt     the training state at the last epoch boundary (exact resume)
    tokenizer.json          a learnt text tokeniser (text runs only)
    encoder.safetensors     the trained encoder's weights
    encoder.json            how to rebuild the encoder (backbone, input shape or tokeniser)
    health_verdict.json     the health monitor's verdict at the end of training
    eval.json, tsne.npz     `selfsup evaluate` on the pretraining data set;
    eval-<name>.json, tsne-<name>.npz   on another data set
    finetune.json           `selfsup finetune`'s results, merged run after run
    report.md and *.png     `selfsup report`: the report, its plots and pictures
    bo-embeddings/          `selfsup bo`'s cache of the encoder's embeddings

A low layer: it imports the config, the errors, atomic writes and the metrics log's reader, and
nothing of training, evaluation, the report or the command line.
"""

from __future__ import annotations

import copy
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager, Optional

from selfsup.config import Config, read_saved_config, read_yaml_file
from selfsup.errors import DataError
from selfsup.files import atomic_write, exclusive_lock, remove_stale_temporaries
from selfsup.run_files import (  # noqa: F401  (the layout's names, re-exported)
    CONFIG_FILE, METRICS_FILE, CHECKPOINT_DIR, CHECKPOINT_FILE, TOKENIZER_FILE,
    ENCODER_WEIGHTS_FILE, ENCODER_SPEC_FILE, HEALTH_VERDICT_FILE, EVAL_FILE, TSNE_FILE,
    FINETUNE_FILE, REPORT_FILE, BO_CACHE_DIR, LOCK_FILE, EFFECTIVE_RANK_PLOT, SPECTRUM_PLOT,
    LOSS_LR_PLOT, PROBE_PLOT, HELD_OUT_PERPLEXITY_PLOT, FINETUNE_PLOT, MAE_RECONSTRUCTIONS,
    RECONSTRUCTIONS, VAE_SAMPLES, VAE_INTERPOLATIONS, ATTENTION_MAPS,
)
from selfsup.train.metrics_log import MetricsLog, read_metrics

if TYPE_CHECKING:
    import numpy as np  # loaded where t-SNEs are read and written: the command line needs none

_EVAL_STEM, _TSNE_STEM = Path(EVAL_FILE).stem, Path(TSNE_FILE).stem
_LABEL_EFFICIENCY_STEM = "label_efficiency"


def _file(name: str, doc: str) -> property:
    return property(lambda self: self.path / name, doc=f"``RUN/{name}``: {doc}")


@dataclass
class TSNE:
    """A t-SNE of an evaluation's test features: 2-D points, their labels and the class names."""

    coords: np.ndarray
    labels: Optional[np.ndarray]
    class_names: Optional[list[str]]


def write_json(path: str | Path, data: Any) -> Path:
    """``data`` as indented JSON at ``path``, written atomically
    (:func:`selfsup.files.atomic_write`)."""
    path = Path(path)
    text = json.dumps(data, indent=2)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


def write_tsne(path: Path, coords: np.ndarray, labels: np.ndarray,
               class_names: np.ndarray) -> None:
    """A t-SNE as an .npz of plain arrays (``coords``, ``labels``, ``class_names``), atomically."""
    import numpy as np

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a file object: np.savez would append .npz to a name
            np.savez(handle, coords=coords, labels=labels, class_names=class_names)

    atomic_write(path, save)


def read_tsne(path: Path) -> Optional[TSNE]:
    """The t-SNE :func:`write_tsne` wrote at ``path``; None when there is none."""
    import numpy as np

    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:  # torn, foreign, pickled
        raise DataError(f"{path} cannot be read as an .npz of plain arrays ({error}); "
                        "re-run the t-SNE step") from None
    coords = arrays.get("coords")
    if coords is None or coords.ndim != 2 or coords.shape[1] != 2:
        raise DataError(f"{path} needs an array 'coords' of shape (n, 2); re-run the t-SNE step")
    labels = arrays.get("labels")
    if labels is not None and len(labels) != len(coords):
        raise DataError(f"{path}: {len(labels)} labels for {len(coords)} points; re-run the "
                        "t-SNE step")
    names = arrays.get("class_names")
    return TSNE(coords, labels, None if names is None else [str(n) for n in names])


def dataset_tag(dataset: str) -> str:
    """The name of data set ``dataset`` in file names (``eval-<tag>.json``): a path's file name,
    other characters than letters, digits, ``.``, ``_`` and ``-`` as ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(dataset).name).strip("-.") or "data"


class RunDir:
    """The files of one run directory (``path``); it need not exist yet."""

    def __init__(self, path: str | Path) -> None:
        # absolute, so that a file of the run given back to the readers and writers below
        # (``run.write_json(run.encoder_spec, ...)``) is not joined to a relative folder twice
        self.path = Path(path).expanduser().absolute()

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)

    config_file = _file(CONFIG_FILE, "the run's config")
    metrics_file = _file(METRICS_FILE, "the metrics log, one JSON record per line")
    checkpoint_dir = _file(CHECKPOINT_DIR, "the folder of the training checkpoint")
    checkpoint_file = _file(CHECKPOINT_FILE, "the training state of the last finished epoch")
    tokenizer_file = _file(TOKENIZER_FILE, "the learnt text tokeniser of a text run")
    encoder_weights = _file(ENCODER_WEIGHTS_FILE, "the trained encoder's weights")
    encoder_spec = _file(ENCODER_SPEC_FILE, "how to rebuild the encoder")
    health_verdict_file = _file(HEALTH_VERDICT_FILE, "the health verdict at the end of training")
    finetune_file = _file(FINETUNE_FILE, "the fine-tuning results")
    report_file = _file(REPORT_FILE, "the run report")
    bo_cache_dir = _file(BO_CACHE_DIR, "cached embeddings of `selfsup bo`")
    lock_file = _file(LOCK_FILE, "the lock of the process writing the run, with its PID")
    effective_rank_plot = _file(EFFECTIVE_RANK_PLOT, "effective rank per epoch")
    spectrum_plot = _file(SPECTRUM_PLOT, "the last singular spectrum")
    loss_lr_plot = _file(LOSS_LR_PLOT, "training loss and learning rate")
    probe_plot = _file(PROBE_PLOT, "the online k-NN probe")
    held_out_perplexity_plot = _file(HELD_OUT_PERPLEXITY_PLOT, "held-out perplexity per epoch")
    finetune_plot = _file(FINETUNE_PLOT, "fine-tuning label efficiency")
    mae_reconstructions = _file(MAE_RECONSTRUCTIONS, "MAE's reconstructions")
    reconstructions = _file(RECONSTRUCTIONS, "an autoencoder's reconstructions")
    vae_samples = _file(VAE_SAMPLES, "a VAE's samples")
    vae_interpolations = _file(VAE_INTERPOLATIONS, "a VAE's interpolations")
    attention_maps = _file(ATTENTION_MAPS, "a ViT's attention maps")

    # ------------------------------------------------------------ evaluations
    def eval_file(self, dataset: Optional[str] = None) -> Path:
        """The evaluation's results: ``eval.json`` on the pretraining data set (``dataset`` None),
        ``eval-<tag>.json`` on another (:func:`dataset_tag`)."""
        return self.path / f"{_EVAL_STEM}{self._suffix(dataset)}.json"

    def tsne_file(self, dataset: Optional[str] = None) -> Path:
        """The evaluation's t-SNE: ``tsne.npz``, or ``tsne-<tag>.npz`` on another data set."""
        return self.path / f"{_TSNE_STEM}{self._suffix(dataset)}.npz"

    def eval_files(self) -> list[Path]:
        """The evaluations there are: ``eval.json`` first, then each ``eval-<tag>.json`` by name."""
        paths = [self.eval_file()] + sorted(self.path.glob(f"{_EVAL_STEM}-*.json"))
        return [path for path in paths if path.is_file()]

    def label_efficiency_plot(self, eval_file: Path) -> Path:
        """The label-efficiency plot of the evaluation in ``eval_file`` (named after it)."""
        return self.path / f"{_LABEL_EFFICIENCY_STEM}{self._suffix_of(eval_file)}.png"

    def tsne_plot(self, eval_file: Path) -> Path:
        """The t-SNE plot of the evaluation in ``eval_file`` (named after it)."""
        return self.path / f"{_TSNE_STEM}{self._suffix_of(eval_file)}.png"

    @staticmethod
    def _suffix(dataset: Optional[str]) -> str:
        return "" if dataset is None else f"-{dataset_tag(dataset)}"

    @staticmethod
    def _suffix_of(eval_file: Path) -> str:
        """"" for ``eval.json``, "-<tag>" for ``eval-<tag>.json``."""
        return Path(eval_file).stem[len(_EVAL_STEM):]

    def file(self, name: str | Path) -> Path:
        """The file ``name`` names (e.g. an eval file's ``tsne_file``), never outside the run dir:
        its file name alone, in this folder."""
        return self.path / Path(str(name)).name

    # ------------------------------------------------------------ readers and writers
    def load_config(self) -> Config:
        """The run's config; DataError when this is no run directory."""
        if not self.config_file.is_file():
            raise DataError(f"{self.path} is not a selfsup run dir (no {CONFIG_FILE}); "
                            "pass the --out directory of `selfsup pretrain`")
        return read_saved_config(self.config_file)

    def save_config(self, config: Config) -> None:
        config.save(self.config_file)

    # ------------------------------------------------------------ one writer at a time
    def lock(self) -> ContextManager[None]:
        """Held by the one process that writes the run (training, fine-tuning): a second writer
        gets a DataError at once; readers (evaluate, report) do not take it. The OS releases it
        when the holder ends, ``kill -9`` included."""
        self.path.mkdir(parents=True, exist_ok=True)
        return exclusive_lock(self.lock_file, f"run directory {self.path}")

    def remove_stale_temporaries(self) -> list[Path]:
        """The half-written files that killed writers left in the run (and its checkpoint
        folder), removed."""
        return [path for folder in (self.path, self.checkpoint_dir) if folder.is_dir()
                for path in remove_stale_temporaries(folder)]

    def read_config_text(self) -> tuple[Optional[str], dict]:
        """The config's text (as written) and its parsed mapping, ``(None, {})`` when there is
        none; unlike :meth:`load_config` no check of its keys, for a report of any run."""
        path = self.config_file
        if not path.is_file():
            return None, {}
        text, parsed = read_yaml_file(path, "restore it from a copy, or train the run again")
        return text, parsed if isinstance(parsed, dict) else {}

    def metrics_log(self) -> MetricsLog:
        return MetricsLog(self.metrics_file)

    def read_metrics(self) -> list[dict[str, Any]]:
        """The complete records of ``metrics.jsonl``
        (:func:`selfsup.train.metrics_log.read_metrics`)."""
        return read_metrics(self.metrics_file)

    def has_encoder(self) -> bool:
        """Whether training finished: the encoder's weights and spec are both there."""
        return self.encoder_spec.is_file() and self.encoder_weights.is_file()

    def read_encoder_spec(self) -> dict[str, Any]:
        """``encoder.json``, checked to describe an encoder (a ``backbone`` section); DataError
        naming the file when it is empty, torn or not one."""
        path = self.encoder_spec
        spec = self.read_json(path)  # DataError when it is not a JSON object
        if spec is None:
            raise DataError(f"{path} is missing; train the run again")
        if not isinstance(spec.get("backbone"), dict) or "name" not in spec["backbone"]:
            raise DataError(f"{path} does not describe an encoder (no backbone section with a "
                            "name): it is damaged or not selfsup's; copy it back from a backup, or "
                            "train the run again")
        return spec

    def write_json(self, name: str | Path, data: Any) -> Path:
        """``data`` as indented JSON in file ``name`` of the run dir (or at the path ``name``),
        written atomically."""
        return write_json(self.path / name, data)

    def read_json(self, name: str | Path) -> Optional[dict]:
        """The JSON object in file ``name`` of the run dir (or at the path ``name``); None when
        there is no such file, DataError when it holds no JSON object."""
        path = self.path / name
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except ValueError as error:  # JSON and UTF-8 errors alike
            raise DataError(f"{path} is not valid JSON ({error}); delete it and re-run the step "
                            "that writes it") from None
        if not isinstance(data, dict):
            raise DataError(f"{path} must hold a JSON object; delete it and re-run the step that "
                            "writes it")
        return data


def read_finetune_results(path: str | Path) -> dict[str, Any]:
    """The contents of a finetune.json (``{"datasets": {}}`` when there is none yet)."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a folder; name the results file "
                        f"(e.g. {RunDir(path).finetune_file})")
    data = RunDir(path.parent).read_json(path)  # the one JSON reader: DataError if damaged
    if data is None:
        return {"datasets": {}}
    if not isinstance(data.get("datasets"), dict):
        raise DataError(f"{path} is not a fine-tuning results file (no \"datasets\" mapping); move it "
                        "away or pass --out another file")
    return data


def merge_finetune_results(path: str | Path, new: dict[str, Any]) -> dict[str, Any]:
    """Merge ``new`` (``{dataset: {mode: {init: {fraction: entry}}}}``) into the file at ``path``.

    An entry replaces the entry of the same dataset, mode, init and fraction; every other entry is
    kept. The file is written atomically; returns the merged contents.
    """
    path = Path(path)
    # Two studies writing one file take turns: each reads what the other merged before writing.
    with exclusive_lock(path.with_name(f".{path.name}.lock"), str(path), wait=True):
        merged = read_finetune_results(path)
        for dataset, modes in new.items():
            for mode, inits in modes.items():
                for init, entries in inits.items():
                    target = merged["datasets"].setdefault(dataset, {}).setdefault(mode, {})
                    target.setdefault(init, {}).update(copy.deepcopy(entries))
        write_json(path, merged)
    return merged
