"""The letters of protein and DNA sequences, shared by the readers, data sets and tokenisers.

Letters are upper case; readers and tokenisers accept lower case too (soft-masked regions).
"""

from __future__ import annotations

# The 20 standard amino acids, then the ambiguous and rare ones: X (any), B (D or N), Z (E or Q),
# U (selenocysteine), O (pyrrolysine). The order of the first 20 is ESM's (by frequency).
STANDARD_AMINO_ACIDS = "LAGVSERTIDPKQNFYMHWC"
PROTEIN_LETTERS = STANDARD_AMINO_ACIDS + "XBUZO"

STANDARD_NUCLEOTIDES = "ACGT"
DNA_LETTERS = STANDARD_NUCLEOTIDES + "N"
# IUPAC ambiguity codes (two or more possible bases), which real files contain; ``to_dna_letters``
# folds them into N, and U (RNA) into T.
IUPAC_AMBIGUOUS = "RYSWKMBDHV"
DNA_IUPAC_LETTERS = DNA_LETTERS + IUPAC_AMBIGUOUS + "U"

COMPLEMENT = {"A": "T", "C": "G", "G": "C", "T": "A", "N": "N"}

_TO_DNA_LETTERS = str.maketrans({**{code: "N" for code in IUPAC_AMBIGUOUS}, "U": "T"})


def to_dna_letters(sequence: str) -> str:
    """``sequence`` in upper case over A C G T N: ambiguity codes become N and U becomes T."""
    return sequence.upper().translate(_TO_DNA_LETTERS)
