"""``uniprot-go``: ~435k UniProt protein sequences, the protein pretraining corpus.

The Debian package ``metastudent-data`` ships the training data of the MetaStudent GO-term
predictor (release 2014-01) as three BLAST protein databases, one per Gene Ontology namespace:
``dataset_201401/{MFO,BPO,CCO}/goasp.fasta`` (molecular function, biological process, cellular
component). Each record's header is ``ACCESSION|GO:…,GO:…``. ``ncbi-blast+``'s ``blastdbcmd``
dumps each database to FASTA once; the dumps are cached (``selfsup.data.fasta.dump_blast_db``).

The three databases overlap: 1,338,325 records name 516,371 distinct accessions, and those hold
435,059 distinct sequences (many accessions are identical sequences from strains of one
species). This data set is the distinct sequences, each once, in the order first seen (MFO, BPO,
CCO), named by its first accession: 165.2 million residues, median length 313 (5th-95th
percentile 81-905), longest 35,213. It is unlabelled (the GO terms are not used). Letters: the 20
amino acids plus 9,419 ambiguous or rare ones (X, B, Z, U, O).

Train/test: 1 % of the sequences (4,351), drawn by a hash of the accession (``split_indices``),
are held out for the held-out perplexity that MLM and next-token runs log. Homologues are not
grouped (no clustering is shipped), so that perplexity is optimistic for truly new families.

Proteins of the evaluation set ``swissprot-loc`` occur here too: pretraining on unlabelled
sequences that include the evaluation proteins is the usual practice (ESM's UniRef also holds
them); the location labels are never seen.
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
from selfsup.tokenize.alphabets import PROTEIN_LETTERS

NAME = "uniprot-go"
SYSTEM_DIR = "/usr/share/metastudent-data/dataset_201401"
NAMESPACES = ("MFO", "BPO", "CCO")  # the three databases, read in this order
DATABASE = "goasp.fasta"  # each namespace folder's BLAST database (files goasp.fasta.p*)
INSTALL_COMMAND = ("sudo apt-get install --no-install-recommends metastudent-data ncbi-blast+  "
                   "(or: make data-all)")
TEST_FRACTION = 0.01


@DATASETS.register(NAME, "435k distinct UniProt proteins, unlabelled: the protein pretraining "
                         "corpus (Debian metastudent-data + ncbi-blast+)")
@reads_as("protein")
def uniprot_go(split: str, data_dir: Optional[str] = None) -> SequenceSource:
    """The ``split`` ("train", "test" or "all") of the distinct UniProt sequences of the three
    MetaStudent databases (see the module docstring); 1 % is held out as "test"."""
    check_split(split, NAME)
    proteins = _load(tuple(file_version(path) for path in dump_databases(data_dir)))
    return proteins.subset(split_indices(proteins, split, TEST_FRACTION))


def dump_databases(data_dir: Optional[str] = None) -> list[Path]:
    """The FASTA dumps of the MFO, BPO and CCO databases (made once, then read from the cache).

    The databases are looked for in ``data_dir``, ``$SELFSUP_DATA`` (each also with a
    ``uniprot-go`` sub-folder) and the Debian package's folder, as ``NAMESPACE/goasp.fasta.*``.
    """
    dumps = []
    for namespace in NAMESPACES:
        sequence_file = find_data_file(NAME, f"{namespace}/{DATABASE}.psq", SYSTEM_DIR, data_dir,
                                       INSTALL_COMMAND)
        dumps.append(dump_blast_db(sequence_file.with_suffix(""), install_hint=INSTALL_COMMAND))
    return dumps


@functools.lru_cache(maxsize=1)
def _load(dump_versions: tuple) -> SequenceSource:
    """Every distinct sequence of the dumps once, cached per dump version: treat as read-only."""
    first_accession: dict[str, str] = {}  # sequence → the accession it is named by
    for version in dump_versions:
        for record in read_fasta(Path(version[0]), PROTEIN_LETTERS):
            sequence = record.sequence.upper()
            if sequence not in first_accession:
                first_accession[sequence] = record.id.split("|", 1)[0]
    return SequenceSource(list(first_accession.values()), list(first_accession), "protein",
                          name=NAME)
