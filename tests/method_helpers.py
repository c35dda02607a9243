"""Checks that several method test files share."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pytest
import torch
from torch import nn

from selfsup.backbones import build_backbone
from selfsup.config import Config
from selfsup.run_config import load_config
from selfsup.data import load_split
from selfsup.methods import build_method
from selfsup.momentum import momentum_at
from selfsup.tokenize import make_tokenizer
from selfsup.tokenize.base import Tokenizer
from selfsup.run_dir import RunDir
from selfsup.train import Trainer
from selfsup.train.hooks import Hook, default_hooks
from selfsup.modalities import MODALITIES
from selfsup.modalities.image import ImageModality
from selfsup.train.checkpoint import save_encoder
from selfsup.views import make_views

TINY_TRANSFORMER = {"name": "transformer-tiny", "dim": 16, "depth": 2, "num_heads": 2,
                    "ffn_dim": 32}
TINY_CNN = {"name": "small-cnn", "widths": [8, 16]}


def step_losses(method: nn.Module, optimizer: torch.optim.Optimizer,
                next_views: Callable[[], list[torch.Tensor]], steps: int = 15) -> list[float]:
    """Per-step losses of ``steps`` optimiser steps, each on the views ``next_views()`` returns."""
    losses = []
    for _ in range(steps):
        loss = method(next_views()).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def digit_step_losses(method: nn.Module, pool: torch.Tensor, optimizer: torch.optim.Optimizer,
                      steps: int = 15, batch: int = 32, seed: int = 0) -> list[float]:
    """Per-step losses of ``steps`` optimiser steps on random batches of ``pool`` (uint8 images),
    each with fresh views of the method's own recipe; batches and views share one seeded generator."""
    views = make_views(method.view_recipe, tuple(pool.shape[1:]), {})
    generator = torch.Generator().manual_seed(seed)

    def next_views() -> list[torch.Tensor]:
        return views(pool[torch.randint(len(pool), (batch,), generator=generator)], generator)

    return step_losses(method, optimizer, next_views, steps)


def assert_ema_step(method: nn.Module, online: Sequence[torch.Tensor], target: Sequence[torch.Tensor],
                    base_momentum: float) -> None:
    """The target starts as a copy of the online weights and, after ``after_step(3, 10)``, sits at
    exactly m·before + (1 − m)·online with m = momentum_at(3, 10, base) strictly inside (base, 1)."""
    online, target = list(online), list(target)
    assert len(online) == len(target)
    assert all(torch.equal(o, t) for o, t in zip(online, target))
    with torch.no_grad():
        for o in online:
            o.add_(torch.randn_like(o))
    before = [t.clone() for t in target]
    method.after_step(3, 10)
    m = momentum_at(3, 10, base_momentum)
    assert base_momentum < m < 1.0  # mid-schedule: neither the base nor the final value
    for b, t, o in zip(before, target, online):
        torch.testing.assert_close(t, m * b + (1 - m) * o)


def digits_losses(section: dict, steps: int = 15, batch: int = 64, lr: float = 1e-2) -> list[float]:
    """Per-step losses of a few Adam steps at ``lr`` of a method (config section) on digits, with
    fresh views each step; the same seeds, hence the same initial weights, batches and views, for
    any ``lr`` (``lr=0`` is the frozen control)."""
    torch.manual_seed(0)
    images = load_split("digits", "train").get(torch.arange(512))
    method = build_method(section, build_backbone(TINY_CNN, 1, 8))
    optimizer = torch.optim.Adam(method.parameters(), lr=lr)
    return digit_step_losses(method, images, optimizer, steps=steps, batch=batch)


def assert_learns_on_digits(section: dict, gap: float = 0.3, batch: int = 64) -> None:
    """The method's loss falls over a few Adam steps on digits, and ends at least ``gap`` below the
    loss of frozen weights (``lr=0``) on the very same batches and views.

    The frozen control is what makes the check fail for a method that does not learn: fresh views
    move the loss by ±0.15 from step to step even with frozen weights (SimCLR: 5.43 → 5.29, which
    alone would pass ``assert_loss_falls``). Measured gaps over the last 5 of 15 steps: 0.5–1.3.
    """
    learnt, frozen = (digits_losses(section, batch=batch, lr=lr) for lr in (1e-2, 0.0))
    assert frozen[0] == pytest.approx(learnt[0])  # the same start: the comparison is paired
    assert_loss_falls(learnt)
    assert np.mean(frozen[-5:]) - np.mean(learnt[-5:]) > gap, (learnt, frozen)


