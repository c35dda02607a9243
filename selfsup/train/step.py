"""One optimiser step: the only place in selfsup where a loss is backpropagated.

Pretraining (:mod:`selfsup.train.trainer`) and fine-tuning (:mod:`selfsup.evaluate.finetune`)
both step through :func:`train_step`: gradient accumulation over micro-batches, DDP's single
all-reduce, mixed precision with the fp16 loss scaler, gradient clipping, the optimiser step.
A step module is anything that maps a list of tensors (a batch of views, or a classifier's
inputs and labels) to a :class:`~selfsup.methods.base.StepOutput`.
"""

from __future__ import annotations

import contextlib
from typing import Optional, Sequence

import torch
from torch import nn

from selfsup.methods.base import Method, StepOutput
from selfsup.train.device import autocast
from selfsup.train.distributed import all_reduce_sum_, no_sync


def train_step(step_fn: nn.Module, micro_batches: Sequence[list[torch.Tensor]],
               optimizer: torch.optim.Optimizer, device: torch.device, precision: str = "fp32",
               clip_grad: float = 0.0, scaler: Optional[torch.amp.GradScaler] = None,
               method: Optional[Method] = None) -> tuple[torch.Tensor, StepOutput]:
    """One optimiser step on the mean loss of ``micro_batches`` (gradient accumulation).

    Each micro-batch is a list of views that ``step_fn`` (a method, or its DDP or compiled
    wrapper) turns into a ``StepOutput``; ``method`` is the method inside a wrapper (default:
    ``step_fn`` itself). Under DDP the gradients are all-reduced once, in the backward pass of the
    last micro-batch. With a ``scaler`` (fp16) the loss is scaled for the backward pass, the
    gradients are unscaled before clipping, and a step whose gradients overflowed is skipped (the
    scaler then lowers its scale). Micro-batches count equally, or by ``micro_batch_weights``
    where the method weighs them (MLM: by masked tokens). Returns the step's loss (detached, on
    the device: no host sync) and the last micro-batch's output.
    """
    count = len(micro_batches)
    weights = micro_batch_weights(step_fn if method is None else method, micro_batches, device)
    total = torch.zeros((), device=device)
    for i, views in enumerate(micro_batches):
        with no_sync(step_fn) if i + 1 < count else contextlib.nullcontext():
            with autocast(device, precision):
                out = step_fn(views)
            loss = out.loss.float()
            # the (weighted) mean over micro-batches, one backward pass at a time
            share = loss / count if weights is None else loss * weights[i]
            (share if scaler is None else scaler.scale(share)).backward()
        total += share.detach()
    if scaler is not None:
        scaler.unscale_(optimizer)
    if clip_grad > 0:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, clip_grad)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return total, out


def micro_batch_weights(method: Method, micro_batches: Sequence[list[torch.Tensor]],
                        device: torch.device) -> Optional[torch.Tensor]:
    """(k,) shares of the step's loss for ``k`` micro-batches, summing to 1, from the method's
    ``loss_weight`` (e.g. masked tokens) summed over the processes; None when there is one
    micro-batch or the method weighs them equally.

    With micro-batch losses that are means over their own terms (under DDP: over every process's
    terms of that micro-batch), weighting micro-batch i by its share of the step's terms makes the
    accumulated gradient that of the mean over all the step's terms: exactly one big batch.
    """
    if len(micro_batches) == 1:
        return None
    if not isinstance(method, Method):  # a DDP or compiled wrapper would hide loss_weight
        raise TypeError(f"weighing micro-batches needs the method itself, got a "
                        f"{type(method).__name__}: pass train_step(..., method=...) with the "
                        "method inside the wrapper")
    raw = [method.loss_weight(views) for views in micro_batches]
    if any(weight is None for weight in raw):
        return None
    weights = torch.stack([torch.as_tensor(w, device=device) for w in raw]).float()
    all_reduce_sum_(weights)  # micro-batch i of every process is one part of the global batch
    return weights / weights.sum().clamp(min=1)


def split_views(views: list[torch.Tensor], parts: int) -> list[list[torch.Tensor]]:
    """``parts`` micro-batches of views: sample slices of equal size, every view cut alike."""
    return [list(micro) for micro in zip(*(view.tensor_split(parts) for view in views))]
