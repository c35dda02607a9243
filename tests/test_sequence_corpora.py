"""The pretraining corpora ``uniprot-go`` and ``16s-rrna``, read from real BLAST databases that
the tests build with ``makeblastdb`` (installed with ``ncbi-blast+`` by ``make test``)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from selfsup.data import load_split
from selfsup.errors import DataError

pytestmark = pytest.mark.skipif(
    shutil.which("makeblastdb") is None or shutil.which("blastdbcmd") is None,
    reason="needs ncbi-blast+ (sudo apt-get install ncbi-blast+, or make data)",
)


def make_blast_db(fasta_text: str, db: Path, kind: str) -> None:
    db.parent.mkdir(parents=True, exist_ok=True)
    source = db.parent / f"{db.name}.source.fa"
    source.write_text(fasta_text)
    subprocess.run(["makeblastdb", "-in", str(source), "-dbtype", kind, "-out", str(db)],
                   check=True, capture_output=True)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SELFSUP_DATA", raising=False)


def make_uniprot_go(root: Path, proteins_per_namespace: int = 120) -> dict[str, list[tuple]]:
    """MFO, BPO and CCO databases that overlap the way MetaStudent's do: the same accession in
    several namespaces, and different accessions with identical sequences."""
    alphabet = "ACDEFGHIKLMNPQRSTVWY"
    records: dict[str, list[tuple]] = {}
    for n, namespace in enumerate(("MFO", "BPO", "CCO")):
        # accessions n*40 … n*40+119: consecutive namespaces share 80 accessions
        rows = []
        for i in range(n * 40, n * 40 + proteins_per_namespace):
            sequence = "M" + "".join(alphabet[(i * 7 + j * j) % 20] for j in range(30 + i % 17))
            rows.append((f"Q{i:05d}", f"GO:{namespace}{i}", sequence))
        # a second accession for protein 3's sequence, seen first in BPO
        if namespace == "BPO":
            rows.append(("Z99999", "GO:dup", rows[0][2]))
        records[namespace] = rows
        text = "".join(f">{acc}|{go}\n{seq}\n" for acc, go, seq in rows)
        make_blast_db(text, root / namespace / "goasp.fasta", "prot")
    return records


def test_uniprot_go_keeps_each_distinct_sequence_once_under_its_first_accession(tmp_path):
    records = make_uniprot_go(tmp_path / "db")
    proteins = load_split("uniprot-go", "all", str(tmp_path / "db"))
    first_accession = {}
    for namespace in ("MFO", "BPO", "CCO"):
        for accession, _, sequence in records[namespace]:
            first_accession.setdefault(sequence, accession)
    assert sorted(proteins.sequences) == sorted(first_accession)
    assert dict(zip(proteins.sequences, proteins.ids)) == first_accession
    assert "Z99999" not in proteins.ids  # its sequence came first as Q00040 in MFO
    assert proteins.labels is None and proteins.alphabet == "protein"


def test_uniprot_go_splits_are_disjoint_and_cover_everything(tmp_path):
    make_uniprot_go(tmp_path / "db", proteins_per_namespace=300)
    data_dir = str(tmp_path / "db")
    train, test = (load_split("uniprot-go", split, data_dir) for split in ("train", "test"))
    assert set(train.ids).isdisjoint(test.ids)
    assert len(train) + len(test) == len(load_split("uniprot-go", "all", data_dir))
    assert 1 <= len(test) <= 0.03 * (len(train) + len(test))  # about 1 %


def test_uniprot_go_is_dumped_once_into_the_cache(tmp_path):
    make_uniprot_go(tmp_path / "db")
    load_split("uniprot-go", "all", str(tmp_path / "db"))
    dumps = sorted((tmp_path / "cache" / "blast").glob("*.fasta"))
    assert len(dumps) == 3
    times = [dump.stat().st_mtime_ns for dump in dumps]
    from selfsup.data.uniprot_go import dump_databases
    assert sorted(dump_databases(str(tmp_path / "db"))) == dumps
    assert [dump.stat().st_mtime_ns for dump in dumps] == times


def test_missing_uniprot_go_names_the_folders_and_the_install_command(tmp_path, monkeypatch):
    from selfsup.data import uniprot_go
    monkeypatch.setattr(uniprot_go, "SYSTEM_DIR", str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()  # a --data-dir that exists but lacks the files
    with pytest.raises(DataError, match=r"(?s)MFO/goasp.fasta.psq.*empty.*nowhere.*metastudent-data"):
        load_split("uniprot-go", "train", str(tmp_path / "empty"))


def test_16s_rrna_numbers_repeated_ids_and_maps_ambiguity_codes_to_n(tmp_path):
    text = (">gb|AB1| Uncultured bacterium 16S rRNA gene\nACGTRYACGT\n"
            ">gb|AB1| Uncultured bacterium 16S rRNA gene, second operon\nACGTAAAACC\n"
            ">gi|9:1-5 Myctophum affine [R=SSU]\nacgtnacgtt\n"
            ">gb|AY1| Puccinia physalidis 18S ribosomal RNA gene\nGGGGCCCCAA\n")
    make_blast_db(text, tmp_path / "db" / "Combined16SrRNA", "nucl")
    genes = load_split("16s-rrna", "all", str(tmp_path / "db"))
    assert genes.ids == ["gb|AB1|", "gb|AB1|#2", "gi|9:1-5", "gb|AY1|"]
    assert genes.groups == ["gb|AB1|", "gb|AB1|", "gi|9:1-5", "gb|AY1|"]
    assert genes.sequences[:3] == ["ACGTNNACGT", "ACGTAAAACC", "ACGTNACGTT"]
    only_16s = load_split("16s-rrna", "all", str(tmp_path / "db"), {"only_16s": True})
    assert only_16s.ids == ["gb|AB1|", "gb|AB1|#2"]


def test_16s_rrna_keeps_the_genes_of_one_contig_on_one_side(tmp_path):
    genes = []
    for contig in range(150):
        for copy in range(1 + contig % 3):
            bases = "".join("ACGT"[(contig * 5 + copy + i * i) % 4] for i in range(40))
            genes.append(f">gb|C{contig}| 16S rRNA operon {copy}\n{bases}\n")
    make_blast_db("".join(genes), tmp_path / "db" / "Combined16SrRNA", "nucl")
    train, test = (load_split("16s-rrna", split, str(tmp_path / "db")) for split in ("train", "test"))
    assert len(test) >= 1
    assert set(train.groups).isdisjoint(test.groups)
