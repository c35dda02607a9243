"""Tokenisers: protein and DNA sequences ↔ int64 token ids (text tokenisers come with `tokenizers`).

``make_tokenizer(name, k)`` builds one by name; ``tokenizer.config()`` gives the arguments back, so
a run dir can record which tokeniser its encoder was trained with.
"""

from __future__ import annotations

from selfsup.errors import ConfigError
from selfsup.tokenize.base import IGNORE_LABEL, CharTokenizer, TokenBatch, Tokenizer
from selfsup.tokenize.dna import (
    DnaTokenizer, KmerDnaTokenizer, expand_kmer_mask, reverse_complement,
)
from selfsup.tokenize.protein import ProteinTokenizer

__all__ = [
    "IGNORE_LABEL", "TOKENIZERS", "CharTokenizer", "DnaTokenizer", "KmerDnaTokenizer",
    "ProteinTokenizer", "TokenBatch", "Tokenizer", "expand_kmer_mask", "make_tokenizer",
    "reverse_complement",
]

TOKENIZERS = ("protein", "dna")


def make_tokenizer(name: str, k: int = 1) -> Tokenizer:
    """The ``name`` tokeniser ("protein" or "dna"); ``k`` > 1 gives DNA overlapping k-mers."""
    if name == "protein":
        if k != 1:
            raise ConfigError(f"the protein tokeniser reads one amino acid per token; got k={k}")
        return ProteinTokenizer()
    if name == "dna":
        return DnaTokenizer() if k == 1 else KmerDnaTokenizer(k)
    raise ConfigError(f"unknown tokeniser {name!r}; known: {', '.join(TOKENIZERS)}")
