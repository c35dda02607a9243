"""Plain-text and CSV/TSV files as data sets: columns, labels, alphabets, splits and named errors."""

from __future__ import annotations

import csv
import gzip
import random

import pytest
from conftest import TINY_MLM

from selfsup.data import load_split
from selfsup.data.table_files import is_table_file, is_text_file
from selfsup.errors import ConfigError, DataError

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"


def write(path, text, compress=False):
    if compress:
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


def random_protein(rng, length=20):
    return "".join(rng.choice(AMINO_ACIDS) for _ in range(length))


def test_file_names_that_count_as_text_or_table_files(tmp_path):
    for name in ("a.txt", "a.TXT.gz"):
        assert is_text_file(tmp_path / name) and not is_table_file(tmp_path / name), name
    for name in ("a.csv", "a.tsv", "b.CSV.gz", "x.y.tsv.gz"):
        assert is_table_file(tmp_path / name) and not is_text_file(tmp_path / name), name
    for name in ("a.fasta", "a.tab", "a.gz", "csv", "a.npz"):
        assert not is_table_file(tmp_path / name) and not is_text_file(tmp_path / name), name


# ------------------------------------------------------------------------------ plain text


@pytest.mark.parametrize("compress", [False, True])
def test_a_text_file_is_one_unlabelled_text_per_line_blank_lines_skipped(tmp_path, compress):
    path = write(tmp_path / ("notes.txt.gz" if compress else "notes.txt"),
                 "The first text, with Capitals.\n\n   \n  second: naïve café  \nthird\n", compress)
    source = load_split(path, "all")
    assert source.alphabet == "text" and source.labels is None
    assert source.sequences == ["The first text, with Capitals.", "second: naïve café", "third"]
    assert len(set(source.ids)) == 3


def test_a_text_file_holds_out_one_percent_and_keeps_repeated_lines_together(tmp_path):
    rng = random.Random(0)
    texts = [f"text number {rng.randrange(150)}" for _ in range(600)]  # about 4 copies of each
    path = write(tmp_path / "many.txt", "\n".join(texts) + "\n")
    train, test = (load_split(path, split) for split in ("train", "test"))
    assert len(train) + len(test) == 600
    assert 1 <= len(test) <= 0.03 * 600
    assert set(train.sequences).isdisjoint(test.sequences)  # no text on both sides


def test_a_text_file_of_sequences_takes_the_alphabet_option(tmp_path):
    path = write(tmp_path / "reads.txt", "acgtn\nACGRY\n")
    source = load_split(path, "all", options={"alphabet": "dna"})
    assert source.alphabet == "dna" and source.sequences == ["ACGTN", "ACGNN"]


def test_only_the_byte_order_mark_that_opens_the_file_is_dropped(tmp_path):
    # a spreadsheet's BOM starts the file; U+FEFF starting a later line is a character of the text
    path = write(tmp_path / "notes.txt", "\ufefffirst note\n\ufeffsecond note\n")
    assert load_split(path, "all").sequences == ["first note", "\ufeffsecond note"]


def test_an_empty_text_file_is_named(tmp_path):
    path = write(tmp_path / "blank.txt", "\n  \n")
    with pytest.raises(DataError, match=r"blank\.txt: the file holds no text"):
        load_split(path, "train")


# ------------------------------------------------------------------------------ tables


def test_a_labelled_protein_csv_with_quotes_and_a_byte_order_mark(tmp_path):
    text = ("\ufeffsequence,name,label\r\n"  # as spreadsheet programs write it: BOM, CRLF
            'MKVla,p1,"membrane, outer"\r\n'
            "\r\n"
            "ACDEF,p2,cytoplasm\r\n"
            '"GHIKL",p3,cytoplasm\r\n')
    source = load_split(write(tmp_path / "proteins.csv", text), "all")
    assert source.alphabet == "protein"
    assert source.sequences == ["MKVLA", "ACDEF", "GHIKL"]
    assert source.classes == ["cytoplasm", "membrane, outer"]
    assert source.labels.tolist() == [1, 0, 0]


def test_a_gzipped_tsv_of_texts_is_read_as_text_with_its_quotes_kept(tmp_path):
    text = 'sequence\tlabel\n"best" film ever\tpos\na dull film\tneg\n'
    source = load_split(write(tmp_path / "reviews.tsv.gz", text, compress=True), "all")
    assert source.alphabet == "text"  # white space inside a field: words, not residues
    assert source.sequences == ['"best" film ever', "a dull film"]
    assert source.classes == ["neg", "pos"] and source.labels.tolist() == [1, 0]


