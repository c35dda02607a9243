"""Tokenisers: protein and DNA sequences and text ↔ int64 token ids.

``make_tokenizer(name, k)`` builds one by name; ``tokenizer.config()`` gives the arguments back, so
a run dir can record which tokeniser its encoder was trained with. A text tokeniser is learnt from
the training texts and saved (``selfsup.tokenize.text``); ``make_tokenizer`` loads a saved one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

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

TOKENIZERS = ("protein", "dna", "text")


def make_tokenizer(name: str, k: int = 1, file: Optional[str | Path] = None,
                   sha256: Optional[str] = None) -> Tokenizer:
    """The ``name`` tokeniser ("protein", "dna" or "text"); ``k`` > 1 gives DNA overlapping
    k-mers. "text" loads the tokeniser saved at ``file`` (checked against ``sha256`` if given):
    text tokenisers are learnt from data with ``TextTokenizer.train``."""
    if name == "protein":
        if k != 1:
            raise ConfigError(f"the protein tokeniser reads one amino acid per token; got k={k}")
        return ProteinTokenizer()
    if name == "dna":
        return DnaTokenizer() if k == 1 else KmerDnaTokenizer(k)
    if name == "text":
        from selfsup.tokenize.text import TextTokenizer  # needs the `tokenizers` package

        if k != 1:
            raise ConfigError(f"the text tokeniser has no k-mers; got k={k}")
        if file is None:
            raise ConfigError("the text tokeniser is learnt from the training texts: make one "
                              "with TextTokenizer.train(texts, vocab_size), or give the file of "
                              "a saved one")
        return TextTokenizer.load(file, sha256)
    raise ConfigError(f"unknown tokeniser {name!r}; known: {', '.join(TOKENIZERS)}")
