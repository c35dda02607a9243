"""Data-parallel training with PyTorch's own engine: ``torchrun``, ``torch.distributed`` and DDP.

``selfsup pretrain`` runs unchanged under ``torchrun --nproc-per-node N [--nnodes M ...]``:
torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and the rendezvous address) in each
process's environment; the trainer reads them with ``process.process_info``, takes the GPU of
its local rank (or the CPU), and joins the process group (NCCL on GPUs, gloo on CPUs).

What makes N processes train exactly like one process on the N-times larger batch:

* **Losses that need the whole batch** (SimCLR, MoCo, DINO's centre, Barlow Twins, VICReg) read
  the global batch through the ``gather`` of the ``Collectives`` they are built with
  (``process_collectives``), ``all_gather_with_grad``: every process sees the embeddings of all processes,
  and the backward pass returns to each process the gradient of *every* process's loss with respect
  to its own embeddings. A process's loss is then a function of the global batch, and DDP's
  gradient average (1/N Σ over processes) is the gradient of the mean of the N losses, which is the
  loss of the global batch. (A gather whose backward returned only the local part of the gradient
  would give gradients off by the other processes' terms; one that is not differentiable would lose
  them.) ``tests/test_distributed.py`` checks each method against a single process.
* **BatchNorm** normalises over the batch it sees. With per-process statistics the loss of a
  method that compares samples (negatives, cross-correlations) could tell samples of its own
  process from the others' by their statistics, so those methods (``compares_samples``)
  convert BatchNorm to SyncBatchNorm by default (``sync_batchnorm_default``): statistics over the global batch, the
  same as one process. torch's ``nn.SyncBatchNorm`` has CUDA kernels only (and DDP refuses it in CPU
  modules); on CPUs ``CPUSyncBatchNorm`` computes the same statistics with differentiable
  all-reduces, so CPU/gloo runs are exact too.
* Methods without a cross-sample loss (BYOL, SimSiam, MAE, ...) keep per-process BatchNorm by
  default (faster; each process's statistics are its own shard's, the usual DDP behaviour) and
  can turn SyncBatchNorm on with ``train.sync_bn=true``.

Every process must make the same collective calls in the same order: rank-dependent work (logging,
checkpoints, health checks) runs on rank 0 with the unwrapped module in eval mode, which never
communicates.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Iterator, Optional, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from selfsup.errors import ConfigError
from selfsup.methods.base import Collectives, Method
from selfsup.train.device import resolve_device
from selfsup.train.process import ProcessInfo

T = TypeVar("T")


def training_device(info: ProcessInfo, requested: str = "auto") -> torch.device:
    """The device of this process: one GPU per local rank under torchrun, else ``resolve_device``."""
    if not info.distributed:
        return resolve_device(requested)
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if requested not in ("auto", "cuda"):
        raise ConfigError(f"train.device={requested!r}: under torchrun each process uses the GPU of "
                          "its local rank; use train.device=auto (or cuda, or cpu)")
    if not torch.cuda.is_available():
        raise ConfigError("train.device=cuda, but this machine has no CUDA GPU; use cpu")
    if info.local_rank >= torch.cuda.device_count():
        raise ConfigError(f"local rank {info.local_rank} has no GPU: this node has "
                          f"{torch.cuda.device_count()}; start at most that many processes per node "
                          "(torchrun --nproc-per-node)")
    return torch.device("cuda", info.local_rank)


@contextlib.contextmanager
def process_group(info: ProcessInfo, device: torch.device) -> Iterator[None]:
    """Join the default process group for the duration of a run (nothing for one process).

    NCCL for GPUs, gloo for CPUs; the rendezvous comes from torchrun's environment variables. A
    group that already exists (set up by the caller) is used as it is and left in place.
    """
    created = False
    if info.distributed and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)  # NCCL's communicator uses the current device
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
        created = True
    try:
        yield
    finally:
        if created:
            dist.destroy_process_group()


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def broadcast_from_main(value: T) -> T:
    """Rank 0's ``value`` (any picklable object) on every process; ``value`` itself for one
    process. Every process must call it, and the others wait in it until rank 0 does: it is also
    a barrier behind work that rank 0 alone does (a file it writes for the others)."""
    if _world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ------------------------------------------------------------------------------------------------
# differentiable collectives


class _AllGather(torch.autograd.Function):
    """Concatenate equal-sized tensors of all processes in rank order; the backward pass sums each
    slice's gradient over the processes (every process's loss may depend on it) and returns this
    process its own slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # An all-reduce rather than a reduce-scatter: gloo has no reduce-scatter, and the gathered
        # tensors (embeddings, statistics) are small.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad.narrow(0, ctx.rank * ctx.rows, ctx.rows)


class _AllReduceSum(torch.autograd.Function):
    """Σ over processes; every process's loss sees the sum, so the gradient is summed back too."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        total = x.contiguous().clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(N·B, ...) from each process's (B, ...), in rank order, differentiable (the ``gather`` hook of
    the losses). Every process must pass the same shape. Identity for one process."""
    return _AllGather.apply(x) if _world_size() > 1 else x