def test_nucleotide_columns_are_read_as_dna(tmp_path):
    source = load_split(write(tmp_path / "reads.csv", "sequence\nacgtRY\nACGU\n"), "all")
    assert source.alphabet == "dna" and source.sequences == ["ACGTNN", "ACGT"]
    assert source.labels is None


def test_a_genome_length_field_reads_and_csv_keeps_the_callers_field_limit(tmp_path):
    limit = csv.field_size_limit()
    genome = "".join(random.Random(0).choice("ACGT") for _ in range(2 * limit))
    text = f'sequence,label\n"{genome}",phage\nACGTAC,plasmid\n'
    source = load_split(write(tmp_path / "genomes.csv", text), "all")
    assert source.sequences == [genome, "ACGTAC"] and source.classes == ["phage", "plasmid"]
    assert csv.field_size_limit() == limit  # the reader's raised limit is not left behind


def test_columns_are_chosen_by_the_options(tmp_path):
    text = "id\tseq\tlocation\tlabel\na\tMKVLE\tnucleus\tignored\nb\tACDEF\tcytoplasm\tignored\n"
    path = write(tmp_path / "proteins.tsv", text)
    source = load_split(path, "all", options={"sequence_column": "seq", "label_column": "location"})
    assert source.sequences == ["MKVLE", "ACDEF"]
    assert source.classes == ["cytoplasm", "nucleus"] and source.labels.tolist() == [1, 0]
    as_text = load_split(path, "all", options={"sequence_column": "seq", "alphabet": "text"})
    assert as_text.alphabet == "text" and as_text.classes == ["ignored"]


def test_labelled_tables_hold_out_a_fifth_of_each_class_and_unlabelled_ones_one_percent(tmp_path):
    rng = random.Random(0)
    rows = [(random_protein(rng), "common" if i % 4 else "rare") for i in range(400)]
    labelled = write(tmp_path / "labelled.csv",
                     "sequence,label\n" + "".join(f"{s},{label}\n" for s, label in rows))
    train, test = (load_split(labelled, split) for split in ("train", "test"))
    assert len(train) + len(test) == 400
    assert test.class_counts() == pytest.approx({"common": 60, "rare": 20}, abs=2)
    assert set(train.sequences).isdisjoint(test.sequences)
    unlabelled = write(tmp_path / "unlabelled.csv", "sequence\n" + "".join(f"{s}\n" for s, _ in rows))
    assert 1 <= len(load_split(unlabelled, "test")) <= 8


def test_a_split_column_is_kept_as_the_tables_own_split(tmp_path):
    # rows 1-3 train, 4-5 test, whatever the hash split would have said; the classes come from
    # every row, so a label means the same class on both sides
    rows = [("MKVLA", "nucleus", "train"), ("GGSWR", "cytoplasm", "TRAIN"),
            ("MKVLA", "cytoplasm", "train"), ("PPLQW", "nucleus", "test"),
            ("AAAAC", "membrane", "Test")]
    text = "sequence,label,split\n" + "".join(f"{s},{l},{p}\n" for s, l, p in rows)
    path = write(tmp_path / "official.csv", text)
    train, test, every = (load_split(path, split) for split in ("train", "test", "all"))
    assert train.sequences == ["MKVLA", "GGSWR", "MKVLA"]
    assert test.sequences == ["PPLQW", "AAAAC"]
    assert train.classes == test.classes == ["cytoplasm", "membrane", "nucleus"]
    assert test.labels.tolist() == [2, 1]
    assert len(every) == 5
    # another column name, by option; the default column is then an ordinary column
    text = "sequence,label,fold\n" + "".join(f"{s},{l},{p}\n" for s, l, p in rows)
    other = write(tmp_path / "fold.csv", text)
    options = {"split_column": "fold"}
    assert load_split(other, "test", options=options).sequences == ["PPLQW", "AAAAC"]


def test_a_bad_or_one_sided_split_column_is_named(tmp_path):
    bad = write(tmp_path / "bad.csv", "sequence,split\nMKVLA,train\nGGSWR,validation\n")
    with pytest.raises(DataError, match=r"bad.csv, line 3: row 2 has 'validation' in the split "
                                        r"column 'split'; write train or test"):
        load_split(bad, "train")
    one_sided = write(tmp_path / "train-only.csv", "sequence,split\nMKVLA,train\nGGSWR,train\n")
    assert len(load_split(one_sided, "train")) == 2
    with pytest.raises(DataError, match="no row has 'test' in its split column"):
        load_split(one_sided, "test")
    with pytest.raises(DataError, match="no column 'fold'"):
        load_split(one_sided, "train", options={"split_column": "fold"})


