"""Data: named built-in data sets, folders of images, NumPy arrays, sequence files, and batching.

``load_split(name, split)`` is the one entry point: ``name`` is a registered data set
(``fashion-mnist``, ``digits``, ``swissprot-loc``, …) or a path to a folder of images, a
``.npy``/``.npz`` file, a FASTA/FASTQ file of sequences (unlabelled), a text file (one text per
line) or a CSV/TSV table of sequences or texts with optional labels.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Optional

from selfsup.data import digits, fashion_mnist  # noqa: F401  (modules register their data sets)
from selfsup.data import dna_datasets, protein_datasets  # noqa: F401  (sequence data sets too)
from selfsup.data import rrna_corpus, uniprot_go  # noqa: F401  (the pretraining corpora)
from selfsup.data import text_datasets  # noqa: F401  (and text: 20newsgroups)
from selfsup.data.arrays import load_arrays
from selfsup.data.base import FileImages, ImageSource, TensorImages
from selfsup.data.folder import load_folder
from selfsup.data.loader import BatchStream, iterate_in_order
from selfsup.data.sequence_files import SEQUENCE_SUFFIXES, is_sequence_file, load_sequence_file
from selfsup.data.sequences import SequenceSource
from selfsup.data.table_files import (TABLE_FILE_OPTIONS, TEXT_FILE_OPTIONS, is_table_file,
                                      is_text_file, load_table_file, load_text_file)
from selfsup.errors import ConfigError, DataError
from selfsup.registry import DATASETS

ARRAY_SUFFIXES = (".npy", ".npz")
# the files of sequences or texts: (recognised by name, loader, its data.options, what it is)
SEQUENCE_READERS = (
    (is_sequence_file, load_sequence_file, ("alphabet",), "a FASTA/FASTQ file"),
    (is_text_file, load_text_file, TEXT_FILE_OPTIONS, "a text file"),
    (is_table_file, load_table_file, TABLE_FILE_OPTIONS, "a CSV/TSV file"),
)

__all__ = [
    "BatchStream",
    "FileImages",
    "ImageSource",
    "TensorImages",
    "data_modality",
    "dataset_names",
    "iterate_in_order",
    "load_split",
]


def dataset_names() -> list[str]:
    """Names of the registered data sets."""
    return DATASETS.names()


def data_modality(name: str, data_dir: Optional[str] = None,
                  options: Optional[dict[str, Any]] = None) -> str:
    """"image", or the alphabet of the sequence data set ``name`` ("protein", "dna", "text").

    Registered data sets say so without loading (``reads_as``); a sequence, text or table file is
    read (cached: the trainer's own load then costs nothing) to learn its alphabet; anything else
    is images."""
    if name in DATASETS:
        return getattr(DATASETS.get(name), "alphabet", "image")
    path = Path(name).expanduser()
    if any(matches(path) for matches, *_ in SEQUENCE_READERS):
        return load_split(name, "train", data_dir, options).alphabet
    return "image"


def load_split(name: str, split: str, data_dir: Optional[str] = None,
               options: Optional[dict[str, Any]] = None) -> ImageSource | SequenceSource:
    """The ``split`` ("train", "test"; "all" for folders, arrays and digits) of data set ``name``.

    ``name`` is a registered data set, a folder of images, a ``.npy``/``.npz`` file, a
    FASTA/FASTQ file (``selfsup.data.sequence_files``; its one option is ``alphabet``), a
    ``.txt`` file or a ``.csv``/``.tsv`` table (``selfsup.data.table_files``); ``data_dir``
    tells registered data sets where their files are and ``options`` (config ``data.options``)
    are their keyword options, e.g. ``{"reads_per_gene": 2}`` for 16s-reads or
    ``{"label_column": "location"}`` for a table.
    """
    options = options or {}
    if data_dir and not Path(data_dir).expanduser().is_dir():  # not a silent fall-back elsewhere
        raise DataError(f"--data-dir {data_dir} is not a folder; point it at the folder holding "
                        "the data set's files, or leave it out to use the standard locations")
    if name in DATASETS:
        factory = DATASETS.get(name)
        known = [p for p in inspect.signature(factory).parameters if p not in ("split", "data_dir")]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(f"data set {name!r} has no option {', '.join(unknown)}; its options: "
                              f"{', '.join(known) or 'none'}")
        return factory(split, data_dir, **options)
    path = Path(name).expanduser()
    for matches, load, known, what in SEQUENCE_READERS:
        if matches(path):
            unknown = sorted(set(options) - set(known))
            if unknown:
                raise ConfigError(f"{what} takes the data options {', '.join(known)}, not "
                                  f"{', '.join(unknown)}")
            return load(path, split, **options)
    if options:
        raise ConfigError(f"data.options {sorted(options)} are for registered data sets and "
                          f"sequence, text and table files; {name!r} is a path")
    if path.is_dir():
        return load_folder(path, split)
    if path.suffix.lower() in ARRAY_SUFFIXES:
        return load_arrays(path, split)
    raise DataError(
        f"unknown data set {name!r}: not a registered data set ({', '.join(dataset_names())}) "
        f"and not a path to a folder of images, a {'/'.join(ARRAY_SUFFIXES)} file, a "
        f"FASTA/FASTQ file ({'/'.join(SEQUENCE_SUFFIXES)}), a text file (.txt) or a table "
        "(.csv/.tsv), these optionally .gz"
    )
