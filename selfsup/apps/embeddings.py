"""``selfsup embed``: a run's encoder features of a data split, each tied to its item's id.

The format follows the file name's extension:

* ``.npy``: the (N, D) float32 features, and beside them ``NAME.ids.tsv`` with one line per row:
  the id, and the label when the data have labels;
* ``.csv``: one row per item: ``id``, ``label`` (when labelled), ``f0`` … ``f{D-1}``;
* ``.parquet``: columns ``id``, ``label`` (when labelled) and ``embedding`` (a fixed-size list of
  float32), for pandas, polars, DuckDB and the vector databases that read parquet.

With ``per_token`` (``--per-token``, sequence runs) each sequence gets one vector per token of
its own (per residue for proteins, per base or k-mer for DNA, per word piece for text; no
``<cls>``, ``<eos>`` or padding; a sequence longer than the run's ``data.max_length`` keeps its
first window, as the pooled features do), written as

* ``.parquet``: ``id``, ``label``, ``tokens`` (a list of fixed-size float32 lists, one per token);
* ``.npz``: ``ids`` (strings), ``labels`` (when labelled), ``tokens`` (all sequences' token
  vectors one after another, (T, D) float32) and ``offsets`` ((N + 1,) int64: sequence i's are
  ``tokens[offsets[i]:offsets[i + 1]]``) — plain arrays, no pickle.

Ids are what the user knows an item by (``source.item_ids()``): the image file's path for a
folder of images, the record id for FASTA/FASTQ files and tables, ``NAME:ROW`` for arrays and the
built-in image sets. Every file is written whole or not at all (``selfsup.files.atomic_write``),
and nothing is written when the features hold NaN or infinite values.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from selfsup.errors import ConfigError
from selfsup.evaluate.run import check_encoder_fits, check_finite, load_run_config, run_split
from selfsup.files import atomic_write, save_npy
from selfsup.modalities import modality_for_spec
from selfsup.train.checkpoint import load_encoder
from selfsup.train.device import resolve_device, resolve_precision

IDS_SUFFIX = ".ids.tsv"  # the sidecar of a .npy: NAME.npy → NAME.ids.tsv


@torch.no_grad()
def embed_run(run_dir: str | Path, dataset: Optional[str], split: str, out: str | Path,
              data_dir: Optional[str] = None, device: str = "auto",
              per_token: bool = False) -> np.ndarray:
    """Encoder features of every image or sequence of a split (of the data set the run's encoder
    reads; ``run_split``'s defaults), written to ``out`` in the format its extension names
    (module docstring); returns them, (N, D) float32 — with ``per_token``, the (T, D) token
    vectors of all sequences one after another."""
    out = Path(out)
    writer = _writer(out, per_token)  # a wrong name fails before any encoding
    config = load_run_config(run_dir)
    dev = resolve_device(device)
    encoder, spec = load_encoder(run_dir, dev)
    name, source = run_split(config, split, dataset, data_dir)
    modality = modality_for_spec(spec)
    check_encoder_fits(modality, source, name, run_dir, labelled=False)
    precision = resolve_precision("auto", dev)
    what = f"the {'token ' if per_token else ''}embeddings of {name}'s {split} split"
    if per_token:
        per_item = modality.token_features(encoder, source, dev, config.eval.batch_size, precision)
        tokens = np.concatenate(per_item).astype(np.float32, copy=False)  # once: it can be large
        check_finite(torch.from_numpy(tokens), what)  # before writing anything
        writer(out, source.item_ids(), source.labels, (tokens, _offsets(per_item)))
        return tokens
    feats = modality.features(encoder, source, dev, config.eval.batch_size, precision).cpu()
    check_finite(feats, what)  # before writing anything
    features = feats.numpy()
    writer(out, source.item_ids(), source.labels, features)
    return features


Writer = Callable[[Path, list[str], Optional[torch.Tensor], Any], None]  # features, or per item


def _writer(out: Path, per_token: bool = False) -> Writer:
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; name the file to write in it, e.g. "
                          f"{out / 'embeddings.parquet'}")
    if per_token:
        writers = {".npz": write_token_npz, ".parquet": write_token_parquet}
        formats = "a .parquet or .npz file (a sequence's token vectors are a list, not a row)"
    else:
        writers = {".npy": write_npy, ".csv": write_csv, ".parquet": write_parquet}
        formats = "a .npy (with an ids file beside it), .csv or .parquet file"
    if out.suffix.lower() not in writers:
        raise ConfigError(f"--out {out}: name {formats}, e.g. {out.with_suffix('.parquet')}")
    return writers[out.suffix.lower()]


def ids_file(npy: Path) -> Path:
    """The ids file beside the .npy ``npy``."""
    return npy.with_suffix(IDS_SUFFIX)


def write_npy(out: Path, ids: list[str], labels: Optional[torch.Tensor],
              features: np.ndarray) -> None:
    """``out`` (N, D) float32 and its ids file: ``id`` (and ``label``) per row, tab-separated."""
    header = ["id"] + (["label"] if labels is not None else [])
    rows = [[item] + ([str(int(labels[i]))] if labels is not None else [])
            for i, item in enumerate(ids)]
    save_npy(out, features)  # first: a failed save leaves no ids file without its array
    _write_rows(ids_file(out), header, rows, delimiter="\t")


def write_csv(out: Path, ids: list[str], labels: Optional[torch.Tensor],
              features: np.ndarray) -> None:
    header = (["id"] + (["label"] if labels is not None else [])
              + [f"f{d}" for d in range(features.shape[1])])
    rows = [[item] + ([int(labels[i])] if labels is not None else [])
            + [f"{value:.7g}" for value in features[i]] for i, item in enumerate(ids)]
    _write_rows(out, header, rows, delimiter=",")


def write_parquet(out: Path, ids: list[str], labels: Optional[torch.Tensor],
                  features: np.ndarray) -> None:
    pa, pq = _pyarrow(out)
    columns = _id_columns(pa, ids, labels)
    columns["embedding"] = _vectors(pa, features)
    table = pa.table(columns)
    atomic_write(out, lambda tmp: pq.write_table(table, str(tmp)))


def write_token_parquet(out: Path, ids: list[str], labels: Optional[torch.Tensor],
                        token_rows: tuple[np.ndarray, np.ndarray]) -> None:
    """``token_rows``: (all items' token vectors one after another, the (N + 1,) offsets)."""
    pa, pq = _pyarrow(out)
    tokens, offsets = token_rows
    columns = _id_columns(pa, ids, labels)
    columns["tokens"] = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()),
                                                 _vectors(pa, tokens))
    table = pa.table(columns)
    atomic_write(out, lambda tmp: pq.write_table(table, str(tmp)))


