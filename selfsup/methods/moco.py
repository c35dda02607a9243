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

Shuffling BN (MoCo v2): BatchNorm statistics are shared by every sample of a batch, so a query and
its positive key normalised with the statistics of the same images carry a common batch signature
that the queue's keys, from other batches, lack; the network can then pick out the positive by
that signature instead of by the image ("cheating the pretext task", MoCo §3.3). MoCo shuffles the
key batch across its 8 GPUs, whose BatchNorms are per GPU, so the statistics of a query and of its
positive key come from different subsets. Here the key encoder's BatchNorm layers normalise
``bn_splits`` random sub-batches of the keys separately (``SplitBatchNorm``), whatever the number
of processes: the keys of the global batch (both views) are put in a random order that every
process draws alike, cut into ``bn_splits`` sub-batches of consecutive keys, each process encodes
its share of the sub-batches, and the keys are gathered and put back in their order. One process
thus computes what N processes compute, much as the official single-GPU CIFAR demo simulates 8 GPUs
with ``--bn-splits 8``. Unlike the demo, the queries are not split: their statistics cover the whole
batch (SyncBatchNorm under data parallelism), which keeps them and their running statistics the
same for any number of processes, while each key's statistics come from a random 1/bn_splits of
it. MoCo v3 needs none of this: its negatives are the other keys of the same batch, which share
the signature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.errors import ConfigError
from selfsup.heads import MLPHead
from selfsup.losses import info_nce, queue_info_nce
from selfsup.methods.base import BuildContext, Method, NO_CONTEXT, StepOutput
from selfsup.momentum import MomentumTarget
from selfsup.registry import METHODS

MOMENTUM_SCHEDULES = ("constant", "cosine")


@dataclass
class MoCoV2Options:
    """MoCo v2 settings. Paper values (ImageNet, ResNet-50) and what changes for small data sets.

    temperature: 0.2, as in the paper.
    proj_hidden_dim: 0 means the encoder's width (the paper's 2048 is ResNet-50's width).
    proj_dim: 128, as in the paper.
    queue_size: number of keys in the queue of negatives; 0 (default) sets it from the number of
        training samples N (see ``default_queue_size``): 4096 (suits tens of thousands of images,
        such as Fashion-MNIST), 65536 from a million samples on (the paper's ImageNet setting, 5% of
        its 1.28 M images), and never more than N / 2. Both views' keys are queued, so the queue
        holds the last queue_size / 2 images: keep that well below N, or a query's own image,
        seen in the last epoch, shows up among its negatives. A number > 0 is used as given.
    batch_negatives: true (default) contrasts each query with the queue *and* the keys of the
        other images of the current (global) batch (InfoNCE over queue + batch); false is the
        paper's loss, whose only negatives are the queue's. The batch's keys are
        the freshest negatives (from this step's key encoder; the queue's are up to
        queue_size / (2 × batch) steps old) and each already comes from one random sub-batch of
        shuffling BN, as the positive does, so they add no batch signature that would give the
        positive away (module docstring). Cost: (local batch × global batch) more logits next to
        the (local batch × queue_size) of the queue.
    momentum: 0.99 (the paper's 0.999 makes the key encoder lag ~1000 steps, i.e. many epochs of a
        small data set).
    momentum_schedule: "constant" (MoCo v2) or "cosine" (rising to 1, as in BYOL and MoCo v3).
    bn_splits: the key encoder's BatchNorm statistics come from this many random sub-batches of the
        global batch's 2 × batch_size keys (shuffling BN, see the module docstring): 8, the paper's
        number of GPUs and the official CIFAR demo's default. 1 turns shuffling off (one batch,
        SyncBatchNorm under data parallelism). It must divide the number of keys into sub-batches of
        at least 2 and, with several processes, be a multiple of their number.
    """

    temperature: float = 0.2
    proj_hidden_dim: int = 0
    proj_dim: int = 128
    queue_size: int = 0
    batch_negatives: bool = True
    momentum: float = 0.99
    momentum_schedule: str = "constant"
    bn_splits: int = 8


SMALL_QUEUE, LARGE_QUEUE = 4096, 65536
LARGE_DATA = 1_000_000  # training samples from which the paper's 65536-key queue is the default


