"""Protein tokeniser: one token per amino acid, ESM-style alphabet and specials."""

from __future__ import annotations

from selfsup.tokenize.alphabets import PROTEIN_LETTERS, STANDARD_AMINO_ACIDS
from selfsup.tokenize.base import CharTokenizer


class ProteinTokenizer(CharTokenizer):
    """Amino acids: the 20 standard ones, then X B U Z O; ``<unk>``/``<mask>`` decode as X.

    Vocabulary (30): ``<cls> <pad> <eos> <unk>``, L A G V S E R T I D P K Q N F Y M H W C X B U Z O,
    ``<mask>``. Random replacements (BERT's 10%) draw from the 20 standard amino acids.
    """

    name = "protein"

    def __init__(self) -> None:
        super().__init__(PROTEIN_LETTERS, STANDARD_AMINO_ACIDS, unknown_letter="X")
