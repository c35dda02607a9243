"""MoCo v2 and MoCo v3: queries trained to pick out their own key among negatives, where keys come
from a momentum (EMA) copy of the query network.

MoCo v2 (Chen, Fan, Girshick & He 2020, "Improved baselines with momentum contrastive learning")
contrasts each query with its positive key and a FIFO queue of keys from earlier batches.
MoCo v3 (Chen, Xie & He 2021, "An empirical study of training self-supervised vision
transformers") drops the queue (the other keys of the batch are the negatives), adds a predictor
on the query side and raises the momentum to 1 on a cosine schedule.

Shared by both: the online path encoder → projector, a key encoder that is an EMA copy of that
path (``MomentumTarget``), keys computed under ``no_grad`` (gradients flow only through the
queries), and a loss symmetrised over the two views: each view's query is matched with the other
view's key.

Shuffling BN: with several GPUs, MoCo shuffles the key batch across processes so that BatchNorm
statistics cannot reveal which key belongs to the query's batch. This library uses SyncBatchNorm
instead under data parallelism (its default for both methods, see ``selfsup.train.distributed``):
every process then normalises with the statistics of the global batch, exactly as one process
with the whole batch does, so no process-specific statistics can leak into the loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.errors import ConfigError
from selfsup.heads import MLPHead
from selfsup.losses import info_nce, queue_info_nce
from selfsup.methods.base import Method, StepOutput
from selfsup.momentum import MomentumTarget
from selfsup.registry import METHODS

MOMENTUM_SCHEDULES = ("constant", "cosine")


@dataclass
class MoCoV2Options:
    """MoCo v2 settings. Paper values (ImageNet, ResNet-50) and what changes for small data sets.

    temperature: 0.2, as in the paper.
    proj_hidden_dim: 0 means the encoder's width (the paper's 2048 is ResNet-50's width).
    proj_dim: 128, as in the paper.
    queue_size: number of keys in the queue of negatives. The paper uses 65536 (5% of ImageNet);
        4096 suits data sets of tens of thousands of images such as Fashion-MNIST. Both views' keys
        are queued, so the queue holds the last queue_size / 2 images: keep that well below the
        number of training images, or an image's own key from the last epoch becomes a negative.
    momentum: 0.99 (the paper's 0.999 makes the key encoder lag ~1000 steps, i.e. many epochs of a
        small data set).
    momentum_schedule: "constant" (MoCo v2) or "cosine" (rising to 1, as in BYOL and MoCo v3).
    """

    temperature: float = 0.2
    proj_hidden_dim: int = 0
    proj_dim: int = 128
    queue_size: int = 4096
    momentum: float = 0.99
    momentum_schedule: str = "constant"


@dataclass
class MoCoV3Options:
    """MoCo v3 settings. Paper values and what changes for small data sets.

    temperature: 0.2, the paper's value for ViTs (its ResNet-50 recipe uses 1.0).
    proj_hidden_dim / pred_hidden_dim: 0 means the encoder's width (the paper uses 4096; a 4096-wide
        MLP is oversized for a 512-wide ResNet-18 on 28×28 images).
    proj_dim: 256, as in the paper (output of both the projector and the predictor).
    momentum: 0.99 at the start, as in the paper.
    momentum_schedule: "cosine" (the paper: the momentum rises to 1) or "constant".
    """

    temperature: float = 0.2
    proj_hidden_dim: int = 0
    proj_dim: int = 256
    pred_hidden_dim: int = 0
    momentum: float = 0.99
    momentum_schedule: str = "cosine"


def _check_options(options: Union[MoCoV2Options, MoCoV3Options]) -> None:
    if options.momentum_schedule not in MOMENTUM_SCHEDULES:
        raise ConfigError(f"method.momentum_schedule must be one of {', '.join(MOMENTUM_SCHEDULES)}, "
                          f"got {options.momentum_schedule!r}")
    if not 0.0 <= options.momentum <= 1.0:
        raise ConfigError(f"method.momentum must lie in [0, 1] (typically 0.99), got {options.momentum}")
    if options.temperature <= 0:
        raise ConfigError(f"method.temperature must be positive (typically 0.2), got {options.temperature}")


class KeyQueue(nn.Module):
    """A FIFO queue of ``size`` keys of width ``dim``, kept as buffers so checkpoints hold it.

    The t-th key ever pushed lands in slot t mod size: each push overwrites the oldest keys, any
    batch size wraps around the end, and a batch larger than the queue leaves only its newest
    ``size`` keys. It starts with random unit vectors, as in MoCo.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1:
            raise ConfigError(f"method.queue_size must be at least 1 (typically 4096), got {size}")
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))  # the oldest slot

    @torch.no_grad()
    def push(self, keys: torch.Tensor) -> None:
        """Write ``keys`` (N, dim) over the oldest entries, detached; no host-device sync."""
        size = len(self.keys)
        newest = keys.detach()[-size:]
        first = self.pointer + (len(keys) - len(newest))  # skipped keys still advance the slots
        slots = (first + torch.arange(len(newest), device=self.keys.device)) % size
        self.keys.index_copy_(0, slots, newest.to(self.keys.dtype))
        self.pointer.copy_((self.pointer + len(keys)) % size)