def write_token_npz(out: Path, ids: list[str], labels: Optional[torch.Tensor],
                    token_rows: tuple[np.ndarray, np.ndarray]) -> None:
    """``token_rows`` as :func:`write_token_parquet` takes them."""
    tokens, offsets = token_rows
    arrays = {"ids": np.array(ids, dtype=str), "offsets": offsets, "tokens": tokens}
    if labels is not None:
        arrays["labels"] = labels.numpy()

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a file object: np.savez would append .npz to a name
            np.savez(handle, **arrays)

    atomic_write(out, write)


def _offsets(per_item: list[np.ndarray]) -> np.ndarray:
    """(N + 1,) int64: where each item's rows start in the concatenation, then the total."""
    return np.concatenate([[0], np.cumsum([len(item) for item in per_item])]).astype(np.int64)


def _pyarrow(out: Path):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(f"--out {out}: writing parquet needs pyarrow; pip install pyarrow, or "
                          "name a .npy or .csv file") from None
    return pa, pq


def _id_columns(pa, ids: list[str], labels: Optional[torch.Tensor]) -> dict:
    columns = {"id": pa.array(ids, pa.string())}
    if labels is not None:
        columns["label"] = pa.array(labels.numpy(), pa.int64())
    return columns


def _vectors(pa, rows: np.ndarray):
    """(R, D) float32 rows as one fixed-size-list array of R vectors."""
    values = pa.array(np.ascontiguousarray(rows, np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(values, rows.shape[1])


def _write_rows(path: Path, header: list[str], rows: list[list], delimiter: str) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, delimiter=delimiter)
            writer.writerow(header)
            writer.writerows(rows)

    atomic_write(path, write)
