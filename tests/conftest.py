"""Shared fixtures: tiny, fast configurations on scikit-learn's bundled digits."""

from __future__ import annotations

import pytest
import torch

from selfsup.run_config import load_config

# Tests use tiny tensors: one thread avoids oversubscription stalls when cores are shared.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# A one-block MLM Transformer for end-to-end runs on sequence data (add data.dataset and out).
TINY_MLM = [
    "method.name=mlm", "backbone.name=transformer-tiny", "backbone.dim=16", "backbone.depth=1",
    "backbone.ffn_dim=32", "backbone.num_heads=2", "data.max_length=32", "train.batch_size=32",
    "train.epochs=1", "train.steps_per_epoch=2", "train.health_samples=512",
    "train.progress=false", "train.device=cpu",
]

TINY = [
    "data.dataset=digits", "backbone.name=small-cnn", "backbone.widths=[8, 16]",
    "train.batch_size=64", "train.epochs=2", "train.steps_per_epoch=3",
    "train.health_samples=512", "train.probe_every=1", "train.probe_train_samples=256",
    "train.progress=false", "train.device=cpu", "optim.name=lars", "optim.lr=0.3",
    "optim.warmup_epochs=0.5", "eval.seeds=2", "eval.tsne_samples=100", "eval.batch_size=512",
]


@pytest.fixture
def tiny_config(tmp_path):
    """A SimCLR run on digits that takes about a second on 2 CPU cores."""

    def make(*extra: str, out: str = "run"):
        base = TINY
        if any(item.startswith("backbone.name=") for item in extra):
            # another backbone: the small CNN's own options would be unknown keys to it
            base = [item for item in TINY if not item.startswith("backbone.")]
        return load_config(None, base + [f"out={tmp_path / out}", *extra])

    return make
