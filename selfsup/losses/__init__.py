"""Losses shared by methods, one file per family (contrastive, regression, redundancy, distillation).

Import from here: ``from selfsup.losses import nt_xent``.
"""

from selfsup.losses.contrastive import Gather, info_nce, nt_xent
from selfsup.losses.regression import negative_cosine, normalized_mse

__all__ = ["Gather", "info_nce", "nt_xent"]