def free_port() -> int:
    """A TCP port on localhost that is free now, for a process group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_loss_falls(losses: list[float], margin: float = 0.1) -> None:
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < first - margin, f"loss did not fall: first 3 {first:.3f}, last 3 {last:.3f}"


class StopAfterEpoch(Hook):
    """Kills a run (KeyboardInterrupt, on every process) once the end-of-epoch hooks before it
    (the checkpoint among them) have run for epoch ``epoch`` (0-based)."""

    all_ranks = True

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, trainer: Trainer, epoch: int, step: int) -> None:
        if epoch == self.epoch:
            raise KeyboardInterrupt


def interrupted_trainer(config: Config, stop_after_epoch: int) -> Trainer:
    """A Trainer of ``config`` with the default hooks and a kill after epoch ``stop_after_epoch``."""
    return Trainer(config, hooks=default_hooks(RunDir(config.out)) + [StopAfterEpoch(stop_after_epoch)])


def interrupt_then_resume(config: Config, stop_after_epoch: int, monkeypatch) -> Path:
    """Run ``config`` until the checkpoint of epoch ``stop_after_epoch`` (0-based) is written, kill
    it there (KeyboardInterrupt), check no final encoder was written, then resume to the end."""
    with pytest.raises(KeyboardInterrupt):
        interrupted_trainer(config, stop_after_epoch).fit()
    assert not (Path(config.out) / "encoder.safetensors").exists()
    return Trainer(config, resume=True).fit()


def assert_health_watches_the_encoder_only(method: nn.Module, x: torch.Tensor) -> None:
    """Methods without a projector (MAE, BEiT): the health monitor sees the encoder's features of
    the whole, unmasked input and nothing else."""
    watched = method.health_embeddings(x)
    assert list(watched) == ["encoder"]
    torch.testing.assert_close(watched["encoder"], method.encoder(x))


# ---------------------------------------------------------------- run dirs without training


def spec_config(dataset: str, backbone: dict | None = None) -> Config:
    """A config that names ``dataset`` (and ``backbone``), for a modality's ``encoder_spec``."""
    config = load_config(None, [f"data.dataset={dataset}"])
    if backbone is not None:
        config.backbone = dict(backbone)
    return config


def _save_run(run_dir: Path, encoder: nn.Module, spec: dict, overrides: list[str]) -> None:
    """``run_dir`` as `selfsup pretrain` leaves it: config.yaml and the encoder (encoder.json,
    encoder.safetensors)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    load_config(None, overrides + [f"data.dataset={spec['dataset']}",
                                   f"out={run_dir}"]).save(run_dir / "config.yaml")
    save_encoder(run_dir, encoder, spec)


def save_token_run(run_dir: Path, tokenizer_name: str = "protein", max_length: int = 64,
                   dataset: str = "swissprot-loc", **backbone) -> tuple[nn.Module, Tokenizer]:
    """A run dir of a tiny token encoder (an MLM run on ``dataset``), with weights drawn large
    enough that attention to padding would show; returns (the encoder in eval mode, tokenizer)."""
    tokenizer = make_tokenizer(tokenizer_name)
    torch.manual_seed(0)
    encoder = build_backbone({**TINY_TRANSFORMER, **backbone}, 0, 0, tokenizer)
    with torch.no_grad():
        for parameter in encoder.parameters():
            nn.init.normal_(parameter, std=0.5)
    modality = MODALITIES.get(tokenizer.name)(tokenizer, max_length)
    _save_run(Path(run_dir), encoder, modality.encoder_spec(encoder, spec_config(dataset)),
              ["method.name=mlm", "backbone.name=transformer-tiny",
               f"data.max_length={max_length}", "eval.batch_size=512"])
    return encoder.eval(), tokenizer


def save_image_run(run_dir: Path, dataset: str = "digits") -> nn.Module:
    """A run dir of a tiny, untrained small CNN for 1-channel 8×8 images of ``dataset``."""
    torch.manual_seed(0)
    encoder = build_backbone(TINY_CNN, 1, 8)
    _save_run(Path(run_dir), encoder,
              ImageModality((1, 8, 8)).encoder_spec(encoder, spec_config(dataset, TINY_CNN)),
              ["backbone.name=small-cnn"])
    return encoder
