"""Tests of the FASTA/FASTQ readers, the FASTA writer and the cached BLAST database dump."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import pytest

from selfsup.data import fasta
from selfsup.data.fasta import (
    SequenceRecord, cache_dir, dump_blast_db, read_fasta, read_fastq, read_sequences, write_fasta,
)
from selfsup.errors import DataError
from selfsup.tokenize.alphabets import DNA_LETTERS, PROTEIN_LETTERS

GOOD_FASTA = """>sp1 first protein; human
MKVLA
agtw

>sp2\tsecond\tprotein
WWC
"""
GOOD_FASTQ = """@read1 lane 1
ACGTN
+
IIII#
@read2
ggcc
+read2
!!~~
"""


def write(tmp_path: Path, name: str, text: str, gzipped: bool = False) -> Path:
    path = tmp_path / name
    data = text.encode()
    path.write_bytes(gzip.compress(data) if gzipped else data)
    return path


def error_of(call) -> str:
    with pytest.raises(DataError) as error:
        list(call())
    return str(error.value)


# ---------------------------------------------------------------- FASTA


@pytest.mark.parametrize("gzipped", [False, True])
def test_fasta_records_plain_and_gzipped(tmp_path, gzipped):
    # the gzipped file is named .fa on purpose: gzip is recognised by content, not by name
    path = write(tmp_path, "proteins.fa", GOOD_FASTA, gzipped)
    records = list(read_fasta(path, PROTEIN_LETTERS))
    assert records == [
        SequenceRecord("sp1", "first protein; human", "MKVLAagtw"),
        SequenceRecord("sp2", "second\tprotein", "WWC"),
    ]


def test_fasta_with_windows_line_ends(tmp_path):
    path = write(tmp_path, "crlf.fa", GOOD_FASTA.replace("\n", "\r\n"))
    assert [r.sequence for r in read_fasta(path)] == ["MKVLAagtw", "WWC"]


def test_fasta_streams_records_before_reaching_a_bad_one(tmp_path):
    path = write(tmp_path, "late.fa", ">a\nACGT\n>b\nAC!T\n")
    records = read_fasta(path, DNA_LETTERS)
    assert next(records).id == "a"  # the first record arrives before the bad one is read
    with pytest.raises(DataError, match="'b'"):
        next(records)


def test_tab_separated_fasta(tmp_path):
    path = write(tmp_path, "allProt.fasta", ">abp1_arath\tMIVL\n>acca_antsp\tmitq\n")
    records = list(read_fasta(path, PROTEIN_LETTERS, tab_separated=True))
    assert [(r.id, r.sequence) for r in records] == [("abp1_arath", "MIVL"), ("acca_antsp", "mitq")]
    two_lines = write(tmp_path, "two.fa", ">a\tMK\nLL\n")
    message = error_of(lambda: read_fasta(two_lines, tab_separated=True))
    assert "line 2" in message and "second line for record 'a'" in message


def test_missing_file_is_reported_at_the_call(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_fasta(tmp_path / "absent.fa")  # no iteration needed
    with pytest.raises(DataError, match="no such file"):
        read_fastq(tmp_path / "absent.fq")


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_empty_file(tmp_path, text):
    path = write(tmp_path, "empty.fa", text)
    assert "holds no FASTA records" in error_of(lambda: read_fasta(path))
    assert str(path) in error_of(lambda: read_fasta(path))


def test_empty_record_names_record_and_line(tmp_path):
    path = write(tmp_path, "hole.fa", ">a\nACGT\n>b\n\n>c\nAC\n")
    message = error_of(lambda: read_fasta(path))
    assert f"{path}, line 3: record 'b' (number 2) has an empty sequence" in message


def test_invalid_character_names_file_line_record_and_position(tmp_path):
    # the bad letter is on the record's second sequence line: position counts the whole sequence
    path = write(tmp_path, "bad.fa", ">ok\nACGT\n>r2 some text\nACGTA\nCCJA\n")
    message = error_of(lambda: read_fasta(path, DNA_LETTERS))
    assert f"{path}, line 5: record 'r2': invalid character 'J' at position 8" in message


def test_text_before_the_first_header(tmp_path):
    message = error_of(lambda: read_fasta(write(tmp_path, "nohead.fa", "ACGT\n>a\nAC\n")))
    assert "line 1: text before the first FASTA header" in message


def test_truncated_gzip(tmp_path):
    whole = gzip.compress((">a\n" + "ACGT" * 5000 + "\n").encode())
    path = tmp_path / "cut.fa.gz"
    path.write_bytes(whole[: len(whole) // 2])
    assert "gzip stream is damaged or truncated" in error_of(lambda: read_fasta(path))


def test_binary_file(tmp_path):
    path = tmp_path / "binary.fa"
    path.write_bytes(b">a\nAC\xff\xfeGT\n")
    assert "binary.fa, line 2: not ASCII text (byte 0xff at byte 3" in error_of(lambda: read_fasta(path))


# ---------------------------------------------------------------- FASTQ


@pytest.mark.parametrize("gzipped", [False, True])
def test_fastq_records(tmp_path, gzipped):
    path = write(tmp_path, "reads.fq", GOOD_FASTQ, gzipped)
    assert list(read_fastq(path, DNA_LETTERS)) == [
        SequenceRecord("read1", "lane 1", "ACGTN", "IIII#"),
        SequenceRecord("read2", "", "ggcc", "!!~~"),
    ]


def test_read_sequences_picks_the_format(tmp_path):
    fastq, fasta_file = write(tmp_path, "x.txt", GOOD_FASTQ), write(tmp_path, "y.txt", GOOD_FASTA)
    assert [r.id for r in read_sequences(fastq)] == ["read1", "read2"]
    assert [r.id for r in read_sequences(fasta_file)] == ["sp1", "sp2"]


@pytest.mark.parametrize("text, expected", [
    ("@r1\nACGT\n+\nIII\n",
     "record 'r1' (number 1, line 1): the quality on line 4 has 3 characters but the sequence "
     "has 4"),
    ("@r1\nACGT\n+\nIIII\n@r2\nACGT\n",
     "record 'r2' (number 2, line 5): the file ends after 2 of the record's 4 lines"),
    ("@r1\nACGT\nIIII\n@r2\n", "line 3 should be the '+' separator"),
    ("@r1\nAC T\n+\nIIII\n", "record 'r1': invalid character ' ' at position 3"),
    ("@r1\nACGT\n+\nII I\n", "invalid quality character ' ' at position 3 on line 4"),
    ("r1\nACGT\n+\nIIII\n", "line 1: expected a FASTQ header starting with '@'"),
    ("@r1\n\n+\n\n", "empty sequence on line 2"),
    ("", "holds no FASTQ records"),
])
def test_fastq_errors(tmp_path, text, expected):
    path = write(tmp_path, "bad.fq", text)
    message = error_of(lambda: read_fastq(path, DNA_LETTERS))
    assert expected in message and str(path) in message


# ---------------------------------------------------------------- writing


def test_write_fasta_round_trip_and_line_width(tmp_path):
    records = [SequenceRecord("a", "alpha one", "ACGT" * 5), SequenceRecord("b", "", "GG")]
    path = write_fasta(records, tmp_path / "out" / "x.fa", line_width=8)
    lines = path.read_text().splitlines()
    assert lines[:4] == [">a alpha one", "ACGTACGT", "ACGTACGT", "ACGT"]
    assert list(read_fasta(path)) == records
    assert [p.name for p in path.parent.iterdir()] == ["x.fa"]  # no temporary file left


def test_write_fasta_leaves_the_old_file_when_writing_fails(tmp_path):
    path = write(tmp_path, "keep.fa", ">old\nAC\n")

    def records():
        yield SequenceRecord("new", "", "GG")
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError):
        write_fasta(records(), path)
    assert path.read_text() == ">old\nAC\n" and [p.name for p in tmp_path.iterdir()] == ["keep.fa"]


# ---------------------------------------------------------------- BLAST databases

needs_blast = pytest.mark.skipif(
    shutil.which("makeblastdb") is None or shutil.which("blastdbcmd") is None,
    reason="needs ncbi-blast+ (sudo apt-get install --no-install-recommends ncbi-blast+)",
)


def make_blast_db(tmp_path: Path) -> tuple[Path, list[SequenceRecord]]:
    records = [SequenceRecord("seq1", "first", "ACGTACGTTTGACCA" * 7),
               SequenceRecord("seq2", "", "GGGCCCAAATTT")]
    source = write_fasta(records, tmp_path / "source.fa")
    db = tmp_path / "db" / "tiny"
    subprocess.run(["makeblastdb", "-in", str(source), "-dbtype", "nucl", "-out", str(db)],
                   check=True, capture_output=True)
    return db, records


@needs_blast
def test_blast_dump_is_cached(tmp_path, monkeypatch):
    db, records = make_blast_db(tmp_path)
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    dumped = dump_blast_db(db)
    assert dumped.parent == tmp_path / "cache" / "blast" and dumped.name.startswith("tiny-")
    assert [(r.id, r.sequence) for r in read_fasta(dumped)] == [(r.id, r.sequence) for r in records]

    def must_not_run(*args, **kwargs):
        raise AssertionError("the cached dump should be reused")

    monkeypatch.setattr(fasta.subprocess, "run", must_not_run)
    assert dump_blast_db(db) == dumped
    with pytest.raises(AssertionError, match="reused"):
        dump_blast_db(db, refresh=True)


def test_blast_dump_of_a_missing_database_names_the_install_command(tmp_path):
    with pytest.raises(DataError, match="apt-get install --no-install-recommends ncbi-rrna-data"):
        dump_blast_db(tmp_path / "nowhere" / "16S",
                      install_hint="sudo apt-get install --no-install-recommends ncbi-rrna-data")


def test_blast_dump_without_blastdbcmd_names_the_install_command(tmp_path):
    (tmp_path / "tiny.nin").write_bytes(b"")
    with pytest.raises(DataError, match="apt-get install --no-install-recommends ncbi-blast\\+"):
        dump_blast_db(tmp_path / "tiny", cache=tmp_path, blastdbcmd="no-such-blastdbcmd")


@needs_blast
def test_blast_dump_failure_leaves_no_file(tmp_path):
    (tmp_path / "broken.nin").write_bytes(b"not a database")
    with pytest.raises(DataError, match="blastdbcmd could not dump"):
        dump_blast_db(tmp_path / "broken", cache=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("SELFSUP_CACHE")
    assert cache_dir() == Path("~/.cache/selfsup").expanduser()
