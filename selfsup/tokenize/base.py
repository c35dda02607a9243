"""The tokeniser contract: strings ↔ int64 token ids, with the specials masked modelling needs.

Every vocabulary starts with the same four specials and ends with ``<mask>``, ESM's layout::

    0 <cls>   1 <pad>   2 <eos>   3 <unk>   4 … V-2 ordinary tokens   V-1 <mask>

``encode`` turns one sequence into ``<cls> tokens… <eos>``; ``encode_batch`` pads a list of them on
the right to a (B, L) int64 tensor and a (B, L) bool attention mask (True on real tokens, specials
included). Lower case is read as upper case; any other character raises ``DataError`` naming the
character, its 1-based position and the record.

Views and methods ask a tokeniser three questions, answered by small per-device lookup tensors
(``table``): which ids are special (never chosen for masking), which ordinary ids a random
replacement draws from (``replacement_ids``: the unambiguous letters, so masking never invents an
X or an N), and, for DNA, which id is each id's reverse complement (``complement_ids``).
"""

from __future__ import annotations

from typing import Iterable, NamedTuple, Optional, Sequence

import numpy as np
import torch

from selfsup.errors import DataError

CLS, PAD, EOS, UNK, MASK = "<cls>", "<pad>", "<eos>", "<unk>", "<mask>"
LEADING_SPECIALS = (CLS, PAD, EOS, UNK)
NO_LETTER = -1  # marks bytes outside the alphabet in encoding lookup tables
# Label of token positions a masked-modelling loss ignores (PyTorch cross_entropy's ignore_index).
IGNORE_LABEL = -100


class TokenBatch(NamedTuple):
    """Padded token ids (B, L) int64 and the attention mask (B, L) bool, True on real tokens."""

    ids: torch.Tensor
    attention_mask: torch.Tensor

    def to(self, device: torch.device | str) -> "TokenBatch":
        return TokenBatch(self.ids.to(device), self.attention_mask.to(device))