class MomentumContrast(Method):
    """What MoCo v2 and v3 share: the projector, the momentum key encoder and its update."""

    def __init__(self, encoder: nn.Module, options: Union[MoCoV2Options, MoCoV3Options],
                 proj_layers: int, proj_last_bn: bool) -> None:
        super().__init__(encoder)
        _check_options(options)
        self.options = options
        width = encoder.out_dim
        self.projector = MLPHead(width, options.proj_hidden_dim or width, options.proj_dim,
                                 proj_layers, last_bn=proj_last_bn)
        # A constant schedule is a cosine schedule whose end equals its start.
        final = 1.0 if options.momentum_schedule == "cosine" else options.momentum
        self.key_encoder = MomentumTarget(self._online_key_path(), options.momentum, final)
        self.gather = None  # set by the distributed trainer
        self.rank = 0

    def _online_key_path(self) -> nn.Module:
        """The online network the key encoder follows (a view of shared modules, not a copy)."""
        return nn.Sequential(self.encoder, self.projector)

    @torch.no_grad()
    def keys(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """L2-normalised keys of each view from the momentum encoder; they carry no gradient."""
        k = F.normalize(self.key_encoder(torch.cat(views)).float(), dim=1)
        return list(k.chunk(len(views)))

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        self.key_encoder.update(self._online_key_path(), step, total_steps)



@METHODS.register("mocov2", "MoCo v2: contrastive, momentum key encoder and a FIFO queue of negatives")
class MoCoV2(MomentumContrast):
    """MoCo v2 with a 2-layer projector and a queue; the loss is symmetrised over the two views,
    ½[ℓ(q₁, k₂) + ℓ(q₂, k₁)] with ℓ = ``queue_info_nce`` (the paper's loss is one-sided)."""

    Options = MoCoV2Options
    view_recipe = "simclr"
    # Starting point: solo-learn's CIFAR-10 ResNet-18 recipe (lr per 256 images); not yet
    # tuned on Fashion-MNIST.
    config_defaults = {"optim": {"name": "sgd", "lr": 0.3, "weight_decay": 1e-4}}

    def __init__(self, encoder: nn.Module, options: MoCoV2Options | None = None) -> None:
        options = options or MoCoV2Options()
        super().__init__(encoder, options, proj_layers=2, proj_last_bn=False)
        self.queue = KeyQueue(options.queue_size, options.proj_dim)

    def forward(self, views: list[torch.Tensor]) -> StepOutput:
        q1, q2 = self.projector(self.encoder(torch.cat(views[:2]))).chunk(2)
        k1, k2 = self.keys(views[:2])
        negatives = self.queue.keys  # read before this step's keys are pushed below
        tau = self.options.temperature
        loss = (queue_info_nce(q1, k2, negatives, tau) + queue_info_nce(q2, k1, negatives, tau)) / 2
        if self.training:  # an evaluation pass must not change the dictionary
            # Under DDP every process pushes the keys of the global batch, view by view: the
            # queues stay identical and hold what one process with the whole batch would hold.
            gather = self.gather or (lambda keys: keys)
            self.queue.push(torch.cat([gather(k1), gather(k2)]))
        return StepOutput(loss=loss, embeddings=q1)


@METHODS.register("mocov3", "MoCo v3: contrastive, momentum encoder, predictor, in-batch negatives")
class MoCoV3(MomentumContrast):
    """MoCo v3: encoder → 3-layer projector → 2-layer predictor on the query side; the loss is
    ctr(q₁, k₂) + ctr(q₂, k₁) with ctr = InfoNCE over the batch's keys × 2τ (the paper's code)."""

    Options = MoCoV3Options
    view_recipe = "byol"  # MoCo v3 uses BYOL's asymmetric augmentations
    # Starting point: solo-learn's CIFAR-10 ResNet-18 recipe (lr per 256 images); not yet
    # tuned on Fashion-MNIST.
    config_defaults = {"optim": {"name": "lars", "lr": 0.3, "weight_decay": 1e-6}}

    def __init__(self, encoder: nn.Module, options: MoCoV3Options | None = None) -> None:
        options = options or MoCoV3Options()
        super().__init__(encoder, options, proj_layers=3, proj_last_bn=True)
        self.predictor = MLPHead(options.proj_dim, options.pred_hidden_dim or encoder.out_dim,
                                 options.proj_dim, num_layers=2)

    def _contrast(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        # Negatives are the keys of the whole (gathered) batch; query i's positive is key i of
        # this process's slice.
        all_keys = self.gather(keys) if self.gather is not None else keys
        positives = torch.arange(len(queries), device=queries.device) + self.rank * len(queries)
        tau = self.options.temperature
        return info_nce(queries, all_keys, positives, tau) * (2 * tau)

    def forward(self, views: list[torch.Tensor]) -> StepOutput:
        z = self.projector(self.encoder(torch.cat(views[:2])))
        q1, q2 = self.predictor(z).chunk(2)
        k1, k2 = self.keys(views[:2])
        loss = self._contrast(q1, k2) + self._contrast(q2, k1)
        return StepOutput(loss=loss, embeddings=z.chunk(2)[0])
