"""Protein data sets: ``swissprot-loc``, Swiss-Prot proteins labelled with where in the cell they
act.

The Debian package ``predictnls`` ships 9,052 Swiss-Prot proteins (``allProt.fasta``, one
``>entry-name<TAB>sequence`` line each) and their subcellular location (``NewProtList``,
``entry-name<TAB>code``; the codes are explained in the package's ``Loci.dat``). Ten locations
occur; counts over all 9,052 proteins:

    nucleus 3,142   cytoplasm 2,731   chloroplast 1,010   mitochondrion 881   extracellular 820
    endoplasmic reticulum 202   lysosome 113   peroxisome 102   vacuole 36   Golgi 15

Train/test: 80/20 by class, keeping each protein family on one side. Proteins whose Swiss-Prot
entry names share the part before the underscore (``act1_arath``, ``act1_absgl``: actin 1 of two
species) are orthologues with near-identical sequences; a random split would test on near copies
of training proteins, so every family goes wholly to train or to test (3,127 families;
``stratified_group_split``). Split sizes: 7,234 train, 1,818 test.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

from selfsup.data.fasta import read_fasta
from selfsup.data.sequences import (SequenceSource, file_version, find_data_file, reads_as,
                                    split_indices)
from selfsup.data.splits import check_split
from selfsup.errors import DataError
from selfsup.registry import DATASETS
from selfsup.tokenize.alphabets import PROTEIN_LETTERS

NAME = "swissprot-loc"
SYSTEM_DIR = "/usr/share/predictnls/data"
SEQUENCES_FILE, LOCATIONS_FILE = "allProt.fasta", "NewProtList"
INSTALL_COMMAND = "sudo apt-get install --no-install-recommends predictnls"
TEST_FRACTION = 0.2
# location code in NewProtList → class name; the order gives the class index
LOCATIONS = {
    "cyt": "cytoplasm", "ext": "extracellular", "gol": "Golgi", "lys": "lysosome",
    "mit": "mitochondrion", "nuc": "nucleus", "oxi": "peroxisome", "pla": "chloroplast",
    "ret": "endoplasmic reticulum", "vac": "vacuole",
}
CLASSES = list(LOCATIONS.values())


@DATASETS.register(NAME, "Swiss-Prot proteins, 10 subcellular locations (9,052; Debian predictnls)")
@reads_as("protein")
def swissprot_loc(split: str, data_dir: Optional[str] = None) -> SequenceSource:
    """The ``split`` ("train", "test" or "all") of ``swissprot-loc``: protein sequences labelled
    with one of 10 subcellular locations, grouped by protein family (see the module docstring)."""
    check_split(split, NAME)
    sequences = find_data_file(NAME, SEQUENCES_FILE, SYSTEM_DIR, data_dir, INSTALL_COMMAND)
    locations = find_data_file(NAME, LOCATIONS_FILE, SYSTEM_DIR, data_dir, INSTALL_COMMAND)
    proteins = _load(file_version(sequences), file_version(locations))
    return proteins.subset(split_indices(proteins, split, TEST_FRACTION))


def protein_family(entry_name: str) -> str:
    """The family part of a Swiss-Prot entry name: ``act1_arath`` → ``act1``."""
    return entry_name.split("_", 1)[0]


@functools.lru_cache(maxsize=2)
def _load(sequences_version: tuple, locations_version: tuple) -> SequenceSource:
    """Every protein with its location, cached per file version. Treat the result as read-only."""
    sequences_path, locations_path = Path(sequences_version[0]), Path(locations_version[0])
    labels = _read_locations(locations_path)
    ids, sequences, label_list = [], [], []
    for record in read_fasta(sequences_path, PROTEIN_LETTERS, tab_separated=True):
        if record.id not in labels:
            raise DataError(
                f"{sequences_path}: protein {record.id!r} has no location in {locations_path}; "
                "the two files come from different versions of the package"
            )
        ids.append(record.id)
        sequences.append(record.sequence.upper())
        label_list.append(labels[record.id])
    missing = labels.keys() - set(ids)
    if missing:
        raise DataError(
            f"{locations_path} lists {len(missing)} protein(s) missing from {sequences_path}, "
            f"e.g. {sorted(missing)[0]!r}; the two files come from different versions of the "
            "package"
        )
    groups = [protein_family(entry) for entry in ids]
    return SequenceSource(ids, sequences, "protein", label_list, CLASSES, groups, NAME)


def _read_locations(path: Path) -> dict[str, int]:
    """entry name → class index from ``NewProtList`` lines ``entry<TAB>code``."""
    index = {code: i for i, code in enumerate(LOCATIONS)}
    labels: dict[str, int] = {}
    with open(path, encoding="ascii") as handle:
        for line_number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or fields[1] not in index:
                raise DataError(
                    f"{path}, line {line_number}: expected 'entry-name location-code' with a code "
                    f"among {', '.join(index)}, got {line.strip()!r}"
                )
            if fields[0] in labels:
                raise DataError(
                    f"{path}, line {line_number}: protein {fields[0]!r} is listed twice"
                )
            labels[fields[0]] = index[fields[1]]
    if not labels:
        raise DataError(f"{path}: the file lists no proteins")
    return labels
