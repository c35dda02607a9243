"""A FASTA or FASTQ file of the user's own (plain or gzipped) as an unlabelled sequence data set.

``selfsup pretrain --method mlm --dataset my_proteins.fasta.gz`` pretrains on the file's records;
evaluation then takes a labelled data set (``selfsup evaluate RUN --dataset swissprot-loc``).

The alphabet is ``dna`` when every letter of the first ``SNIFF_RECORDS`` records is a nucleotide
code (A C G T U N and the IUPAC ambiguity codes), else ``protein``; ``data.options.alphabet``
says it outright (a protein made only of the letters A, C, G, T and N, say, would read as DNA).
Every record is then checked against that alphabet, and a bad letter is an error naming the file,
record and position. DNA letters become upper case A C G T N (ambiguity codes → N, U → T).

Train/test: ``TEST_FRACTION`` of the records, chosen by a hash of their ids, is held out (for the
held-out losses that MLM and next-token runs log); records that share an id stay together.
"""

from __future__ import annotations

import functools
import itertools
from pathlib import Path
from typing import Iterable, Optional

from selfsup.data.fasta import existing_file, read_sequences
from selfsup.data.sequences import SequenceSource, file_version, split_indices
from selfsup.data.splits import check_split
from selfsup.errors import ConfigError
from selfsup.tokenize.alphabets import DNA_IUPAC_LETTERS, PROTEIN_LETTERS, to_dna_letters

SEQUENCE_SUFFIXES = (".fasta", ".fas", ".fa", ".faa", ".fna", ".ffn", ".fastq", ".fq")
ALPHABETS = {"protein": PROTEIN_LETTERS, "dna": DNA_IUPAC_LETTERS}
SNIFF_RECORDS = 100
TEST_FRACTION = 0.01


def data_suffix(path: Path) -> str:
    """``path``'s last suffix in lower case, looking through a final ``.gz`` ("" when none):
    ``reads.FQ.gz`` → ``.fq``."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def is_sequence_file(path: Path) -> bool:
    """Whether ``path`` is named like a FASTA/FASTQ file, optionally ``.gz``."""
    return data_suffix(path) in SEQUENCE_SUFFIXES


def load_sequence_file(path: Path, split: str, alphabet: Optional[str] = None) -> SequenceSource:
    """The ``split`` ("train", "test" or "all") of the records of ``path`` (module docstring)."""
    check_split(split, str(path))
    if alphabet is not None and alphabet not in ALPHABETS:
        raise ConfigError(f"data.options.alphabet={alphabet!r}: choose {' or '.join(ALPHABETS)}")
    # a DataError naming the path, not the FileNotFoundError of os.stat
    records = _load(file_version(existing_file(path)), alphabet or sniff_alphabet(path))
    return records.subset(split_indices(records, split, TEST_FRACTION))


def sniff_alphabet(path: Path) -> str:
    """"dna" when the first ``SNIFF_RECORDS`` records use nucleotide codes only, else "protein"."""
    records = itertools.islice(read_sequences(path), SNIFF_RECORDS)
    return guess_alphabet(record.sequence for record in records)


def guess_alphabet(sequences: Iterable[str]) -> str:
    """"dna" when every letter of ``sequences`` is a nucleotide code (either case), else "protein"."""
    nucleotides = set(DNA_IUPAC_LETTERS + DNA_IUPAC_LETTERS.lower())
    return "dna" if all(set(sequence) <= nucleotides for sequence in sequences) else "protein"


def normalise(sequence: str, alphabet: str) -> str:
    """A checked ``sequence`` as the tokenisers take it: DNA over upper-case A C G T N, protein in
    upper case, text as written (the text tokeniser normalises its own way)."""
    if alphabet == "dna":
        return to_dna_letters(sequence)
    return sequence.upper() if alphabet == "protein" else sequence


@functools.lru_cache(maxsize=2)
def _load(version: tuple, alphabet: str) -> SequenceSource:
    """Every record of the file, cached per file version and alphabet: treat as read-only."""
    path = Path(version[0])
    ids, sequences = [], []
    for record in read_sequences(path, ALPHABETS[alphabet]):
        ids.append(record.id)
        sequences.append(normalise(record.sequence, alphabet))
    return SequenceSource(ids, sequences, alphabet, name=path.name)  # splits group by id
