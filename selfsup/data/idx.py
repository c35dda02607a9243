"""Reader for IDX files, the format of MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic number ``0x00 0x00 <dtype code> <ndim>``, then ``ndim`` big-endian
uint32 dimension sizes, then the values in C order (big-endian for multi-byte types). The files are
often gzipped; a gzipped file is recognised by its content (the gzip magic bytes), not its name.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import Union

import numpy as np

from selfsup.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"

# The type codes of the IDX format; multi-byte values are stored big-endian.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: Union[str, Path]) -> np.ndarray:
    """Read an IDX file (plain or gzipped) into a writable native-endian NumPy array.

    Raises ``DataError`` naming the file when it is unreadable, not gzip-valid, has a bad magic
    number or an unknown type code, or holds a different number of bytes than its header promises.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0:2] != b"\x00\x00":
        raise DataError(
            f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'none'}; expected "
            "00 00 <type> <ndim>); is it the right file, fully downloaded?"
        )
    type_code, ndim = data[2], data[3]
    if type_code not in IDX_DTYPES:
        known = ", ".join(f"0x{code:02X}" for code in IDX_DTYPES)
        raise DataError(f"{path}: unsupported IDX type code 0x{type_code:02X} (known: {known})")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DataError(f"{path}: truncated IDX header ({len(data)} bytes for {ndim} dimensions)")
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    dtype = IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(data) - header_size
    if found != expected:
        problem = "truncated" if found < expected else "has trailing bytes"
        raise DataError(
            f"{path}: IDX data {problem}: the header promises shape {shape} ({expected} bytes) "
            f"but the file holds {found} bytes; download the file again"
        )
    values = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
    # astype copies: the result is writable and in the machine's byte order.
    return values.astype(dtype.newbyteorder("="))


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed when the content starts with the gzip magic."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read the file ({error.strerror or error})") from error
    if not raw.startswith(GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(
            f"{path}: corrupt gzip data ({error}); download the file again"
        ) from error