def all_reduce_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Σ of ``x`` over processes, differentiable. Identity for one process."""
    return _AllReduceSum.apply(x) if _world_size() > 1 else x


def all_reduce_sum_(x: torch.Tensor) -> torch.Tensor:
    """In-place Σ over processes of a tensor that needs no gradient (logged losses, flags)."""
    if _world_size() > 1:
        dist.all_reduce(x)
    return x


# ------------------------------------------------------------------------------------------------
# SyncBatchNorm


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch for CPU processes (gloo), where torch's SyncBatchNorm does not
    run (it needs CUDA kernels, and DDP refuses it in CPU modules).

    In a distributed training pass the statistics come from two differentiable all-reduces: Σx
    with the sample count gives the mean, then Σ(x − mean)² the biased variance (two passes: no
    cancellation as in E[x²] − E[x]²). Otherwise (evaluation, one process) it is plain BatchNorm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input (N, C, ...), got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or _world_size() == 1:
            return super().forward(x)
        self._check_input_dim(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as in torch
                factor = 1.0 / float(self.num_batches_tracked)
        dims = [0, *range(2, x.dim())]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        xf = x.float()
        local_count = xf.new_tensor([x.numel() // x.shape[1]])
        totals = all_reduce_with_grad(torch.cat([xf.sum(dims), local_count]))
        count = totals[-1]
        mean = totals[:-1] / count
        centred = xf - mean.view(shape)
        var = all_reduce_with_grad(centred.square().sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():  # the running variance is the unbiased one, as in torch
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                unbiased = var * count / (count - 1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm*d in ``module`` (target networks included) by one whose statistics
    cover the global batch: torch's ``SyncBatchNorm`` on GPUs, ``CPUSyncBatchNorm`` on CPUs. The
    parameters, running statistics and mode are kept. Returns the converted module."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, CPUSyncBatchNorm):
        synced = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                  module.track_running_stats)
        if module.affine:
            synced.weight, synced.bias = module.weight, module.bias  # the same Parameter objects
        if module.track_running_stats:
            synced.running_mean, synced.running_var = module.running_mean, module.running_var
            synced.num_batches_tracked = module.num_batches_tracked
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, device))
    return module


# ------------------------------------------------------------------------------------------------
# methods


def process_collectives(info: ProcessInfo) -> Collectives:
    """The collectives a method of this process is built with: the differentiable all-gather,
    the in-place all-reduce sum and the rank under torchrun; one process's identities alone."""
    if not info.distributed:
        return Collectives()
    return Collectives(gather=all_gather_with_grad, sum=all_reduce_sum_, rank=info.rank,
                       world_size=info.world_size)


def sync_batchnorm_default(method: Method) -> bool:
    """SyncBatchNorm by default for methods whose loss couples the samples of a batch.

    Read off the method's ``compares_samples`` (SimCLR, MoCo v2/v3, DINO, Barlow Twins, VICReg,
    equivariance, dna-contrastive): their loss compares each sample with the others (negatives)
    or with statistics of the batch, so BatchNorm statistics that differ between processes would
    leak into it. Per-sample losses (BYOL, SimSiam, MAE, autoencoders, pretext tasks) do not need
    it. BEiT declares it for its codebook, which learns from the global batch; its ViT has no
    BatchNorm, so the default changes nothing there.
    """
    return method.compares_samples


def prepare_method(method: Method, info: ProcessInfo, device: torch.device,
                   sync_bn: Optional[bool] = None) -> nn.Module:
    """Make a method ready for data-parallel training and return the module to call for a step.

    For one process: ``method`` itself, unchanged. Otherwise BatchNorm → SyncBatchNorm
    (``sync_bn``; None: ``sync_batchnorm_default``), then a DDP wrapper around it (the method was
    built with this process's collectives, ``process_collectives``). The method keeps its
    parameter objects, so an optimiser may be built on ``method.parameters()`` before or after;
    checkpoints should hold ``method.state_dict()``.

    DDP averages the gradients of the parameters that need them; target networks (requires_grad
    False) are left to the methods' ``after_step``, which computes the same update on every process.
    Buffers are not re-broadcast each step: queues and centres are filled from gathered values and
    stay identical on every process by construction.
    """
    if not info.distributed:
        return method
    if sync_batchnorm_default(method) if sync_bn is None else sync_bn:
        convert_sync_batchnorm(method, device)
    # DDP must search the graph for parameters without a gradient only where a method may leave
    # some out of a step (DINO's frozen prototypes); the search costs a graph traversal per step.
    return DistributedDataParallel(
        method,
        device_ids=[device.index] if device.type == "cuda" else None,
        **_NO_FORWARD_BUFFER_SYNC,
        find_unused_parameters=method.may_skip_parameters,
    )


# Buffers are synced once, when DDP starts; torch 2.13 renamed the option (the old name warns).
_DDP_OPTIONS = inspect.signature(DistributedDataParallel).parameters
_NO_FORWARD_BUFFER_SYNC = ({"forward_sync_buffers": False} if "forward_sync_buffers" in _DDP_OPTIONS
                           else {"broadcast_buffers": False})


def no_sync(module: nn.Module) -> contextlib.AbstractContextManager:
    """DDP's ``no_sync`` (gradients accumulate locally, no all-reduce) or a no-op for one process.

    ``module`` may be the DDP wrapper itself or a ``torch.compile`` of it."""
    module = getattr(module, "_orig_mod", module)  # what torch.compile wrapped
    if isinstance(module, DistributedDataParallel):
        return module.no_sync()
    return contextlib.nullcontext()
