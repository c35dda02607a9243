"""Modalities: one object per kind of data answers everything that differs between them.

Importing this package registers the built-in modalities in ``MODALITIES``: ``image``, and the
sequence family ``protein``, ``dna``, ``text``. See :mod:`selfsup.modalities.base` for the
contract and ``docs/architecture.md`` for adding one.
"""

from __future__ import annotations

from selfsup.modalities import image, sequence  # noqa: F401  (registration)
from selfsup.modalities.base import (
    MODALITIES, FinetuneInputs, Modality, modality_for_spec, modality_of, register_modality,
    spec_modality,
)

__all__ = ["MODALITIES", "FinetuneInputs", "Modality", "modality_for_spec", "modality_of",
           "register_modality", "spec_modality"]
