"""``16s-rrna``: ~220k ribosomal RNA genes, the DNA pretraining corpus.

The Debian package ``ncbi-rrna-data`` ships NCBI's ribosomal RNA BLAST databases under
``/usr/share/ncbi/data``. ``Combined16SrRNA`` (built 2012) is the large one: 220,243 genes,
333 million bases, median length 1,456 (1st-99th percentile 912-3,163). Most are 16S rRNA genes
of bacteria and archaea, many from uncultured environmental clones: 172,693 headers name 16S.
The rest are other small-subunit genes (27,342 name 18S; mitochondrial SSU) and a few thousand
large-subunit (23S/28S) and genome-contig records. ``only_16s=True`` keeps the 172,693 records
whose header names 16S; by default all are kept, since every small-subunit gene teaches the same
conserved-and-variable-region structure that short 16S reads are read against.

``ncbi-blast+``'s ``blastdbcmd`` dumps the database once (cached, ``dump_blast_db``). Letters
other than A, C, G and T (IUPAC ambiguity codes, ~0.003 %) become N. The data set is unlabelled.

Train/test: 1 % of the genes (2,202), by a hash of the record id, held out for held-out losses. The
evaluation genes of ``16s-gold`` may occur here: unlabelled pretraining on them is the usual
practice; their taxonomy is never seen.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

from selfsup.data.fasta import dump_blast_db, read_fasta
from selfsup.data.sequences import (SequenceSource, file_version, find_data_file, reads_as,
                                    split_indices)
from selfsup.data.splits import check_split
from selfsup.registry import DATASETS
from selfsup.tokenize.alphabets import DNA_IUPAC_LETTERS, to_dna_letters

NAME = "16s-rrna"
SYSTEM_DIR = "/usr/share/ncbi/data"
DATABASE = "Combined16SrRNA"  # BLAST nucleotide database, files Combined16SrRNA.n*
INSTALL_COMMAND = ("sudo apt-get install --no-install-recommends ncbi-rrna-data ncbi-blast+  "
                   "(or: make data-all)")
TEST_FRACTION = 0.01


@DATASETS.register(NAME, "220k ribosomal RNA genes (mostly 16S), unlabelled: the DNA "
                         "pretraining corpus (Debian ncbi-rrna-data + ncbi-blast+); only_16s")
@reads_as("dna")
def sixteen_s_rrna(split: str, data_dir: Optional[str] = None,
                   only_16s: bool = False) -> SequenceSource:
    """The ``split`` ("train", "test" or "all") of NCBI's combined rRNA database (module
    docstring); ``only_16s`` keeps the records whose header names 16S."""
    check_split(split, NAME)
    sequence_file = find_data_file(NAME, f"{DATABASE}.nsq", SYSTEM_DIR, data_dir, INSTALL_COMMAND)
    dump = dump_blast_db(sequence_file.with_suffix(""), install_hint=INSTALL_COMMAND)
    genes = _load(file_version(dump), bool(only_16s))
    return genes.subset(split_indices(genes, split, TEST_FRACTION))


@functools.lru_cache(maxsize=2)
def _load(dump_version: tuple, only_16s: bool) -> SequenceSource:
    """The genes of the dump, cached per dump version and filter: treat as read-only."""
    ids, sequences, groups = [], [], []
    seen: dict[str, int] = {}  # record id → how often it has occurred so far
    for record in read_fasta(Path(dump_version[0]), DNA_IUPAC_LETTERS):
        if only_16s and "16S" not in record.description:
            continue
        # a genome contig with several rRNA operons has one record per gene under the contig's
        # id: number the repeats, and keep the contig as the group so its genes split together
        seen[record.id] = seen.get(record.id, 0) + 1
        ids.append(record.id if seen[record.id] == 1 else f"{record.id}#{seen[record.id]}")
        sequences.append(to_dna_letters(record.sequence))
        groups.append(record.id)
    return SequenceSource(ids, sequences, "dna", groups=groups, name=NAME)
