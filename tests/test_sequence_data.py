"""Tests of sequence sources, group splits, the read sampler and the real sequence data sets."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from selfsup.data import dna_datasets, load_split, protein_datasets
from selfsup.data.dna_datasets import sample_reads, sixteen_s_gold, sixteen_s_reads
from selfsup.data.protein_datasets import swissprot_loc
from selfsup.data.sequences import SequenceSource, load_sequences, stratified_group_split
from selfsup.errors import ConfigError, DataError
from selfsup.tokenize import DnaTokenizer, reverse_complement

PREDICTNLS = Path(protein_datasets.SYSTEM_DIR)
MICROBIOMEUTIL = Path(dna_datasets.SYSTEM_DIR)
needs_predictnls = pytest.mark.skipif(
    not (PREDICTNLS / "allProt.fasta").is_file(),
    reason=f"needs Debian predictnls ({protein_datasets.INSTALL_COMMAND})",
)
needs_microbiomeutil = pytest.mark.skipif(
    not (MICROBIOMEUTIL / "rRNA16S.gold.fasta").is_file(),
    reason=f"needs Debian microbiomeutil-data ({dna_datasets.INSTALL_COMMAND})",
)


@pytest.fixture(autouse=True)
def no_data_env(monkeypatch):
    monkeypatch.delenv("SELFSUP_DATA", raising=False)


def genes_source(labels=(0, 0, 1, 1), groups=None) -> SequenceSource:
    sequences = ["ACGTACGTAA", "TTTTGGGGCCCCAAAA", "ACNNACGT", "GATTACA"][: len(labels)]
    return SequenceSource([f"g{i}" for i in range(len(labels))], sequences, "dna",
                          torch.tensor(labels), ["one", "two"], groups, "toy")


# ---------------------------------------------------------------- the source


def test_source_items_subset_counts_and_encoding():
    source = genes_source()
    assert len(source) == 4 and source.num_classes == 2 and source[2] == ("g2", "ACNNACGT", 1)
    part = source.subset([3, 0])
    assert part.ids == ["g3", "g0"] and part.labels.tolist() == [1, 0]
    assert part.classes == ["one", "two"]
    assert source.class_counts() == {"one": 2, "two": 2}
    assert source.lengths.tolist() == [10, 16, 8, 7]
    batch = source.encode([1, 3], DnaTokenizer())
    assert DnaTokenizer().decode_batch(batch.ids) == [source.sequences[1], source.sequences[3]]


def test_source_validation():
    with pytest.raises(DataError, match="empty"):
        SequenceSource([], [], "dna")
    with pytest.raises(DataError, match="2 ids for 1 sequences"):
        SequenceSource(["a", "b"], ["AC"], "dna")
    with pytest.raises(DataError, match="labels of shape"):
        SequenceSource(["a"], ["AC"], "dna", torch.tensor([0, 1]))


# ---------------------------------------------------------------- group splits


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 15)), min_size=2, max_size=80))
def test_group_split_keeps_groups_whole_and_is_order_free(pairs):
    labels = torch.tensor([label for label, _ in pairs])
    groups = [f"family{group}" for _, group in pairs]
    train, test = stratified_group_split(labels, groups, 0.25)
    assert sorted(train.tolist() + test.tolist()) == list(range(len(pairs)))
    assert not {groups[i] for i in train} & {groups[i] for i in test}
    # the same records in reverse order land on the same sides
    train_r, test_r = stratified_group_split(labels.flip(0), groups[::-1], 0.25)
    assert sorted(len(pairs) - 1 - i for i in test_r.tolist()) == test.tolist()


def test_group_split_hits_the_share_per_class_with_small_groups():
    labels = torch.tensor([0] * 600 + [1] * 200)
    groups = [f"g{i // 2}" for i in range(800)]  # pairs of records
    train, test = stratified_group_split(labels, groups, 0.2)
    for label, size in ((0, 600), (1, 200)):
        in_test = int((labels[test] == label).sum())
        assert abs(in_test - 0.2 * size) <= 2  # within one group of the target


def test_group_split_keeps_a_class_of_one_group_in_train():
    labels = torch.tensor([0] * 10 + [1] * 3)
    groups = [f"g{i}" for i in range(10)] + ["only"] * 3
    train, test = stratified_group_split(labels, groups, 0.3)
    assert set(range(10, 13)) <= set(train.tolist())


# ---------------------------------------------------------------- reads


def read_window(read_id: str, genes: SequenceSource) -> str:
    """The forward-strand window a read id names: gene/start-end±."""
    gene, span = read_id.rsplit("/", 1)
    start, end = (int(x) for x in span[:-1].split("-"))
    return genes.sequences[genes.ids.index(gene)][start - 1:end]


def test_error_free_reads_are_windows_of_their_gene_on_either_strand():
    genes = genes_source()
    reads = sample_reads(genes, read_length=6, reads_per_gene=50, error_rate=0.0, seed=1)
    assert len(reads) == 200 and reads.classes == genes.classes
    assert reads.labels.tolist() == [label for label in genes.labels.tolist() for _ in range(50)]
    assert reads.groups == [gene for gene in genes.ids for _ in range(50)]
    strands = Counter(read_id[-1] for read_id in reads.ids)
    assert strands["+"] > 60 and strands["-"] > 60
    for read_id, read in zip(reads.ids, reads.sequences):
        window = read_window(read_id, genes)
        assert len(read) == 6
        assert read == (window if read_id.endswith("+") else reverse_complement(window))


def test_reads_of_a_short_gene_are_the_whole_gene():
    genes = genes_source()
    reads = sample_reads(genes, read_length=12, reads_per_gene=4, error_rate=0.0)
    lengths = [len(read) for read in reads.sequences]
    assert lengths == [10] * 4 + [12] * 4 + [8] * 4 + [7] * 4


def test_read_errors_hit_bases_at_the_rate_and_never_n():
    genes = genes_source()
    noisy = sample_reads(genes, read_length=7, reads_per_gene=2000, error_rate=0.1, seed=3)
    mismatches = bases = 0
    for read_id, read in zip(noisy.ids, noisy.sequences):
        window = read_window(read_id, genes)
        true = window if read_id.endswith("+") else reverse_complement(window)
        for truth, letter in zip(true, read):
            if truth == "N":
                assert letter == "N"
            else:
                bases += 1
                mismatches += truth != letter
    assert abs(mismatches / bases - 0.1) < 5 * (0.1 * 0.9 / bases) ** 0.5


def test_reads_are_seeded():
    genes = genes_source()
    first, again, other = (sample_reads(genes, 5, 3, seed=seed) for seed in (4, 4, 5))
    assert first.sequences == again.sequences and first.ids == again.ids
    assert first.ids != other.ids
    with pytest.raises(ConfigError, match="error_rate"):
        sample_reads(genes, error_rate=2.0)


# ---------------------------------------------------------------- swissprot-loc files


def write_predictnls(folder: Path, proteins: str, locations: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "allProt.fasta").write_text(proteins)
    (folder / "NewProtList").write_text(locations)
    return folder


def test_swissprot_loc_reads_its_two_files(tmp_path):
    proteins = "".join(f">p{i}_human\tMKV{'L' * i}\n>p{i}_mouse\tMKW\n" for i in range(10))
    locations = "".join(f"p{i}_human\tnuc\np{i}_mouse\tcyt\n" for i in range(10))
    folder = write_predictnls(tmp_path / "d", proteins, locations)
    everything = swissprot_loc("all", str(folder))
    assert len(everything) == 20 and everything.alphabet == "protein"
    assert everything.class_counts()["nucleus"] == everything.class_counts()["cytoplasm"] == 10
    assert everything.groups[:2] == ["p0", "p0"]  # one family per entry-name prefix
    train, test = swissprot_loc("train", str(folder)), swissprot_loc("test", str(folder))
    assert len(train) + len(test) == 20 and not set(train.groups) & set(test.groups)


@pytest.mark.parametrize("proteins, locations, expected", [
    (">a_x\tMK\n", "a_x\tzzz\n", "line 1: expected 'entry-name location-code'"),
    (">a_x\tMK\n>b_x\tMK\n", "a_x\tnuc\n", "protein 'b_x' has no location"),
    (">a_x\tMK\n", "a_x\tnuc\nb_x\tcyt\n", "lists 1 protein(s) missing"),
    (">a_x\tMK1\n", "a_x\tnuc\n", "invalid character '1' at position 3"),
])
def test_swissprot_loc_errors_name_the_problem(tmp_path, proteins, locations, expected):
    folder = write_predictnls(tmp_path / "bad", proteins, locations)
    with pytest.raises(DataError, match=re.escape(expected)):
        swissprot_loc("all", str(folder))


@pytest.mark.parametrize("module, factory", [
    (protein_datasets, swissprot_loc),
    (dna_datasets, sixteen_s_gold),
    (dna_datasets, sixteen_s_reads),
])
def test_missing_package_gives_the_install_command(tmp_path, monkeypatch, module, factory):
    monkeypatch.setattr(module, "SYSTEM_DIR", str(tmp_path / "not-installed"))
    with pytest.raises(DataError, match=re.escape(module.INSTALL_COMMAND)):
        factory("train")


def test_unknown_rank_and_split(tmp_path):
    (tmp_path / "rRNA16S.gold.fasta").write_text(">g1\tBacteria; P; C; O; F; G\nACGT\n")
    with pytest.raises(ConfigError, match="unknown rank 'kingdom'"):
        sixteen_s_gold("all", str(tmp_path), rank="kingdom")
    with pytest.raises(DataError, match="unknown split 'validation'"):
        sixteen_s_gold("validation", str(tmp_path))


def test_16s_headers_without_six_ranks_are_refused(tmp_path):
    (tmp_path / "rRNA16S.gold.fasta").write_text(">g1 some strain\tBacteria; Firmicutes\nACGT\n")
    with pytest.raises(DataError, match="record 'g1': expected its header to end in a tab and 6"):
        sixteen_s_gold("all", str(tmp_path))


# ---------------------------------------------------------------- the real data sets


def predictnls_location_counts() -> Counter:
    """Location codes counted straight from NewProtList."""
    lines = (PREDICTNLS / "NewProtList").read_text().splitlines()
    return Counter(line.split()[1] for line in lines)


def gold_taxa(rank_index: int) -> list[str]:
    """The rank_index-th taxon of every 16S gold header, read with a plain pattern."""
    text = (MICROBIOMEUTIL / "rRNA16S.gold.fasta").read_text()
    headers = re.findall(r"^>.*\t([^\t\n]*)$", text, re.M)
    return [header.split(";")[rank_index].strip() for header in headers]


@needs_predictnls
def test_swissprot_loc_matches_the_package_files():
    everything = load_split("swissprot-loc", "all")
    assert isinstance(everything, SequenceSource) and len(everything) == 9052
    counts = predictnls_location_counts()
    locations = protein_datasets.LOCATIONS
    assert everything.class_counts() == {name: counts[code] for code, name in locations.items()}
    assert everything.class_counts()["nucleus"] == 3142 and everything.class_counts()["Golgi"] == 15
    train, test = load_sequences("swissprot-loc", "train"), load_sequences("swissprot-loc", "test")
    assert (len(train), len(test)) == (7234, 1818)  # the sizes the module docstring states
    assert not set(train.groups) & set(test.groups)
    for name, total in everything.class_counts().items():
        assert abs(test.class_counts()[name] - 0.2 * total) <= max(2, 0.05 * total)


@needs_microbiomeutil
def test_16s_gold_matches_the_package_file():
    genes = sixteen_s_gold("all")
    phyla = Counter(gold_taxa(1))
    kept = {name: count for name, count in phyla.items() if count >= 20}
    assert genes.class_counts() == dict(sorted(kept.items()))
    assert len(genes) == 5075 and genes.num_classes == 11  # as the module docstring states
    train, test = sixteen_s_gold("train"), sixteen_s_gold("test")
    assert (len(train), len(test)) == (4059, 1016)
    assert not set(train.groups) & set(test.groups)
    genera = Counter(gold_taxa(5))
    genus = sixteen_s_gold("all", rank="genus")
    assert genus.num_classes == sum(count >= 20 for count in genera.values()) == 46


@needs_microbiomeutil
def test_16s_reads_never_cross_the_split():
    train, test = sixteen_s_reads("train"), sixteen_s_reads("test")
    assert len(train) == 10 * 4059 and len(test) == 10 * 1016
    genes_of = lambda reads: {read_id.rsplit("/", 1)[0] for read_id in reads.ids}  # noqa: E731
    assert not genes_of(train) & genes_of(test)
    assert not set(train.groups) & set(test.groups)
    assert {len(read) for read in train.sequences[:1000]} == {150}


def test_installed_package_path_reads_pip_metadata_and_names_a_place_when_missing():
    import sysconfig

    from selfsup.data.sequences import installed_package_path

    # pytest is installed in this environment: its own module file is where its metadata says
    assert installed_package_path("pytest", "pytest/__init__.py").is_file()
    missing = installed_package_path("no-such-package-xyz", "nowhere/data")
    assert missing == Path(sysconfig.get_paths()["purelib"]) / "nowhere/data"
