"""Plain-text and CSV/TSV files of the user's own as sequence data sets.

* ``--dataset notes.txt``: one text per line, blank lines skipped, unlabelled; alphabet ``text``
  (``data.options.alphabet`` may say ``protein`` or ``dna`` for a file of one sequence per line).
* ``--dataset table.csv`` or ``table.tsv``: a header row naming the columns, then one record per
  row. ``data.options.sequence_column`` (default ``sequence``) holds the sequences or texts and
  ``data.options.label_column`` the class names (default ``label``, used when the file has such a
  column); the data set is labelled when there is a label column. ``data.options.split_column``
  (default ``split``, used when the file has such a column) says which rows are ``train`` and
  which ``test``: a table that comes with its own split keeps it. CSV follows Excel's quoting (a
  field in double quotes may hold commas and line breaks); TSV fields are split at every tab, and
  quotes are kept as written.

Either may be gzipped (``.txt.gz``, ``.csv.gz``, ``.tsv.gz``); files are read as UTF-8, and the
byte-order mark that spreadsheet programs write is skipped.

The alphabet of a table is ``data.options.alphabet`` (``protein``, ``dna`` or ``text``) or guessed
from the first ``SNIFF_RECORDS`` sequences: ``text`` when one of them holds white space (no protein
or DNA sequence does), else as for FASTA (``sequence_files.guess_alphabet``). Protein and DNA
sequences are checked letter by letter with the FASTA reader's checker: a bad letter is an error
naming the file, line, row and position. DNA becomes upper-case A C G T N, protein upper case;
text is kept as written (the text tokeniser normalises it).

Train/test: a table's split column when it has one (each row ``train`` or ``test``, any case);
otherwise as the other file sources: a labelled table holds out ``LABELLED_TEST_FRACTION`` of each
class (like swissprot-loc), an unlabelled file ``sequence_files.TEST_FRACTION`` (for the held-out
losses of MLM and next-token runs). Records with the same sequence form one group and stay
on one side, so a repeated text is never in both; the split hashes sequences, not row numbers, so
adding rows leaves the other rows where they were.
"""

from __future__ import annotations

import contextlib
import csv
import functools
from pathlib import Path
from typing import Iterator, NamedTuple, Optional, Sequence

import torch

from selfsup.data.fasta import existing_file, letter_checker, numbered_lines
from selfsup.data.sequence_files import (ALPHABETS, SNIFF_RECORDS, TEST_FRACTION, data_suffix,
                                         guess_alphabet, normalise)
from selfsup.data.sequences import SequenceSource, file_version, split_indices
from selfsup.data.splits import check_split
from selfsup.errors import ConfigError, DataError

TEXT_SUFFIXES = (".txt",)
DELIMITERS = {".csv": ",", ".tsv": "\t"}
TEXT_FILE_OPTIONS = ("alphabet",)
TABLE_FILE_OPTIONS = ("sequence_column", "label_column", "split_column", "alphabet")
SEQUENCE_COLUMN = "sequence"
LABEL_COLUMN = "label"
SPLIT_COLUMN = "split"
SPLIT_VALUES = ("train", "test")  # what a split column may hold (any case)
LABELLED_TEST_FRACTION = 0.2  # as the labelled sequence data sets (swissprot-loc, 16s-gold)
# csv refuses fields over 128 KiB by default; a genome or a long document is one field here. The
# cap is what a C long holds on every platform (sys.maxsize overflows it on Windows).
FIELD_SIZE_LIMIT = 2**31 - 1
TABLE_ALPHABETS = {**ALPHABETS, "text": None}  # alphabet → letters allowed (None: any text)


class Row(NamedTuple):
    """One record of a text or table file: the line it ends on, its sequence, its label and the
    split the file puts it in (None: the file has no split column)."""

    line: int
    sequence: str
    label: Optional[str] = None
    split: Optional[str] = None


def is_text_file(path: Path) -> bool:
    """Whether ``path`` is named like a plain-text file, optionally ``.gz``."""
    return data_suffix(path) in TEXT_SUFFIXES


def is_table_file(path: Path) -> bool:
    """Whether ``path`` is named like a CSV or TSV file, optionally ``.gz``."""
    return data_suffix(path) in DELIMITERS


def load_text_file(path: Path, split: str, alphabet: str = "text") -> SequenceSource:
    """The ``split`` ("train", "test" or "all") of the lines of a text file (module docstring)."""
    check_split(split, str(path))
    _check_alphabet(alphabet)
    source = _load_text(file_version(existing_file(path)), alphabet)
    return source.subset(split_indices(source, split, TEST_FRACTION))