def test_a_table_trains_an_mlm_encoder_on_its_train_split(tmp_path):
    import json

    from selfsup.run_config import load_config
    from selfsup.train import Trainer

    rng = random.Random(1)
    path = write(tmp_path / "proteins.csv",
                 "sequence,label\n" + "".join(f"{random_protein(rng, 30)},c{i % 3}\n" for i in range(90)))
    config = load_config(None, TINY_MLM + [f"data.dataset={path}", f"out={tmp_path / 'run'}",
                                           "train.batch_size=16"])
    run_dir = Trainer(config).fit()
    start = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert start["num_train"] == len(load_split(path, "train")) == 72  # 20 % of each class held out
    spec = json.loads((run_dir / "encoder.json").read_text())
    assert spec["tokenizer"]["name"] == "protein"


# ------------------------------------------------------------------------------ named errors


def test_a_missing_column_lists_the_columns_found(tmp_path):
    path = write(tmp_path / "t.csv", "seq,class\nMKV,a\n")
    with pytest.raises(DataError, match=r"t\.csv: no column 'sequence'.*'seq', 'class'"):
        load_split(path, "all")
    with pytest.raises(DataError, match=r"no column 'location' \(data\.options\.label_column\)"):
        load_split(path, "all", options={"sequence_column": "seq", "label_column": "location"})


def test_an_empty_table_and_a_header_without_rows_are_named(tmp_path):
    with pytest.raises(DataError, match=r"empty\.csv: the file is empty"):
        load_split(write(tmp_path / "empty.csv", ""), "all")
    with pytest.raises(DataError, match=r"header\.tsv: the file holds a header row but no records"):
        load_split(write(tmp_path / "header.tsv", "sequence\tlabel\n\n"), "all")


def test_a_row_with_the_wrong_number_of_fields_names_the_file_and_line(tmp_path):
    path = write(tmp_path / "wide.csv", "sequence,label\nMKV,a\n\nACD,b,extra\n")
    with pytest.raises(DataError, match=r"wide\.csv, line 4: 3 field\(s\) where the header names 2"):
        load_split(path, "all")


def test_an_invalid_character_names_the_file_row_and_position(tmp_path):
    path = write(tmp_path / "bad.csv", "sequence,label\nMKVL,a\nMKJL,b\n")
    with pytest.raises(DataError, match=r"bad\.csv, line 3: record 'row-2'.*'J' at position 3"):
        load_split(path, "all")
    with pytest.raises(DataError, match=r"'L' at position 4.*allowed: ACGTN"):
        load_split(path, "all", options={"alphabet": "dna"})


def test_a_guessed_alphabet_says_how_to_set_it(tmp_path):
    rows = "".join(f"{random_protein(random.Random(i))}\n" for i in range(100)) + "MKV 1\n"
    path = write(tmp_path / "late.csv", "sequence\n" + rows)
    with pytest.raises(DataError, match=r"line 102: record 'row-101'.*guessed.*data\.options\.alphabet"):
        load_split(path, "all")


def test_empty_fields_are_named(tmp_path):
    with pytest.raises(DataError, match=r"line 3: row 2 has an empty 'sequence'"):
        load_split(write(tmp_path / "a.csv", "sequence,label\nMKV,a\n ,b\n"), "all")
    with pytest.raises(DataError, match=r"line 2: row 1 has an empty 'label'"):
        load_split(write(tmp_path / "b.csv", "sequence,label\nMKV,\n"), "all")


def test_undecodable_bytes_and_missing_files_are_named(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("fine\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt, line 2: not UTF-8"):
        load_split(str(path), "all")
    for name in ("absent.csv", "absent.txt", "absent.fasta"):  # not os.stat's FileNotFoundError
        with pytest.raises(DataError, match=rf"{name}: no such file"):
            load_split(str(tmp_path / name), "train")


def test_a_truncated_gzip_file_is_named(tmp_path):
    rng = random.Random(0)
    whole = gzip.compress("".join(f"{random_protein(rng)}\n" for _ in range(2000)).encode())
    path = tmp_path / "cut.txt.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"cut\.txt\.gz: the gzip stream is damaged or truncated"):
        load_split(str(path), "all", options={"alphabet": "protein"})


def test_bad_options_are_named(tmp_path):
    table = write(tmp_path / "t.csv", "sequence\nMKV\nACD\n")
    with pytest.raises(ConfigError, match="alphabet='rna'.*protein, dna, text"):
        load_split(table, "all", options={"alphabet": "rna"})
    with pytest.raises(ConfigError, match="CSV/TSV file takes the data options .* not rank"):
        load_split(table, "all", options={"rank": "genus"})
    with pytest.raises(ConfigError, match="text file takes the data options alphabet, not label_column"):
        load_split(write(tmp_path / "t.txt", "a text\n"), "all", options={"label_column": "x"})
