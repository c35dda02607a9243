"""Tokenisers: protein and DNA sequences and text ↔ int64 token ids.

``make_tokenizer(name, k)`` builds one by its name in the ``TOKENIZERS`` registry;
``tokenizer.config()`` gives the arguments back, so a run dir can record which tokeniser its
encoder was trained with. A text tokeniser is learnt from the training texts and saved
(``selfsup.tokenize.text``); ``make_tokenizer`` loads a saved one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from selfsup.errors import ConfigError
from selfsup.registry import TOKENIZERS
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


def make_tokenizer(name: str, **config: Any) -> Tokenizer:
    """The tokeniser registered as ``name`` in ``TOKENIZERS``, built from the rest of its
    ``config()`` (``k`` > 1 gives DNA overlapping k-mers; a text tokeniser loads ``file``,
    checked against ``sha256`` if given). A new alphabet registers its own factory with
    ``@TOKENIZERS.register("name", "help")``."""
    return TOKENIZERS.get(name)(**config)


@TOKENIZERS.register("protein", "one token per amino acid (the 20, plus X, B, Z, U, O)")
def _protein(k: int = 1) -> Tokenizer:
    if k != 1:
        raise ConfigError(f"the protein tokeniser reads one amino acid per token; got k={k}")
    return ProteinTokenizer()


@TOKENIZERS.register("dna", "one token per nucleotide, or overlapping k-mers for k > 1")
def _dna(k: int = 1) -> Tokenizer:
    return DnaTokenizer() if k == 1 else KmerDnaTokenizer(k)


@TOKENIZERS.register("text", "byte-level BPE learnt from the training texts and saved")
def _text(k: int = 1, file: Optional[str | Path] = None, sha256: Optional[str] = None) -> Tokenizer:
    from selfsup.tokenize.text import TextTokenizer  # needs the `tokenizers` package

    if k != 1:
        raise ConfigError(f"the text tokeniser has no k-mers; got k={k}")
    if file is None:
        raise ConfigError("the text tokeniser is learnt from the training texts: make one "
                          "with TextTokenizer.train(texts, vocab_size), or give the file of "
                          "a saved one")
    return TextTokenizer.load(file, sha256)