def load_table_file(path: Path, split: str, sequence_column: str = SEQUENCE_COLUMN,
                    label_column: Optional[str] = None, split_column: Optional[str] = None,
                    alphabet: Optional[str] = None) -> SequenceSource:
    """The ``split`` ("train", "test" or "all") of the rows of a CSV/TSV file (module docstring).

    ``label_column`` and ``split_column``: None takes the column ``label`` (``split``) when there
    is one; a name must exist. ``alphabet``: None guesses it from the first rows.
    """
    check_split(split, str(path))
    if alphabet is not None:
        _check_alphabet(alphabet)
    version = file_version(existing_file(path))
    source, splits = _load_table(version, sequence_column, label_column, split_column, alphabet)
    if splits is None:
        fraction = TEST_FRACTION if source.labels is None else LABELLED_TEST_FRACTION
        return source.subset(split_indices(source, split, fraction))
    if split == "all":
        return source
    indices = [index for index, name in enumerate(splits) if name == split]
    if not indices:
        raise DataError(f"{path}: no row has {split!r} in its split column; a table with a split "
                        f"column needs both {' and '.join(SPLIT_VALUES)} rows (or drop the column "
                        "and selfsup holds out a test split itself)")
    return source.subset(torch.tensor(indices))


def read_text_rows(path: Path) -> list[Row]:
    """The non-blank lines of a text file, stripped, as rows without labels."""
    rows = [Row(number, line.strip()) for number, line in numbered_lines(path, "utf-8-sig")
            if line.strip()]
    if not rows:
        raise DataError(f"{path}: the file holds no text (it is empty or blank)")
    return rows


