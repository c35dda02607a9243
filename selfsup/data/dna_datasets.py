"""DNA data sets: ``16s-gold`` (full-length 16S rRNA genes with taxonomy) and ``16s-reads``
(short reads cut from them, the way a sequencer sees a microbial community).

The Debian package ``microbiomeutil-data`` ships ``rRNA16S.gold.fasta``: 5,181 nearly full-length
16S rRNA genes (1,205-1,655 bp) of type strains and sequenced genomes, each header ending in a
tab and a 6-rank taxonomy, ``Bacteria; Proteobacteria; Gammaproteobacteria; …; Acinetobacter``
(domain, phylum, class, order, family, genus). Genes from one genome (up to 7 copies) share the
genome's name in the header and form one group; every other gene is a group of its own.

Labels are one rank (``rank``, phylum by default); classes with fewer than ``min_count`` genes
(default 20) are dropped, with their genes. At phylum rank that leaves 11 phyla and 5,075 genes:

    Proteobacteria 1,947   Firmicutes 1,199   Actinobacteria 1,190   Bacteroidetes 374
    Tenericutes 163   Spirochaetes 55   Fusobacteria 43   Deinococcus-Thermus 39
    Thermotogae 23   Euryarchaeota 22   Chlorobi 20

and at genus rank 46 genera and 1,916 genes. ``rank=None`` keeps every gene, unlabelled.
Train/test: 80/20 by class, whole groups (genomes) on one side (``stratified_group_split``): at
phylum rank 4,059 train and 1,016 test genes, at genus rank 1,531 and 385.

``16s-reads`` cuts ``reads_per_gene`` reads of ``read_length`` letters from each gene at uniformly
random positions, half from the reverse strand, with substitution errors at ``error_rate``
(``sample_reads``); a read carries its gene's label and falls in its gene's split, so no gene has
reads on both sides. The same seed gives the same reads everywhere.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import torch

from selfsup.data.fasta import read_fasta
from selfsup.data.sequences import (SequenceSource, file_version, find_data_file, reads_as,
                                    split_indices)
from selfsup.data.splits import check_split
from selfsup.errors import ConfigError, DataError
from selfsup.registry import DATASETS
from selfsup.tokenize.alphabets import DNA_IUPAC_LETTERS, STANDARD_NUCLEOTIDES, to_dna_letters

NAME, READS_NAME = "16s-gold", "16s-reads"
SYSTEM_DIR = "/usr/share/microbiomeutil-data/RESOURCES"
GENES_FILE = "rRNA16S.gold.fasta"
INSTALL_COMMAND = "sudo apt-get install --no-install-recommends microbiomeutil-data"
RANKS = ("domain", "phylum", "class", "order", "family", "genus")
DEFAULT_RANK, DEFAULT_MIN_COUNT = "phylum", 20
TEST_FRACTION = 0.2

_BASES = np.frombuffer(STANDARD_NUCLEOTIDES.encode("ascii"), dtype=np.uint8)
_BASE_INDEX = np.full(256, -1, dtype=np.int64)  # byte → 0..3 for A C G T, -1 otherwise
_BASE_INDEX[_BASES] = np.arange(4)
_COMPLEMENT_BYTE = np.arange(256, dtype=np.uint8)
_COMPLEMENT_BYTE[_BASES] = _BASES[::-1]  # A C G T → T G C A; N and the rest stay


class Gene(NamedTuple):
    id: str
    sequence: str  # upper case over A C G T N
    taxonomy: tuple[str, ...]  # one name per rank in RANKS
    group: str  # the genome it comes from, or its own id


@DATASETS.register(NAME, "16S rRNA genes of type strains with taxonomy (5,181; Debian "
                         "microbiomeutil-data); rank=phylum|…|genus")
@reads_as("dna")
def sixteen_s_gold(split: str, data_dir: Optional[str] = None, rank: Optional[str] = DEFAULT_RANK,
                   min_count: int = DEFAULT_MIN_COUNT) -> SequenceSource:
    """The ``split`` ("train", "test" or "all") of the 16S genes, labelled at ``rank``."""
    check_split(split, NAME)
    genes = labelled_genes(data_dir, rank, min_count)
    return genes.subset(split_indices(genes, split, TEST_FRACTION))


@DATASETS.register(READS_NAME, "short reads (150 bp, both strands, 1% errors) of the 16s-gold "
                               "genes, split by gene")
@reads_as("dna")
def sixteen_s_reads(split: str, data_dir: Optional[str] = None,
                    rank: Optional[str] = DEFAULT_RANK, min_count: int = DEFAULT_MIN_COUNT,
                    read_length: int = 150, reads_per_gene: int = 10, error_rate: float = 0.01,
                    seed: int = 0) -> SequenceSource:
    """The ``split`` of reads sampled from the 16S genes (``sample_reads``); each read has its
    gene's label and lies in its gene's split."""
    check_split(split, READS_NAME)
    path = find_data_file(NAME, GENES_FILE, SYSTEM_DIR, data_dir, INSTALL_COMMAND)
    genes = _labelled_genes(file_version(path), rank, min_count)
    reads = _reads(file_version(path), rank, min_count, read_length, reads_per_gene, error_rate,
                   seed)
    gene_indices = split_indices(genes, split, TEST_FRACTION)
    # sample_reads lists reads_per_gene reads per gene, in gene order
    read_indices = gene_indices[:, None] * reads_per_gene + torch.arange(reads_per_gene)
    return reads.subset(read_indices.flatten())


def labelled_genes(data_dir: Optional[str] = None, rank: Optional[str] = DEFAULT_RANK,
                   min_count: int = DEFAULT_MIN_COUNT) -> SequenceSource:
    """Every 16S gene whose ``rank`` class has ``min_count`` genes or more, labelled at ``rank``
    (classes ordered by name); ``rank`` None (or "none") keeps every gene, unlabelled.
    The result is cached: treat it as read-only."""
    path = find_data_file(NAME, GENES_FILE, SYSTEM_DIR, data_dir, INSTALL_COMMAND)
    return _labelled_genes(file_version(path), rank, min_count)


@functools.lru_cache(maxsize=4)
def _labelled_genes(version: tuple, rank: Optional[str], min_count: int) -> SequenceSource:
    genes = _read_genes(version)
    ids = [gene.id for gene in genes]
    sequences = [gene.sequence for gene in genes]
    groups = [gene.group for gene in genes]
    if rank is None or rank == "none":
        return SequenceSource(ids, sequences, "dna", groups=groups, name=NAME)
    if rank not in RANKS:
        raise ConfigError(
            f"{NAME}: unknown rank {rank!r}; choose one of {', '.join(RANKS)} or none"
        )
    names = [gene.taxonomy[RANKS.index(rank)] for gene in genes]
    counts = {name: names.count(name) for name in set(names)}
    classes = sorted(name for name, count in counts.items() if count >= min_count)
    if not classes:
        raise DataError(
            f"{NAME}: no {rank} has {min_count} genes or more (the largest has "
            f"{max(counts.values())}); lower min_count"
        )
    index = {name: i for i, name in enumerate(classes)}
    keep = [i for i, name in enumerate(names) if name in index]
    labels = [index[names[i]] for i in keep]
    return SequenceSource([ids[i] for i in keep], [sequences[i] for i in keep], "dna", labels,
                          classes, [groups[i] for i in keep], NAME)


@functools.lru_cache(maxsize=2)
def _read_genes(version: tuple) -> list[Gene]:
    path = Path(version[0])
    genes = []
    for record in read_fasta(path, DNA_IUPAC_LETTERS):
        fields = record.description.split("\t")
        taxonomy = tuple(name.strip() for name in fields[-1].split(";"))
        if len(taxonomy) != len(RANKS) or not all(taxonomy):
            raise DataError(
                f"{path}: record {record.id!r}: expected its header to end in a tab and "
                f"{len(RANKS)} '; '-separated ranks ({', '.join(RANKS)}), got {fields[-1]!r}"
            )
        # headers of genes from sequenced genomes read "id<TAB>genome<TAB>details<TAB>taxonomy"
        group = fields[0].strip() if len(fields) >= 3 else record.id
        genes.append(Gene(record.id, to_dna_letters(record.sequence), taxonomy, group))
    return genes


@functools.lru_cache(maxsize=4)
def _reads(version: tuple, rank: Optional[str], min_count: int, read_length: int,
           reads_per_gene: int, error_rate: float, seed: int) -> SequenceSource:
    """The reads of every labelled gene, cached: the train and test splits come from one draw."""
    reads = sample_reads(_labelled_genes(version, rank, min_count), read_length, reads_per_gene,
                         error_rate, seed)
    reads.name = READS_NAME
    return reads


def sample_reads(genes: SequenceSource, read_length: int = 150, reads_per_gene: int = 10,
                 error_rate: float = 0.01, seed: int = 0,
                 reverse_fraction: float = 0.5) -> SequenceSource:
    """``reads_per_gene`` reads of ``read_length`` letters from each gene, listed gene by gene.

    Each read starts at a uniformly random position (a gene shorter than ``read_length`` gives
    whole-gene reads), is reverse-complemented with probability ``reverse_fraction`` and then has
    each A/C/G/T replaced, with probability ``error_rate``, by one of the other three (N stays).
    Read ids are ``gene/start-end`` (1-based, inclusive) plus ``+`` or ``-`` for the strand. Reads
    keep their gene's label and group. Deterministic in ``seed``.
    """
    if read_length < 1 or reads_per_gene < 1:
        raise ConfigError(f"read_length ({read_length}) and reads_per_gene ({reads_per_gene}) "
                          "must be 1 or more")
    if not 0.0 <= error_rate <= 1.0:
        raise ConfigError(f"error_rate must be in [0, 1], got {error_rate}")
    rng = np.random.default_rng(seed)
    gene_lengths = genes.lengths.numpy()
    gene_offsets = np.concatenate([[0], np.cumsum(gene_lengths)[:-1]])
    letters = np.frombuffer("".join(genes.sequences).encode("ascii"), dtype=np.uint8)
    gene_of_read = np.repeat(np.arange(len(genes)), reads_per_gene)
    lengths = np.minimum(read_length, gene_lengths)[gene_of_read]
    room = gene_lengths[gene_of_read] - lengths + 1  # possible starts per read
    starts = (rng.random(len(gene_of_read)) * room).astype(np.int64)
    reverse = rng.random(len(gene_of_read)) < reverse_fraction
    # the reverse strand reads the window backwards, complemented
    step = np.arange(read_length)
    within = np.clip(np.where(reverse[:, None], lengths[:, None] - 1 - step, step),
                     0, lengths[:, None] - 1)  # positions past a short read's end are cut below
    windows = letters[(gene_offsets[gene_of_read] + starts)[:, None] + within]
    windows = np.where(reverse[:, None], _COMPLEMENT_BYTE[windows], windows)
    windows = _substitute(windows, error_rate, rng)
    reads = [row[:length].tobytes().decode("ascii") for row, length in zip(windows, lengths)]
    ids = [
        f"{genes.ids[gene]}/{start + 1}-{start + length}{'-' if is_reverse else '+'}"
        for gene, start, length, is_reverse in zip(gene_of_read, starts, lengths, reverse)
    ]
    labels = None if genes.labels is None else genes.labels.repeat_interleave(reads_per_gene)
    groups = [group for group in (genes.groups or genes.ids) for _ in range(reads_per_gene)]
    return SequenceSource(ids, reads, "dna", labels, genes.classes, groups, f"{genes.name} reads")


def _substitute(letters: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """``letters`` (uint8 bytes) with each A/C/G/T swapped for another base with probability
    ``rate``: a shift of 1-3 along A C G T always lands on a different base."""
    index = _BASE_INDEX[letters]
    hit = (index >= 0) & (rng.random(letters.shape) < rate)
    shifted = _BASES[(index + rng.integers(1, 4, size=letters.shape)) % 4]
    return np.where(hit, shifted, letters)
