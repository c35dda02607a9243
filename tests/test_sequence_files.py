"""A user's FASTA/FASTQ file as a data set: alphabet, letters, splits, errors, and pretraining."""

from __future__ import annotations

import gzip
import json
import random

import pytest
from conftest import TINY_MLM

from selfsup.run_config import load_config
from selfsup.data import load_split
from selfsup.data.sequence_files import is_sequence_file
from selfsup.errors import ConfigError, DataError
from selfsup.train import Trainer

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"


def fasta_file(path, records, compress=False):
    """A FASTA file as users write them: headers with descriptions, letters as given, optionally
    gzipped (what the library's write_fasta, which writes our own output, does not do)."""
    text = "".join(f">{name} some description\n{sequence}\n" for name, sequence in records)
    if compress:
        with gzip.open(path, "wt") as handle:
            handle.write(text)
    else:
        path.write_text(text)
    return path


def random_proteins(count, seed=0):
    rng = random.Random(seed)
    return [(f"p{i}", "".join(rng.choice(AMINO_ACIDS) for _ in range(rng.randint(20, 60))))
            for i in range(count)]


def test_file_names_that_count_as_sequence_files(tmp_path):
    for name in ("a.fasta", "a.fa.gz", "a.FAA", "reads.fastq.gz", "x.fq", "genes.fna"):
        assert is_sequence_file(tmp_path / name), name
    for name in ("a.npz", "a.gz", "folder", "a.txt"):
        assert not is_sequence_file(tmp_path / name), name


def test_gzipped_proteins_are_read_as_protein(tmp_path):
    path = fasta_file(tmp_path / "mine.fa.gz", [("a", "MKVLAAGiVG"), ("b", "ACDEFGHIKW")], True)
    source = load_split(str(path), "all")
    assert source.alphabet == "protein"
    assert source.ids == ["a", "b"] and source.sequences == ["MKVLAAGIVG", "ACDEFGHIKW"]
    assert source.labels is None


def test_nucleotide_reads_are_read_as_dna_with_ambiguity_codes_as_n(tmp_path):
    path = tmp_path / "reads.fastq"
    path.write_text("@r1\nacgtRYN\n+\nIIIIIII\n@r2\nACGU\n+\nIIII\n")
    source = load_split(str(path), "all")
    assert source.alphabet == "dna"
    assert source.sequences == ["ACGTNNN", "ACGT"]


def test_the_alphabet_option_overrides_the_guess(tmp_path):
    path = fasta_file(tmp_path / "odd.fasta", [("gcn4-like", "ACGTNACGT")])
    assert load_split(str(path), "all").alphabet == "dna"
    as_protein = load_split(str(path), "all", options={"alphabet": "protein"})
    assert as_protein.alphabet == "protein" and as_protein.sequences == ["ACGTNACGT"]


def test_a_bad_letter_names_the_file_record_and_position(tmp_path):
    path = fasta_file(tmp_path / "bad.fasta", [("ok", "ACGT"), ("broken", "ACJT")])
    with pytest.raises(DataError, match=r"(?s)bad\.fasta.*broken.*position 3"):
        load_split(str(path), "all", options={"alphabet": "dna"})


def test_bad_options_are_named(tmp_path):
    path = fasta_file(tmp_path / "p.fasta", random_proteins(3))
    with pytest.raises(ConfigError, match="alphabet"):
        load_split(str(path), "all", options={"alphabet": "rna"})
    with pytest.raises(ConfigError, match="rank"):
        load_split(str(path), "all", options={"rank": "genus"})


def test_splits_are_disjoint_cover_the_file_and_keep_repeated_ids_together(tmp_path):
    # every id names two records: a split that ignored ids would cut some pairs in two
    records = [(f"p{i // 2}", sequence) for i, (_, sequence) in enumerate(random_proteins(1200))]
    path = fasta_file(tmp_path / "many.fasta", records)
    train, test = (load_split(str(path), split) for split in ("train", "test"))
    assert 2 <= len(test) <= 0.03 * len(records)
    assert len(train) + len(test) == len(records)
    assert set(train.ids).isdisjoint(test.ids)


def test_pretraining_on_a_dna_file_uses_the_dna_tokeniser(tmp_path):
    rng = random.Random(0)
    reads = [(f"r{i}", "".join(rng.choice("ACGT") for _ in range(rng.randint(40, 80))))
             for i in range(200)]
    path = fasta_file(tmp_path / "reads.fna.gz", reads, compress=True)
    config = load_config(None, TINY_MLM + [f"data.dataset={path}", f"out={tmp_path / 'run'}"])
    run_dir = Trainer(config).fit()
    spec = json.loads((run_dir / "encoder.json").read_text())
    assert spec["tokenizer"]["name"] == "dna"
    assert spec["backbone"]["vocab_size"] < 30  # nucleotides, not the 30 protein tokens