def read_table(path: Path, delimiter: Optional[str] = None,
               columns: Sequence[str] = (SEQUENCE_COLUMN, LABEL_COLUMN)
               ) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, rows) of a CSV/TSV file, plain or gzipped, UTF-8: the first non-blank row's
    stripped column names, then (line number, fields) of every other non-blank row, fields as
    written. ``delimiter``: by default a tab for ``.tsv`` files and a comma otherwise;
    ``columns``: the caller's columns, the example header an empty file's error gives.

    A field may be of any length (a whole genome). An empty file and a row ``csv`` cannot parse
    are ``DataError``s naming the file (and line); a quote left open swallows the rows after it,
    which then fail the field count of :func:`read_table_rows`.
    """
    delimiter = delimiter or DELIMITERS.get(data_suffix(path), ",")
    # TSV has no quoting convention: a quote in a text is a character like any other
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    reader = csv.reader(_lines(path), delimiter=delimiter, quoting=quoting)
    try:
        with _field_size_limit(FIELD_SIZE_LIMIT):
            rows = [(reader.line_num, fields) for fields in reader if _filled(fields)]
    except csv.Error as error:
        raise DataError(f"{path}, line {reader.line_num}: not a valid row ({error})") from None
    if not rows:
        raise DataError(f"{path}: the file is empty; a table starts with a header row naming "
                        f"its columns (e.g. {delimiter.join(columns)})")
    return [name.strip() for name in rows[0][1]], rows[1:]


def read_table_rows(path: Path, sequence_column: str = SEQUENCE_COLUMN,
                    label_column: Optional[str] = None,
                    split_column: Optional[str] = None) -> list[Row]:
    """The rows of a CSV/TSV file: its sequence and (when there are such columns) label and split
    fields, the split in lower case.

    Named errors: those of :func:`read_table`, a missing column (listing the columns found), a
    row whose number of fields differs from the header's, an empty sequence, label or split, a
    split other than train or test (file and line each).
    """
    columns, table = read_table(path)
    sequence_index = _column(path, columns, sequence_column, "sequence_column")
    label_index = _optional_column(path, columns, label_column, LABEL_COLUMN, "label_column")
    split_index = _optional_column(path, columns, split_column, SPLIT_COLUMN, "split_column")
    rows: list[Row] = []
    for line, fields in table:
        where = f"{path}, line {line}"
        if len(fields) != len(columns):
            raise DataError(f"{where}: {len(fields)} field(s) where the header names "
                            f"{len(columns)} ({', '.join(columns)}); the row is damaged or a "
                            "field holds an unquoted separator")
        row = len(rows) + 1
        sequence = _field(fields, columns, sequence_index, where, row)
        label = None if label_index is None else _field(fields, columns, label_index, where, row)
        split = None
        if split_index is not None:
            split = _field(fields, columns, split_index, where, row).lower()
            if split not in SPLIT_VALUES:
                raise DataError(f"{where}: row {row} has {fields[split_index].strip()!r} in the "
                                f"split column {columns[split_index]!r}; write train or test")
        rows.append(Row(line, sequence, label, split))
    if not rows:
        raise DataError(f"{path}: the file holds a header row but no records")
    return rows


@contextlib.contextmanager
def _field_size_limit(limit: int) -> Iterator[None]:
    """csv's field size limit is process-wide: raise it for one read and put the caller's back."""
    previous = csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _filled(fields: list[str]) -> bool:
    """Whether a parsed row holds anything: blank lines (and rows of empty fields) are skipped."""
    return any(field.strip() for field in fields)


def _field(fields: list[str], columns: list[str], index: int, where: str, row: int) -> str:
    """The stripped field ``index`` of a row; empty is an error (an unlabelled or blank record)."""
    value = fields[index].strip()
    if not value:
        raise DataError(f"{where}: row {row} has an empty {columns[index]!r}; fill it in or "
                        "remove the row")
    return value


def _optional_column(path: Path, columns: list[str], name: Optional[str], default: str,
                     option: str) -> Optional[int]:
    """The index of column ``name`` (which must exist), or by default of column ``default`` when
    the file has one (else None)."""
    if name:
        return _column(path, columns, name, option)
    return columns.index(default) if default in columns else None


def _column(path: Path, columns: list[str], name: str, option: str) -> int:
    if name not in columns:
        raise DataError(f"{path}: no column {name!r} (data.options.{option}); the header names "
                        f"{', '.join(repr(column) for column in columns)}")
    return columns.index(name)


def _check_alphabet(alphabet: str) -> None:
    if alphabet not in TABLE_ALPHABETS:
        raise ConfigError(f"data.options.alphabet={alphabet!r}: choose "
                          f"{', '.join(TABLE_ALPHABETS)}")


def _lines(path: Path) -> Iterator[str]:
    """The lines of a UTF-8 file, plain or gzipped, ends kept (``fasta.numbered_lines``)."""
    return (line for _, line in numbered_lines(path, "utf-8-sig"))


@functools.lru_cache(maxsize=2)
def _load_text(version: tuple, alphabet: str) -> SequenceSource:
    """Every line of the file, cached per file version and alphabet: treat as read-only."""
    path = Path(version[0])
    return _source(path, read_text_rows(path), alphabet, guessed=False)


@functools.lru_cache(maxsize=2)
def _load_table(version: tuple, sequence_column: str, label_column: Optional[str],
                split_column: Optional[str], alphabet: Optional[str]
                ) -> tuple[SequenceSource, Optional[tuple[str, ...]]]:
    """Every row of the table and each row's split (None without a split column), cached per file
    version and options: treat as read-only."""
    path = Path(version[0])
    rows = read_table_rows(path, sequence_column, label_column, split_column)
    splits = None if rows[0].split is None else tuple(row.split for row in rows)
    if alphabet is not None:
        return _source(path, rows, alphabet, guessed=False), splits
    sample = [row.sequence for row in rows[:SNIFF_RECORDS]]
    # fields are stripped, so white space here is inside a sequence: words, not residues
    words = any(len(sequence.split()) > 1 for sequence in sample)
    guess = "text" if words else guess_alphabet(sample)
    return _source(path, rows, guess, guessed=True), splits


def _source(path: Path, rows: list[Row], alphabet: str, guessed: bool) -> SequenceSource:
    """Rows checked against ``alphabet`` (``guessed``: say so in the error) as a SequenceSource."""
    ids = [f"row-{number}" for number in range(1, len(rows) + 1)]
    check = letter_checker(TABLE_ALPHABETS[alphabet])
    try:
        for record_id, row in zip(ids, rows):
            check(path, row.line, record_id, row.sequence, 0)
    except DataError as error:
        if not guessed:
            raise
        raise DataError(f"{error}. The alphabet {alphabet} was guessed from the first "
                        f"{SNIFF_RECORDS} rows; set data.options.alphabet if the column holds "
                        f"another ({', '.join(TABLE_ALPHABETS)})") from None
    sequences = [normalise(row.sequence, alphabet) for row in rows]
    labels = classes = None
    if rows[0].label is not None:
        classes = sorted({row.label for row in rows})
        index = {name: position for position, name in enumerate(classes)}
        labels = [index[row.label] for row in rows]
    return SequenceSource(ids, sequences, alphabet, labels, classes, groups=sequences,
                          name=path.name)
