"""DNA tokenisers: single nucleotides (A C G T N) or overlapping k-mers, and reverse complements.

Overlapping k-mers and masked modelling
---------------------------------------
``KmerDnaTokenizer(k)`` turns a sequence of n letters into its n-k+1 overlapping k-mers: token i
spells letters i … i+k-1. Masking single tokens then leaks: token i shares k-1 letters with each
neighbour, so with only token i masked, tokens i-1 and i+1 spell out all of its letters and the
"prediction" is a copy. A letter stays hidden only when *every* k-mer holding it is masked, and
letter j is held by the k consecutive tokens j-k+1 … j. So masking must cover whole spans of k
consecutive tokens: the span s … s+k-1 hides letter s+k-1, which every token of the span holds,
so none of them can be read off the visible neighbours. ``expand_kmer_mask`` grows each chosen token
into the span of k tokens around it (DNABERT's rule); a span cut short by a sequence end still
hides the letter at that end, and overlapping spans only hide more. To keep the masked share near
a target rate r, choose span centres at rate r / k.
"""

from __future__ import annotations

import itertools
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from selfsup.errors import ConfigError, DataError
from selfsup.tokenize.alphabets import COMPLEMENT, DNA_LETTERS, STANDARD_NUCLEOTIDES
from selfsup.tokenize.base import CharTokenizer, Tokenizer, letter_lookup

MAX_K = 8  # 4^8 = 65,536 k-mer tokens; beyond that embeddings outgrow any data set here

_COMPLEMENT_CASED = str.maketrans("ACGTNacgtn", "TGCANtgcan")


def reverse_complement(sequence: str) -> str:
    """The reverse complement of a DNA string: reversed, A↔T and C↔G swapped, N kept; case kept.

    >>> reverse_complement("AACgtN")
    'NacGTT'
    """
    bad = set(sequence) - set("ACGTNacgtn")
    if bad:
        position = min(sequence.index(c) for c in bad)
        raise DataError(
            f"invalid character {sequence[position]!r} at position {position + 1} for a reverse "
            "complement (allowed: A C G T N in either case); fold ambiguity codes into N first "
            "(selfsup.tokenize.alphabets.to_dna_letters)"
        )
    return sequence.translate(_COMPLEMENT_CASED)[::-1]


class DnaTokenizer(CharTokenizer):
    """Single nucleotides: ``<cls> <pad> <eos> <unk>`` A C G T N ``<mask>`` (10 tokens).

    Random replacements draw from A C G T; the reverse complement swaps A↔T and C↔G, keeps N.
    """

    name = "dna"

    def __init__(self) -> None:
        super().__init__(DNA_LETTERS, STANDARD_NUCLEOTIDES, unknown_letter="N",
                         complement=COMPLEMENT)


class KmerDnaTokenizer(Tokenizer):
    """Overlapping k-mers over A C G T: 4^k tokens in lexicographic order after the specials.

    A k-mer holding an N is ``<unk>``. ``decode`` rebuilds each letter from any k-mer token holding
    it, so it inverts ``encode`` exactly on A/C/G/T sequences; a letter that only ``<unk>`` or
    ``<mask>`` tokens hold comes out as N. Sequences shorter than k cannot be encoded. See the
    module docstring for why masked modelling must mask spans of k tokens (``expand_kmer_mask``).
    """

    name = "dna"
    unknown_letter = "N"

    def __init__(self, k: int) -> None:
        if not 1 <= k <= MAX_K:
            raise ConfigError(f"k-mer size k must be in 1..{MAX_K}, got {k}")
        kmers = ["".join(letters) for letters in itertools.product(STANDARD_NUCLEOTIDES, repeat=k)]
        complement = {kmer: reverse_complement(kmer) for kmer in kmers}
        super().__init__(kmers, kmers, complement)
        self.k = k
        # letter codes 0..3 for A C G T and 4 for N, so a k-mer's index is its base-4 number
        self._codes = letter_lookup(DNA_LETTERS, range(len(DNA_LETTERS)))
        self._powers = 4 ** np.arange(k - 1, -1, -1, dtype=np.int64)
        self._kmer_letters = np.frombuffer("".join(kmers).encode("ascii"), np.uint8).reshape(-1, k)

    def _encode_content(self, sequence: str, name: Optional[str]) -> np.ndarray:
        if len(sequence) < self.k:
            where = f"record {name!r}: " if name is not None else ""
            raise DataError(
                f"{where}sequence of length {len(sequence)} is shorter than k={self.k}; "
                "it has no k-mers: drop it or use a smaller k"
            )
        codes = self._letter_codes(sequence, self._codes, DNA_LETTERS, name)
        windows = np.lib.stride_tricks.sliding_window_view(codes, self.k)
        has_n = (windows == 4).any(axis=1)
        ids = self.first_ordinary_id + (np.minimum(windows, 3) * self._powers).sum(axis=1)
        ids[has_n] = self.unk_id
        return ids

    def _decode_content(self, ids: np.ndarray) -> str:
        if len(ids) == 0:
            return ""
        letters = np.full(len(ids) + self.k - 1, ord("N"), dtype=np.uint8)
        is_kmer = (ids >= self.first_ordinary_id) & (ids < self.mask_id)
        positions = np.flatnonzero(is_kmer)
        kmer_letters = self._kmer_letters[ids[positions] - self.first_ordinary_id]
        for offset in range(self.k):
            letters[positions + offset] = kmer_letters[:, offset]
        return letters.tobytes().decode("ascii")


def expand_kmer_mask(mask: torch.Tensor, k: int) -> torch.Tensor:
    """Grow each True of a (B, L) bool ``mask`` into the span of k tokens around it.

    Token c becomes the span c - (k-1)//2 … c + k//2, clipped at the batch's edges (DNABERT's
    contiguous k-span masking); restrict the result to real sequence tokens afterwards. With k = 1
    the mask is returned unchanged. See the module docstring for why.
    """
    if k == 1:
        return mask
    if mask.ndim != 2 or mask.dtype != torch.bool:
        raise DataError(
            f"expand_kmer_mask takes a (B, L) bool mask, got {mask.dtype} {tuple(mask.shape)}"
        )
    # t lies in the span of c exactly when c lies in t - k//2 … t + (k-1)//2: a sliding maximum.
    padded = F.pad(mask.float().unsqueeze(1), (k // 2, (k - 1) // 2))
    return F.max_pool1d(padded, kernel_size=k, stride=1).squeeze(1) > 0
