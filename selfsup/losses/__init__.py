"""Losses shared by methods, one file per family (contrastive, regression, redundancy, distillation).

Import from here: ``from selfsup.losses import nt_xent``.
"""

from selfsup.losses.contrastive import Gather, info_nce, nt_xent, queue_info_nce
from selfsup.losses.distillation import dino_loss, update_center
from selfsup.losses.generative import gaussian_kl, kl_sparsity, l1_sparsity, reconstruction_error
from selfsup.losses.masked_modelling import masked_token_accuracy, masked_token_cross_entropy
from selfsup.losses.redundancy import VICRegTerms, barlow_twins_loss, vicreg_loss
from selfsup.losses.regression import negative_cosine, normalized_mse

__all__ = [
    "Gather", "info_nce", "nt_xent", "queue_info_nce",
    "dino_loss", "update_center",
    "gaussian_kl", "kl_sparsity", "l1_sparsity", "reconstruction_error",
    "masked_token_accuracy", "masked_token_cross_entropy",
    "VICRegTerms", "barlow_twins_loss", "vicreg_loss",
    "negative_cosine", "normalized_mse",
]