class Tokenizer:
    """Base class: the vocabulary, specials, padding and lookup tables.

    Subclasses set ``k`` (letters per token), ``unknown_letter`` (what ``decode`` writes for
    ``<unk>`` and ``<mask>``), and implement ``_encode_content`` (a string → int64 ids without
    specials) and ``_decode_content`` (ids without specials → a string).
    """

    name: str = "tokens"
    k: int = 1
    unknown_letter: str = "?"

    def __init__(
        self,
        tokens: Sequence[str],
        replacement_tokens: Sequence[str],
        complement: Optional[dict[str, str]] = None,
        add_cls: bool = True,
        add_eos: bool = True,
    ) -> None:
        self.tokens: list[str] = [*LEADING_SPECIALS, *tokens, MASK]
        self.index = {token: i for i, token in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            raise ValueError(f"{self.name}: the vocabulary lists a token twice")
        self.cls_id, self.pad_id, self.eos_id, self.unk_id = (
            self.index[token] for token in LEADING_SPECIALS
        )
        self.mask_id = self.index[MASK]
        self.first_ordinary_id = len(LEADING_SPECIALS)
        self.replacement_ids = [self.index[t] for t in replacement_tokens]
        self.complement_ids: Optional[list[int]] = None
        if complement is not None:
            self.complement_ids = list(range(len(self.tokens)))  # specials are their own complement
            for token, partner in complement.items():
                self.complement_ids[self.index[token]] = self.index[partner]
        self.add_cls, self.add_eos = add_cls, add_eos
        self._tables: dict[tuple[str, torch.device], torch.Tensor] = {}

    # ------------------------------------------------------------------ vocabulary

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def special_ids(self) -> list[int]:
        return [self.cls_id, self.pad_id, self.eos_id, self.unk_id, self.mask_id]

    @property
    def num_special_tokens(self) -> int:
        """Specials ``encode`` adds around each sequence (0, 1 or 2)."""
        return int(self.add_cls) + int(self.add_eos)

    def config(self) -> dict:
        """What ``selfsup.tokenize.make_tokenizer(**config)`` needs to rebuild this tokeniser."""
        return {"name": self.name, "k": self.k}

    # ------------------------------------------------------------------ encoding

    def encode(self, sequence: str, name: Optional[str] = None,
               max_length: Optional[int] = None) -> torch.Tensor:
        """1-D int64 ids of ``sequence`` with the specials; ``name`` (a record id) goes into errors.

        ``max_length`` caps the length including specials by dropping tokens from the end of the
        sequence (the specials stay): crop long sequences at random first if the end matters.
        """
        content = self._encode_content(sequence, name)
        if max_length is not None:
            room = max_length - self.num_special_tokens
            if room < 1:
                raise DataError(
                    f"{self.name} tokeniser: max_length={max_length} leaves no room for a token "
                    f"next to the {self.num_special_tokens} special(s); use a larger max_length"
                )
            content = content[:room]
        parts = [[self.cls_id]] if self.add_cls else []
        parts.append(content)
        if self.add_eos:
            parts.append([self.eos_id])
        return torch.from_numpy(np.concatenate(parts).astype(np.int64))

    def encode_batch(self, sequences: Sequence[str], names: Optional[Sequence[str]] = None,
                     max_length: Optional[int] = None) -> TokenBatch:
        """Encode and right-pad ``sequences`` to one (B, L) batch; L is the longest encoding."""
        names = names if names is not None else [None] * len(sequences)
        return self.pad([self.encode(s, n, max_length) for s, n in zip(sequences, names)])

    def pad(self, encoded: Sequence[torch.Tensor]) -> TokenBatch:
        """Right-pad 1-D id tensors with ``<pad>`` into one (B, L) batch and its attention mask."""
        if len(encoded) == 0:
            raise DataError(f"{self.name} tokeniser: cannot make a batch of 0 sequences")
        lengths = torch.tensor([len(ids) for ids in encoded])
        ids = torch.full((len(encoded), int(lengths.max())), self.pad_id, dtype=torch.int64)
        for row, sequence_ids in enumerate(encoded):
            ids[row, : len(sequence_ids)] = sequence_ids
        attention_mask = torch.arange(ids.shape[1]) < lengths[:, None]
        return TokenBatch(ids, attention_mask)

    # ------------------------------------------------------------------ decoding

    def decode(self, ids: torch.Tensor | Iterable[int]) -> str:
        """The sequence of 1-D ``ids``: ``<cls>``, ``<eos>`` and ``<pad>`` are skipped;
        ``<unk>`` and ``<mask>`` come out as ``unknown_letter``."""
        ids = ids.cpu().numpy() if torch.is_tensor(ids) else np.asarray(list(ids), dtype=np.int64)
        if ids.ndim != 1:
            raise DataError(f"{self.name} tokeniser: decode takes 1-D ids, got shape {ids.shape}")
        framing = np.isin(ids, [self.cls_id, self.eos_id, self.pad_id])
        return self._decode_content(ids[~framing])

    def decode_batch(self, ids: torch.Tensor) -> list[str]:
        """``decode`` of each row of a (B, L) batch."""
        return [self.decode(row) for row in ids]

    # ------------------------------------------------------------------ lookup tables for views

    def table(self, kind: str, device: torch.device | str) -> torch.Tensor:
        """A small lookup tensor on ``device``, made once per device (copies wait for the device).

        "special": (V,) bool, True on the five specials.
        "replacement": (R,) int64, the ids random replacements draw from.
        "replacement_index": (V,) int64, each id's index in "replacement", or -1.
        "complement": (V,) int64, each id's reverse-complement id (DNA tokenisers only).
        """
        device = torch.device(device)
        key = (kind, device)
        if key not in self._tables:
            self._tables[key] = self._make_table(kind).to(device)
        return self._tables[key]

    def _make_table(self, kind: str) -> torch.Tensor:
        if kind == "special":
            special = torch.zeros(self.vocab_size, dtype=torch.bool)
            special[self.special_ids] = True
            return special
        if kind == "replacement":
            return torch.tensor(self.replacement_ids, dtype=torch.int64)
        if kind == "replacement_index":
            index = torch.full((self.vocab_size,), -1, dtype=torch.int64)
            index[self.replacement_ids] = torch.arange(len(self.replacement_ids))
            return index
        if kind == "complement":
            if self.complement_ids is None:
                raise DataError(
                    f"the {self.name} tokeniser has no reverse complement; "
                    "reverse complements are for DNA tokenisers"
                )
            return torch.tensor(self.complement_ids, dtype=torch.int64)
        raise ValueError(f"unknown lookup table {kind!r}")

    # ------------------------------------------------------------------ subclass hooks

    def _encode_content(self, sequence: str, name: Optional[str]) -> np.ndarray:
        raise NotImplementedError

    def _decode_content(self, ids: np.ndarray) -> str:
        raise NotImplementedError

    # ------------------------------------------------------------------ shared helpers

    def _letter_codes(self, sequence: str, lookup: np.ndarray, allowed: str,
                      name: Optional[str]) -> np.ndarray:
        """``lookup`` applied to the bytes of ``sequence``; a byte mapped to ``NO_LETTER`` (or a
        non-ASCII character) raises ``DataError`` naming it, its position and the record."""
        try:
            raw = np.frombuffer(sequence.encode("ascii"), dtype=np.uint8)
        except UnicodeEncodeError as error:
            self._invalid(sequence, error.start, allowed, name)
        codes = lookup[raw]
        bad = np.flatnonzero(codes == NO_LETTER)
        if len(bad):
            self._invalid(sequence, int(bad[0]), allowed, name)
        return codes

    def _invalid(self, sequence: str, position: int, allowed: str, name: Optional[str]) -> None:
        where = f"record {name!r}: " if name is not None else ""
        raise DataError(
            f"{where}invalid character {sequence[position]!r} at position {position + 1} for the "
            f"{self.name} tokeniser (allowed, in either case: {allowed}); clean the sequence or "
            f"pick the tokeniser of its alphabet"
        )


def letter_lookup(letters: str, values: Sequence[int]) -> np.ndarray:
    """A 256-entry byte → value table for ``letters`` (either case); other bytes: ``NO_LETTER``."""
    lookup = np.full(256, NO_LETTER, dtype=np.int64)
    for letter, value in zip(letters, values):
        lookup[ord(letter.upper())] = value
        lookup[ord(letter.lower())] = value
    return lookup


class CharTokenizer(Tokenizer):
    """One token per letter of ``letters``; random replacements draw from
    ``replacement_letters``."""

    def __init__(self, letters: str, replacement_letters: str, unknown_letter: str,
                 complement: Optional[dict[str, str]] = None) -> None:
        super().__init__(list(letters), list(replacement_letters), complement)
        self.letters = letters
        self.unknown_letter = unknown_letter
        self._lookup = letter_lookup(letters, [self.index[letter] for letter in letters])
        # id → letter byte; specials other than the framing ones decode to the unknown letter
        self._letter_of_id = np.full(self.vocab_size, ord(unknown_letter), dtype=np.uint8)
        for letter in letters:
            self._letter_of_id[self.index[letter]] = ord(letter)

    def _encode_content(self, sequence: str, name: Optional[str]) -> np.ndarray:
        return self._letter_codes(sequence, self._lookup, self.letters, name)

    def _decode_content(self, ids: np.ndarray) -> str:
        return self._letter_of_id[ids].tobytes().decode("ascii")
