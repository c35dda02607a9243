"""`selfsup embed` ties every embedding to its item: ids and labels in .parquet, .csv or beside a
.npy, the same features in all three (issue 20)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from method_helpers import save_image_run, save_token_run
from selfsup.apps.embeddings import embed_run, ids_file
from selfsup.cli import main
from selfsup.data import load_split
from selfsup.errors import ConfigError


def _read_tsv(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle, delimiter="\t"))


def test_the_three_formats_hold_the_same_rows_with_ids_and_labels(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    run = tmp_path / "run"
    save_image_run(run)
    npy = embed_run(run, None, "test", tmp_path / "e.npy", device="cpu")
    embed_run(run, None, "test", tmp_path / "e.csv", device="cpu")
    embed_run(run, None, "test", tmp_path / "e.parquet", device="cpu")
    test = load_split("digits", "test")

    ids = _read_tsv(ids_file(tmp_path / "e.npy"))
    assert ids[0] == ["id", "label"] and len(ids) == len(test) + 1
    assert [int(label) for _, label in ids[1:]] == test.labels.tolist()
    table = pq.read_table(tmp_path / "e.parquet")
    assert table.column_names == ["id", "label", "embedding"]
    assert table.column("id").to_pylist() == [row[0] for row in ids[1:]]
    np.testing.assert_array_equal(np.array(table.column("embedding").to_pylist(), np.float32), npy)
    with open(tmp_path / "e.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][:3] == ["id", "label", "f0"] and len(rows[0]) == 2 + npy.shape[1]
    np.testing.assert_allclose(np.array([r[2:] for r in rows[1:]], np.float32), npy, rtol=1e-6)

    # an id names the item: digits:ROW is the row of the whole set the image came from
    whole = load_split("digits", "all")
    rows_of = [int(item.split(":")[1]) for item, _ in ids[1:]]
    assert torch.equal(whole.images[rows_of], test.images)


def test_images_of_a_folder_are_known_by_their_paths(tmp_path):
    for label, shade in (("cat", 40), ("dog", 200)):
        (tmp_path / "pets" / label).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (8, 8), shade + i).save(tmp_path / "pets" / label / f"{i}.png")
    run = tmp_path / "run"
    save_image_run(run)
    embed_run(run, str(tmp_path / "pets"), "all", tmp_path / "pets.npy", device="cpu")
    ids = _read_tsv(ids_file(tmp_path / "pets.npy"))[1:]
    assert sorted(item for item, _ in ids) == sorted(
        str(tmp_path / "pets" / label / f"{i}.png") for label in ("cat", "dog") for i in range(3))
    assert all((label == "0") == ("/cat/" in item) for item, label in ids)


def test_sequences_are_known_by_their_record_ids_and_unlabelled_data_have_no_label(tmp_path):
    fasta = tmp_path / "proteins.fasta"
    fasta.write_text("".join(f">prot_{i} a protein\nMKV{'ACDEFGHIK'[i]}LLA\n" for i in range(6)))
    run = tmp_path / "run"
    save_token_run(run, dataset=str(fasta))
    embed_run(run, None, "all", tmp_path / "p.csv", device="cpu")
    with open(tmp_path / "p.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][:2] == ["id", "f0"]  # no label column
    assert sorted(row[0] for row in rows[1:]) == [f"prot_{i}" for i in range(6)]


def test_an_unknown_format_is_refused_before_any_encoding(tmp_path, monkeypatch):
    run = tmp_path / "run"
    save_image_run(run)
    monkeypatch.setattr("selfsup.apps.embeddings.load_encoder",
                        lambda *a, **k: pytest.fail("encoded before checking the name"))
    with pytest.raises(ConfigError, match=r"name a \.npy .*\.csv or \.parquet file"):
        embed_run(run, None, "test", tmp_path / "e.txt", device="cpu")


def test_the_command_line_says_where_the_ids_are(tmp_path, capsys):
    run = tmp_path / "run"
    save_image_run(run)
    assert main(["embed", str(run), "--out", str(tmp_path / "e.npy"), "--device", "cpu"]) == 0
    assert f"(ids in {tmp_path / 'e.ids.tsv'})" in capsys.readouterr().out


def test_subsets_keep_the_ids_of_the_rows_they_came_from():
    digits = load_split("digits", "all")
    part = digits.subset(torch.tensor([5, 2])).subset(torch.tensor([1]))
    assert part.item_ids() == ["digits:2"]


def test_per_token_embeddings_are_the_encoder_s_states_at_each_residue(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    sequences = ["MKVLA", "ACDEFGHIKL", "W"]
    fasta = tmp_path / "p.fasta"
    fasta.write_text("".join(f">p{i}\n{s}\n" for i, s in enumerate(sequences)))
    run = tmp_path / "run"
    encoder, tokenizer = save_token_run(run, dataset=str(fasta))
    stacked = embed_run(run, None, "all", tmp_path / "t.npz", device="cpu", per_token=True)
    embed_run(run, None, "all", tmp_path / "t.parquet", device="cpu", per_token=True)

    with np.load(tmp_path / "t.npz", allow_pickle=False) as archive:
        ids, offsets, tokens = list(archive["ids"]), archive["offsets"], archive["tokens"]
    assert "labels" not in archive.files
    np.testing.assert_array_equal(tokens, stacked)
    table = pq.read_table(tmp_path / "t.parquet")
    for i, name in enumerate(ids):
        sequence = sequences[int(name[1:])]
        mine = tokens[offsets[i]:offsets[i + 1]]
        assert mine.shape[0] == len(sequence)  # one vector per residue: no <cls>, <eos>, padding
        with torch.no_grad():  # the encoder on this sequence alone: its states at the residues
            batch = tokenizer.encode_batch([sequence])
            alone = encoder.forward_tokens(batch.ids, batch.attention_mask)[0, 1:1 + len(sequence)]
        np.testing.assert_allclose(mine, alone.numpy(), atol=1e-5, rtol=1e-5)
        row = table.column("id").to_pylist().index(name)
        np.testing.assert_array_equal(np.array(table.column("tokens")[row].as_py(), np.float32),
                                      mine)


def test_per_token_is_refused_for_image_runs_and_for_row_formats(tmp_path):
    run = tmp_path / "run"
    save_image_run(run)
    with pytest.raises(ConfigError, match="per-token embeddings are for sequence runs"):
        embed_run(run, None, "test", tmp_path / "t.npz", device="cpu", per_token=True)
    with pytest.raises(ConfigError, match=r"a \.parquet or \.npz file"):
        embed_run(run, None, "test", tmp_path / "t.csv", device="cpu", per_token=True)
