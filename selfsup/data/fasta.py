"""FASTA and FASTQ readers (plain or gzipped, streaming) and a cached dump of BLAST databases.

``read_fasta`` and ``read_fastq`` check the file exists when called and then yield one
``SequenceRecord`` at a time, so a file of any size streams through in constant memory. Whatever
is wrong with a file raises ``DataError`` naming the file, the line, the record and, for a bad
letter, its position in the sequence: a missing or empty file, text before the first header, a
record without sequence, a letter outside the ``alphabet`` given, a FASTQ record cut short or
whose quality line is not as long as its sequence. gzip is recognised by its magic bytes, not by
the file name.

``dump_blast_db`` turns a BLAST database into a FASTA file once, with ``blastdbcmd``, and caches it
under ``$SELFSUP_CACHE`` (default ``~/.cache/selfsup``).
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Optional, Union

from selfsup.errors import DataError
from selfsup.files import atomic_write

PathLike = Union[str, os.PathLike]
GZIP_MAGIC = b"\x1f\x8b"
CACHE_ENV_VAR = "SELFSUP_CACHE"
BLAST_INSTALL_COMMAND = "sudo apt-get install --no-install-recommends ncbi-blast+"
# lowest and highest Phred+33 quality characters
QUALITY_RANGE = ("!", "~")


@dataclass(frozen=True)
class SequenceRecord:
    """One FASTA/FASTQ record: ``id`` (the header up to the first white space), the rest of the
    header as ``description``, the ``sequence`` as written (case kept) and, from FASTQ, the
    ``quality`` string (Phred+33, as long as the sequence)."""

    id: str
    description: str
    sequence: str
    quality: Optional[str] = None


# ----------------------------------------------------------------------------------------------
# readers


def read_fasta(path: PathLike, alphabet: Optional[str] = None,
               tab_separated: bool = False) -> Iterator[SequenceRecord]:
    """Stream the records of a FASTA file (plain or gzipped).

    ``alphabet``: the letters allowed in sequences (either case), e.g. ``PROTEIN_LETTERS`` from
    ``selfsup.tokenize.alphabets``; None accepts any letter. Sequence lines are stripped of white
    space at their ends; blank lines are skipped. ``tab_separated``: each record is one line,
    ``>header<TAB>sequence`` (the layout of predictnls' ``allProt.fasta``).
    """
    path = existing_file(path)
    return _fasta_records(path, letter_checker(alphabet), tab_separated)


def read_fastq(path: PathLike, alphabet: Optional[str] = None) -> Iterator[SequenceRecord]:
    """Stream the records of a FASTQ file (plain or gzipped), four lines per record:
    ``@id description``, the sequence, ``+`` (optionally repeating the id), the quality string."""
    path = existing_file(path)
    return _fastq_records(path, letter_checker(alphabet))


def read_sequences(path: PathLike, alphabet: Optional[str] = None) -> Iterator[SequenceRecord]:
    """``read_fasta`` or ``read_fastq``, chosen by the file's first character (``>`` or ``@``)."""
    if first_byte(path) == b"@":
        return read_fastq(path, alphabet)
    return read_fasta(path, alphabet)


def first_byte(path: PathLike) -> bytes:
    """The first byte of ``path``'s content (after gzip), b"" for an empty file: ``>`` starts a
    FASTA file and ``@`` a FASTQ file, whatever the file is called."""
    with open_binary(path) as handle:
        return handle.read(1)


def open_binary(path: PathLike) -> BinaryIO:
    """``path`` opened for reading bytes, through gzip when it starts with gzip's magic bytes."""
    path = existing_file(path)
    with open(path, "rb") as raw:
        compressed = raw.read(2) == GZIP_MAGIC
    return gzip.open(path, "rb") if compressed else open(path, "rb")


def _fasta_records(path: Path, check_letters, tab_separated: bool) -> Iterator[SequenceRecord]:
    header: Optional[str] = None
    header_line = 0
    chunks: list[str] = []
    length = 0
    count = 0
    for line_number, line in numbered_lines(path):
        line = line.strip()
        if not line:
            continue
        if line.startswith(">"):
            if header is not None:
                yield _fasta_record(path, header, header_line, chunks, count)
            count += 1
            header, header_line, chunks, length = line[1:], line_number, [], 0
            if tab_separated:
                header, _, sequence = header.partition("\t")
                check_letters(path, line_number, header, sequence, 0)
                chunks, length = [sequence], len(sequence)
            continue
        if header is None:
            raise DataError(
                f"{path}, line {line_number}: text before the first FASTA header ({line[:20]!r}); "
                "a FASTA file starts with a '>' header line"
            )
        if tab_separated:
            raise DataError(
                f"{path}, line {line_number}: a second line for record {_record_id(header)!r}; "
                "this file is read as one '>header<TAB>sequence' line per record"
            )
        check_letters(path, line_number, header, line, length)
        chunks.append(line)
        length += len(line)
    if header is None:
        raise DataError(f"{path}: the file holds no FASTA records (it is empty or blank)")
    yield _fasta_record(path, header, header_line, chunks, count)


def _fasta_record(path: Path, header: str, line_number: int, chunks: list[str],
                  count: int) -> SequenceRecord:
    record_id, description = _split_header(header)
    sequence = "".join(chunks)
    if not sequence:
        raise DataError(
            f"{path}, line {line_number}: record {record_id!r} (number {count}) has an empty "
            "sequence; remove the record or restore its sequence"
        )
    if not record_id:
        raise DataError(f"{path}, line {line_number}: record number {count} has an empty header")
    return SequenceRecord(record_id, description, sequence)


def _fastq_records(path: Path, check_letters) -> Iterator[SequenceRecord]:
    lines = numbered_lines(path)
    count = 0
    for line_number, header in lines:
        header = header.rstrip("\r\n")
        if not header.strip():
            continue
        count += 1
        if not header.startswith("@"):
            raise DataError(
                f"{path}, line {line_number}: expected a FASTQ header starting with '@' for record "
                f"number {count}, got {header[:20]!r}"
            )
        record_id, description = _split_header(header[1:])
        where = f"{path}, record {record_id!r} (number {count}, line {line_number})"
        rest = [next(lines, None) for _ in range(3)]
        if None in rest:
            found = rest.index(None)
            raise DataError(
                f"{where}: the file ends after {found + 1} of the record's 4 lines; the file is "
                "truncated (FASTQ records are 4 lines: @header, sequence, +, quality)"
            )
        (sequence_line, sequence), (plus_line, plus), (quality_line, quality) = (
            (number, text.strip()) for number, text in rest
        )
        if not plus.startswith("+"):
            raise DataError(
                f"{where}: line {plus_line} should be the '+' separator, got {plus[:20]!r}; "
                "the record is missing a line (multi-line FASTQ is not supported)"
            )
        if not sequence:
            raise DataError(f"{where}: empty sequence on line {sequence_line}")
        check_letters(path, sequence_line, record_id, sequence, 0)
        if len(quality) != len(sequence):
            raise DataError(
                f"{where}: the quality on line {quality_line} has {len(quality)} characters but "
                f"the sequence has {len(sequence)}; the record is truncated or damaged"
            )
        bad = re.search(r"[^!-~]", quality)
        if bad:
            raise DataError(
                f"{where}: invalid quality character {bad.group()!r} at position {bad.start() + 1} "
                f"on line {quality_line} (Phred+33 qualities run from "
                f"{QUALITY_RANGE[0]!r} to {QUALITY_RANGE[1]!r})"
            )
        yield SequenceRecord(record_id, description, sequence, quality)
    if count == 0:
        raise DataError(f"{path}: the file holds no FASTQ records (it is empty or blank)")


def numbered_lines(path: PathLike, encoding: str = "ascii") -> Iterator[tuple[int, str]]:
    """(1-based line number, line) pairs of a file, plain or gzipped (by its magic bytes), each
    line decoded on its own so that an undecodable byte names its line exactly; line ends are kept
    (``csv`` needs them inside quoted fields). A bad byte or a damaged gzip stream is a
    ``DataError``. ``encoding``: ASCII for sequence files; text and tables use "utf-8-sig" (UTF-8,
    without the byte-order mark that spreadsheet programs write at the start of the file)."""
    # The BOM is cut from the first line's bytes by hand: the utf-8-sig codec would look for one on
    # every line, and it is written in Python, ten times slower per line than the utf-8 codec.
    strip_bom = encoding == "utf-8-sig"
    codec = "utf-8" if strip_bom else encoding
    line_number = 0
    try:
        with open_binary(path) as handle:
            for line_number, line in enumerate(handle, start=1):
                if strip_bom and line_number == 1 and line.startswith(codecs.BOM_UTF8):
                    line = line[len(codecs.BOM_UTF8):]
                try:
                    yield line_number, line.decode(codec)
                except UnicodeDecodeError as error:
                    name, hint = _ENCODINGS.get(encoding, (encoding, "re-save the file"))
                    raise DataError(
                        f"{path}, line {line_number}: not {name} text (byte "
                        f"{line[error.start]:#04x} at byte {error.start + 1} of the line); {hint}"
                    ) from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise DataError(
            f"{path}: the gzip stream is damaged or truncated after line {line_number} ({error}); "
            "download or copy the file again"
        ) from None


_ENCODINGS = {"ascii": ("ASCII", "sequence files hold ASCII letters"),
              "utf-8-sig": ("UTF-8", "save the file as UTF-8")}


def letter_checker(alphabet: Optional[str]):
    """A function that raises ``DataError`` at the first letter of a sequence line not in
    ``alphabet`` (either case); a no-op when ``alphabet`` is None."""
    if alphabet is None:
        return lambda *args: None
    allowed = "".join(sorted(set(alphabet.upper() + alphabet.lower())))
    invalid = re.compile(f"[^{re.escape(allowed)}]")

    def check(path: Path, line_number: int, header: str, text: str, offset: int) -> None:
        bad = invalid.search(text)
        if bad:
            raise DataError(
                f"{path}, line {line_number}: record {_record_id(header)!r}: invalid character "
                f"{bad.group()!r} at position {offset + bad.start() + 1} of the sequence (allowed: "
                f"{alphabet.upper()}, either case)"
            )

    return check


def _split_header(header: str) -> tuple[str, str]:
    """(id, description): the header split at its first run of white space (tabs included)."""
    parts = header.strip().split(maxsplit=1)
    return (parts[0] if parts else ""), (parts[1] if len(parts) > 1 else "")


def _record_id(header: str) -> str:
    return _split_header(header)[0]


def existing_file(path: PathLike) -> Path:
    """``path`` (``~`` expanded); DataError naming it when it does not exist."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file; check the path")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    return path


# ----------------------------------------------------------------------------------------------
# writing


def write_fasta(records: Iterable[SequenceRecord], path: PathLike, line_width: int = 60) -> Path:
    """Write ``records`` as FASTA to ``path`` atomically (``selfsup.files.atomic_write``), so a
    crash never leaves a half-written file behind. Returns the path."""
    path = Path(path).expanduser()

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            for record in records:
                header = f"{record.id} {record.description}".rstrip()
                handle.write(f">{header}\n".encode("ascii"))
                for start in range(0, len(record.sequence), line_width):
                    handle.write(record.sequence[start:start + line_width].encode("ascii") + b"\n")

    atomic_write(path, write)
    return path


# ----------------------------------------------------------------------------------------------
# BLAST databases


def cache_dir() -> Path:
    """Where selfsup keeps files it derives from installed data: ``$SELFSUP_CACHE`` or
    ``~/.cache/selfsup``."""
    return Path(os.environ.get(CACHE_ENV_VAR) or "~/.cache/selfsup").expanduser()


def dump_blast_db(db: PathLike, cache: Optional[PathLike] = None, refresh: bool = False,
                  blastdbcmd: str = "blastdbcmd", install_hint: str = "") -> Path:
    """A FASTA file of every sequence in the BLAST database ``db``, dumped once and cached.

    ``db`` is the database's path without extension (as ``blastdbcmd -db`` takes it). The dump
    runs ``blastdbcmd -entry all -db DB`` into ``cache`` (default ``cache_dir()/blast``), named
    after the database and a fingerprint of its files, so an updated database is dumped again;
    ``refresh`` forces a new dump. The file appears atomically when the dump has succeeded.
    ``install_hint`` (an install command) is added to the error when the database is missing.
    """
    db = Path(db).expanduser()
    database_files = sorted(db.parent.glob(db.name + ".*")) if db.parent.is_dir() else []
    if not database_files:
        hint = f"; install it with: {install_hint}" if install_hint else ""
        raise DataError(f"BLAST database {db} not found (no {db}.* files){hint}")
    program = shutil.which(blastdbcmd)
    if program is None:
        raise DataError(
            f"{blastdbcmd!r} is not installed, and it is needed to read the BLAST database {db}; "
            f"install it with: {BLAST_INSTALL_COMMAND}"
        )
    folder = Path(cache).expanduser() if cache is not None else cache_dir() / "blast"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{db.name}-{_fingerprint(database_files)}.fasta"
    if target.is_file() and not refresh:
        return target
    def dump(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            result = subprocess.run(
                [program, "-entry", "all", "-db", str(db)], stdout=handle, stderr=subprocess.PIPE
            )
        if result.returncode != 0:
            message = result.stderr.decode(errors="replace").strip()
            raise DataError(f"blastdbcmd could not dump {db} (exit {result.returncode}): {message}")

    atomic_write(target, dump)
    return target


def _fingerprint(files: list[Path]) -> str:
    """12 hex digits that change when any of ``files`` changes path, size or modification time."""
    digest = hashlib.sha1()
    for file in files:
        stat = file.stat()
        digest.update(f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:12]