def default_queue_size(num_train: int | None) -> int:
    """MoCo v2's queue length for a training set of ``num_train`` samples (None: unknown).

    4096 below a million samples, 65536 from a million on, and at most ``num_train // 2`` (but at
    least 1). Why the cap: both views' keys are queued, so a queue of Q keys spans the last Q / 2
    images. An image seen at position p of an epoch and p' of the one before (independent uniform
    positions in a shuffled data set of N images) meets its own stale key among its negatives when
    p + N − p' ≤ Q / 2, which happens for a fraction (Q / 2N)² / 2 of the queries: 1/32 at the cap
    Q = N / 2, 1/8 at Q = N (a queue as long as the data set), 1/2 at Q = 2N and every query from
    Q = 4N on. Unknown size (a method built outside the trainer): 4096, as before.
    """
    if num_train is None:
        return SMALL_QUEUE
    if num_train < 1:
        raise ConfigError(f"MoCo v2 needs training samples to size its queue, got {num_train}")
    size = LARGE_QUEUE if num_train >= LARGE_DATA else SMALL_QUEUE
    return max(1, min(size, num_train // 2))


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

    ``size_from_checkpoint``: loading a state dict takes the saved queue's length. For a queue
    sized from the training set (MoCo v2's default), which code that rebuilds a method from its
    config alone (e.g. for pictures) does not know; a size given outright must match, as every
    other buffer's.
    """

    def __init__(self, size: int, dim: int, size_from_checkpoint: bool = False) -> None:
        super().__init__()
        if size < 1:
            raise ConfigError(f"method.queue_size must be at least 1 (typically 4096), got {size}")
        self.size_from_checkpoint = size_from_checkpoint
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

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        saved = state_dict.get(prefix + "keys")
        if (self.size_from_checkpoint and isinstance(saved, torch.Tensor) and saved.dim() == 2
                and saved.shape[1] == self.keys.shape[1] and len(saved) != len(self.keys)):
            self.keys = self.keys.new_empty(saved.shape)  # the load below fills it
        super()._load_from_state_dict(state_dict, prefix, *args)


class SplitBatchNorm(nn.Module):
    """A BatchNorm layer that in training normalises ``groups`` sub-batches of consecutive samples
    each with its own statistics; in evaluation it is the BatchNorm it replaces.

    It holds the replaced layer's tensors under the same names (the state dict and the parameter
    and buffer order are unchanged, so EMA updates and checkpoints see no difference). Training
    leaves its running statistics alone: the key encoder is a momentum target whose buffers are
    copied from the query encoder after every step (``MomentumTarget``), so statistics tracked here
    would be overwritten unread. Not being a ``_BatchNorm``, it is left alone by the SyncBatchNorm
    conversion: its sub-batches are meant to stay within one process.
    """

    def __init__(self, batchnorm: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.eps = batchnorm.eps
        self.weight, self.bias = batchnorm.weight, batchnorm.bias
        self.register_buffer("running_mean", batchnorm.running_mean)
        self.register_buffer("running_var", batchnorm.running_var)
        self.register_buffer("num_batches_tracked", batchnorm.num_batches_tracked)
        self.groups = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and self.running_mean is not None:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)
        groups, channels = self.groups, x.shape[1]
        # Sub-batch g's channels become channels g·C … (g + 1)·C − 1 of one batch of N / groups
        # samples, so one batch_norm call normalises every sub-batch with its own statistics.
        grouped = x.unflatten(0, (groups, -1)).transpose(0, 1).flatten(1, 2)

        def repeat(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.repeat(groups)

        y = F.batch_norm(grouped, None, None, repeat(self.weight), repeat(self.bias), True, 0.0,
                         self.eps)
        return y.unflatten(1, (groups, channels)).transpose(0, 1).flatten(0, 1)


def split_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer in ``module`` by a ``SplitBatchNorm`` holding its tensors (in
    place, keeping the order of the modules); returns the module."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return SplitBatchNorm(module)
    for name, child in module.named_children():
        module.add_module(name, split_batchnorm(child))
    return module


class MomentumContrast(Method):
    """What MoCo v2 and v3 share: the projector, the momentum key encoder and its update."""

    compares_samples = True

    def __init__(self, encoder: nn.Module, options: Union[MoCoV2Options, MoCoV3Options],
                 context: BuildContext, proj_layers: int, proj_last_bn: bool) -> None:
        super().__init__(encoder, context)
        _check_options(options)
        self.options = options
        width = encoder.out_dim
        self.projector = MLPHead(width, options.proj_hidden_dim or width, options.proj_dim,
                                 proj_layers, last_bn=proj_last_bn)
        # A constant schedule is a cosine schedule whose end equals its start.
        final = 1.0 if options.momentum_schedule == "cosine" else options.momentum
        self.key_encoder = MomentumTarget(self._online_key_path(), options.momentum, final)

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
    ½[ℓ(q₁, k₂) + ℓ(q₂, k₁)] (the paper's loss is one-sided), with ℓ InfoNCE whose negatives are
    the queue and, with ``batch_negatives``, the other images' keys of the (global) batch:
    ``info_nce`` over [batch keys; queue], else ``queue_info_nce`` over the queue alone.

    ``context.num_train``, the number of training samples, sets the default
    queue length (``default_queue_size``). Evaluation uses the query encoder (``encoder``), as the
    paper does; the key encoder is its EMA.
    """

    Options = MoCoV2Options
    view_recipe = "simclr"
    # Starting point: solo-learn's CIFAR-10 ResNet-18 recipe (lr per 256 images); not yet
    # tuned on Fashion-MNIST.
    config_defaults = {"optim": {"name": "sgd", "lr": 0.3, "weight_decay": 1e-4}}

    def __init__(self, encoder: nn.Module, options: MoCoV2Options | None = None,
                 context: BuildContext = NO_CONTEXT) -> None:
        options = options or MoCoV2Options()
        if options.bn_splits < 1:
            raise ConfigError(f"method.bn_splits must be at least 1 (8: shuffling BN over 8 "
                              f"sub-batches; 1: off), got {options.bn_splits}")
        if options.queue_size < 0:
            raise ConfigError(f"method.queue_size must be positive, or 0 to size the queue from the "
                              f"training set (4096, 65536 from a million samples), got "
                              f"{options.queue_size}")
        super().__init__(encoder, options, context, proj_layers=2, proj_last_bn=False)
        self.queue = KeyQueue(options.queue_size or default_queue_size(context.num_train), options.proj_dim,
                              size_from_checkpoint=options.queue_size == 0)
        if options.bn_splits > 1:
            split_batchnorm(self.key_encoder.net)
        # The key order of a step is drawn from a generator seeded with (shuffle_seed, number of
        # shuffles so far): every process draws the same order without communicating, a resumed
        # run the same orders as one that never stopped (both numbers are in the state dict), and
        # the global random stream (which differs between processes) is left alone.
        self.shuffle_seed = int(torch.randint(2**62, ()))
        self.shuffles_done = 0
        if options.bn_splits > 1 and MoCoV2.key_order is MoCoV2._key_order:
            # A Python counter and a fresh generator: compiled, key_order would recompile every
            # step. Disabled on the class (so copies of the module stay separate) when the first
            # MoCo v2 is built, not by a decorator, which would import torch._dynamo (~1 s) on
            # every `import selfsup`.
            MoCoV2.key_order = torch.compiler.disable(MoCoV2._key_order)

    def forward(self, views: list[torch.Tensor]) -> StepOutput:
        q1, q2 = self.projector(self.encoder(torch.cat(views[:2]))).chunk(2)
        if self.training:
            # Keys of the global batch (every process's samples, view by view): this process's own
            # are its slice; the queue takes them all, so every process's queue stays identical
            # and holds what one process with the whole batch would hold.
            global_keys = self.global_keys(views[:2])
            first = self.rank * len(q1)
        else:  # an evaluation pass must not change the dictionary, nor talk to other processes
            global_keys, first = self.keys(views[:2]), 0
        k1, k2 = global_keys
        queue = self.queue.keys  # read before this step's keys are pushed below
        loss = (self._contrast(q1, k2, first, queue) + self._contrast(q2, k1, first, queue)) / 2
        if self.training:
            self.queue.push(torch.cat(global_keys))
        return StepOutput(loss=loss, embeddings=q1)

    def _contrast(self, queries: torch.Tensor, batch_keys: torch.Tensor, first: int,
                  queue: torch.Tensor) -> torch.Tensor:
        """InfoNCE of ``queries`` whose positives are rows ``first …`` of ``batch_keys`` (the
        global batch's keys of the other view); negatives: the queue, and with
        ``batch_negatives`` the other rows of ``batch_keys``."""
        tau = self.options.temperature
        if not self.options.batch_negatives:
            return queue_info_nce(queries, batch_keys.narrow(0, first, len(queries)), queue, tau)
        positives = torch.arange(len(queries), device=queries.device) + first
        return info_nce(queries, torch.cat([batch_keys, queue]), positives, tau)

    @torch.no_grad()
    def global_keys(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each view's L2-normalised keys for the global batch, in rank order, with the key
        encoder's BatchNorm over ``bn_splits`` random sub-batches (see the module docstring)."""
        gather = self.gather or (lambda x: x)
        splits = self.options.bn_splits
        if splits == 1:
            return [gather(k) for k in self.keys(views)]
        inputs = torch.cat([gather(v) for v in views])
        processes = len(inputs) // sum(len(v) for v in views)
        _check_bn_splits(splits, len(inputs), processes)
        order = self.key_order(len(inputs), inputs.device)
        share = len(inputs) // processes
        for layer in self.key_encoder.modules():
            if isinstance(layer, SplitBatchNorm):
                layer.groups = splits // processes
        mine = order.narrow(0, self.rank * share, share)
        shuffled = gather(F.normalize(self.key_encoder(inputs[mine]).float(), dim=1))
        keys = torch.empty_like(shuffled).index_copy_(0, order, shuffled)  # keys[order[i]] = i-th
        return list(keys.chunk(len(views)))

    def _key_order(self, count: int, device: torch.device) -> torch.Tensor:
        """The next random order of ``count`` keys (the same on every process; see ``__init__``)."""
        generator = torch.Generator(device=device)
        generator.manual_seed((self.shuffle_seed + self.shuffles_done) % 2**63)
        self.shuffles_done += 1
        return torch.randperm(count, generator=generator, device=device)

    key_order = _key_order  # run outside torch.compile (see __init__)

    def get_extra_state(self) -> dict[str, Any]:
        return {"shuffle_seed": self.shuffle_seed, "shuffles_done": self.shuffles_done}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.shuffle_seed = int(state["shuffle_seed"])
        self.shuffles_done = int(state["shuffles_done"])


def _check_bn_splits(splits: int, keys: int, processes: int) -> None:
    """Shuffling BN needs sub-batches of ≥ 2 keys, whole sub-batches on every process."""
    if keys % splits or keys // splits < 2:
        raise ConfigError(f"method.bn_splits={splits} must cut the {keys} keys of a forward pass "
                          f"(2 views × {keys // 2} images over all processes) into equal sub-batches "
                          f"of at least 2; choose a divisor of {keys} up to {keys // 2}, or 1 to "
                          "turn shuffling BN off")
    if splits % processes:
        raise ConfigError(f"method.bn_splits={splits} must be a multiple of the number of processes "
                          f"({processes}), so that each encodes whole sub-batches; e.g. "
                          f"method.bn_splits={processes * max(1, splits // processes)}")


@METHODS.register("mocov3", "MoCo v3: contrastive, momentum encoder, predictor, in-batch negatives")
class MoCoV3(MomentumContrast):
    """MoCo v3: encoder → 3-layer projector → 2-layer predictor on the query side; the loss is
    ctr(q₁, k₂) + ctr(q₂, k₁) with ctr = InfoNCE over the batch's keys × 2τ (the paper's code).
    Evaluation uses the query encoder (``encoder``), as the paper does."""

    Options = MoCoV3Options
    view_recipe = "byol"  # MoCo v3 uses BYOL's asymmetric augmentations
    # Starting point: solo-learn's CIFAR-10 ResNet-18 recipe (lr per 256 images); not yet
    # tuned on Fashion-MNIST.
    config_defaults = {"optim": {"name": "lars", "lr": 0.3, "weight_decay": 1e-6}}

    def __init__(self, encoder: nn.Module, options: MoCoV3Options | None = None,
                 context: BuildContext = NO_CONTEXT) -> None:
        options = options or MoCoV3Options()
        super().__init__(encoder, options, context, proj_layers=3, proj_last_bn=True)
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
