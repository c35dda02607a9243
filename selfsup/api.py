"""selfsup's pieces for people who write their own training loop, importable from one place.

Everything the command line trains with is here: the losses (as functions of tensors), the
projection heads, the view makers (augmentations made batched on the device), the methods (a
loss, heads and their EMA/queue/teacher updates around your encoder), the backbones, the health
metrics and monitor, and the trainer with its config for those who want the whole loop after all.
The README's "Your own training loop" shows them used together; ``tests/test_api.py`` runs that
example as written.

    from selfsup.api import build_backbone, build_method, make_views, HealthMonitor

Importing this module loads the catalog (every built-in method, backbone, data set, view recipe
and modality, and the installed plugins), so ``build_method({"name": ...})`` knows every name.
"""

from __future__ import annotations

from selfsup import catalog
from selfsup.backbones import Layered, build_backbone
from selfsup.config import Config
from selfsup.data import load_split
from selfsup.evaluate.knn import knn_predict
from selfsup.evaluate.linear import linear_probe
from selfsup.health import (
    HealthMonitor, collapse_warnings, effective_rank, embedding_std, health_metrics, mean_cosine,
)
from selfsup.heads import MLPHead
from selfsup.losses import (
    barlow_twins_loss, dino_loss, gaussian_kl, info_nce, masked_token_cross_entropy,
    negative_cosine, normalized_mse, nt_xent, queue_info_nce, reconstruction_error, vicreg_loss,
)
from selfsup.methods import BuildContext, Generates, Method, Reconstructs, build_method
from selfsup.methods.base import StepOutput
from selfsup.momentum import MomentumTarget, ema_update, momentum_at
from selfsup.registry import BACKBONES, DATASETS, METHODS, MODALITIES, TOKENIZERS, VIEW_RECIPES
from selfsup.run_config import load_config
from selfsup.tokenize import make_tokenizer
from selfsup.train import Trainer
from selfsup.train.checkpoint import load_encoder
from selfsup.train.parts import build_parts
from selfsup.views import make_sequence_views, make_views, to_input

catalog.load()

__all__ = [
    # the model
    "build_backbone", "Layered", "MLPHead", "build_method", "Method", "BuildContext",
    "StepOutput", "Reconstructs", "Generates", "MomentumTarget", "ema_update", "momentum_at",
    # losses
    "nt_xent", "info_nce", "queue_info_nce", "dino_loss", "barlow_twins_loss", "vicreg_loss",
    "negative_cosine", "normalized_mse", "masked_token_cross_entropy", "reconstruction_error",
    "gaussian_kl",
    # data and views
    "load_split", "make_views", "make_sequence_views", "to_input", "make_tokenizer",
    # health and evaluation
    "HealthMonitor", "health_metrics", "collapse_warnings", "effective_rank", "embedding_std",
    "mean_cosine", "knn_predict", "linear_probe", "load_encoder",
    # the whole loop
    "Config", "load_config", "Trainer", "build_parts",
    # the registries, to list what is there
    "METHODS", "BACKBONES", "DATASETS", "VIEW_RECIPES", "MODALITIES", "TOKENIZERS",
]
