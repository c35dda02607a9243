"""The default recipe of each sequence modality: what ``selfsup pretrain --dataset X`` trains when
the user names no method.

Each recipe is the one that won ``bench/sequence_budget.py`` for its modality on a 2-core CPU at
its budget (``docs/benchmarks.md``, issue 16: 20 minutes for proteins and text, 10 for DNA): a
method, a backbone, their options, the optimiser, the batch, the length and the budget itself.
They apply below everything the user writes (a YAML file, flags, ``--set``), so ``--backbone`` or
``--set optim.lr=…`` change one piece and keep the rest (a backbone the user names comes without
the recipe's backbone options); naming ``--epochs`` (or ``train.total_steps``) replaces the
budget. Images keep the methods' own defaults (SimCLR).
"""

from __future__ import annotations

import copy
from typing import Any

# modality (the data's alphabet) → config sections
SEQUENCE_RECIPES: dict[str, dict[str, Any]] = {
    # swissprot-loc, 20 minutes: k-NN 65.8, linear 52.8 / 58.5 / 62.2 (composition + dipeptides:
    # 65.2, 53.4 / 58.8 / 63.4; the old Transformer MLM 63.5, 53.1 / 54.5 / 58.1). Effective rate
    # 1e-3 at batch 64 (2e-3 per 256 under the square-root rule).
    "protein": {
        "method": {"name": "mlm"},
        "backbone": {"name": "bytenet-small"},
        "optim": {"lr": 2e-3},
        "data": {"max_length": 256},
        "train": {"batch_size": 64, "budget_minutes": 20.0},
    },
    # 16s-reads at phylum rank, 10 minutes: a strand-averaged bag of 4- to 6-mers, k-NN 93.5,
    # linear 76.2 / 90.1 / 93.5 against the canonical 4-mer profile's 91.7, 47.6 / 63.6 / 70.2
    # (the bag of 1- to 4-mers: 87.1, 61.7 / 80.8 / 85.5); strand-invariant by construction
    "dna": {
        "method": {"name": "dna-contrastive", "rc_invariant": True},
        "backbone": {"name": "bag-small", "min_n": 4, "max_n": 6},
        "optim": {"lr": 4e-3},
        "train": {"batch_size": 256, "budget_minutes": 10.0},
    },
    # 20newsgroups, 20 minutes: a 1,024-d bag of BPE 1-2-grams, linear 59.3 / 67.9 / 68.3 against
    # TF-IDF's 49.4 / 75.2 / 83.0 (the 256-d bag of 1-4-grams, 10 minutes: 51.2 / 62.6 / 63.7;
    # the old Transformer MLM: 17.8 / 28.2 / 35.1)
    "text": {
        "method": {"name": "seq-contrastive"},
        "backbone": {"name": "bag-small", "dim": 1024, "hidden_dim": 1024, "max_n": 2},
        "optim": {"lr": 4e-3},
        "train": {"batch_size": 256, "budget_minutes": 20.0},
    },
}

LENGTH_KEYS = ("epochs", "total_steps")  # a user who sets either chose a length: no budget


def default_recipe(modality: str, user_train: dict[str, Any]) -> dict[str, Any]:
    """The config sections of ``modality``'s recipe ({} for images), without the budget when the
    user's ``train`` section fixes the run's length."""
    recipe = copy.deepcopy(SEQUENCE_RECIPES.get(modality, {}))
    if recipe and any(key in user_train for key in LENGTH_KEYS):
        recipe.get("train", {}).pop("budget_minutes", None)
    return recipe


def describe_recipes() -> list[str]:
    """One line per modality, for ``selfsup list``."""
    lines = []
    for modality, recipe in SEQUENCE_RECIPES.items():
        method = recipe["method"]
        options = ", ".join(f"{k}={v}" for k, v in method.items() if k != "name")
        train = recipe.get("train", {})
        backbone = recipe["backbone"]
        shape = ", ".join(f"{k}={v}" for k, v in backbone.items() if k != "name")
        lines.append(f"{modality}: {method['name']}{f' ({options})' if options else ''} + "
                     f"{backbone['name']}{f' ({shape})' if shape else ''}, batch "
                     f"{train.get('batch_size')}, lr "
                     f"{recipe.get('optim', {}).get('lr')}, {train.get('budget_minutes'):g} min")
    return lines
