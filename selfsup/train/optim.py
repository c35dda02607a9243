"""Optimisers: SGD with momentum, LARS, LAMB and AdamW, with biases and norm parameters excluded.

Biases and normalisation parameters (every parameter with fewer than 2 dimensions) and the learnt
ViT tokens (``NO_DECAY_NAMES``: class token, position table, mask token) get no weight decay and
no layer-wise trust-ratio scaling: decaying BatchNorm scales towards zero, or rescaling
their tiny updates by ||w|| / ||g||, hurts (You et al. 2017; the SimCLR and BYOL recipes exclude
them). ``param_groups`` puts them in a group with ``weight_decay=0`` and ``lars=False``; LARS and
LAMB read that flag (``lars`` = layer-wise adaptive rate scaling, the trust ratio, in either).
Groups flagged ``fixed_lr`` (a method's ``fixed_lr_modules``) keep their base rate while the
schedule (``lr_factor``, applied by ``set_learning_rates``) warms up and decays the others.

The learning rate of a config is per 256 images and scales with the global batch (``scaled_lr``):
linearly by default, lr = optim.lr × train.batch_size / 256 (Goyal et al. 2017, for SGD-like
optimisers), or with its square root, lr = optim.lr × √(train.batch_size / 256)
(``optim.lr_scaling=sqrt``; Malladi et al. 2022 derive it for Adam, whose normalised update
already grows with the gradient noise a small batch brings). train.batch_size counts the images
of one optimiser step over all processes and accumulation steps.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch
from torch import nn

from selfsup.config import LR_SCHEDULES, OptimConfig
from selfsup.errors import ConfigError

# learnt input tokens and position tables (ViT, MAE, BEiT): no weight decay (see ``decays``)
NO_DECAY_NAMES = ("cls_token", "pos_embed", "mask_token")


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017) on top of SGD with momentum.

    For a parameter w with gradient g in a group with ``lars=True``:
        g ← g + λ w;   g ← η ||w|| / ||g|| · g  (when both norms are > 0);
        v ← μ v + g;   w ← w − lr · v.
    Groups with ``lars=False`` take plain SGD-with-momentum steps (and their own weight decay).
    The update runs on whole lists of tensors (``torch._foreach_*``) so a ResNet step is a handful of
    kernel launches rather than several per parameter.
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9,
                 weight_decay: float = 0.0, eta: float = 0.02, lars: bool = True) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars=lars)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            if group["lars"]:
                param_norms = torch.stack(torch._foreach_norm(params))
                grad_norms = torch.stack(torch._foreach_norm(grads))
                trust = torch.where((param_norms > 0) & (grad_norms > 0),
                                    group["eta"] * param_norms / grad_norms,
                                    torch.ones_like(param_norms))
                grads = torch._foreach_mul(grads, list(trust.unbind()))
            buffers = []
            for p, g in zip(params, grads):
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buffers.append(state["momentum_buffer"])
            torch._foreach_mul_(buffers, group["momentum"])
            torch._foreach_add_(buffers, grads)
            torch._foreach_add_(params, buffers, alpha=-group["lr"])
        return loss


class LAMB(torch.optim.Optimizer):
    """LAMB, layer-wise adaptive moments (You et al. 2020, "Large batch optimization for deep
    learning: training BERT in 76 minutes", Algorithm 2): Adam's direction with LARS's trust ratio.

    For a parameter w with gradient g, at its t-th step:
        m ← β₁ m + (1 − β₁) g;   v ← β₂ v + (1 − β₂) g²;
        u = (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε) + λ w;
        w ← w − lr · ||w|| / ||u|| · u   (the ratio is 1 when either norm is 0).
    Groups with ``lars=False`` (biases, norms) take the step with ratio 1, i.e. Adam with decoupled
    weight decay λ (their group's λ is 0). The step count is per parameter, so a parameter that
    skips steps (no gradient) keeps a correct bias correction.
    """

    def __init__(self, params: Iterable, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, lars: bool = True) -> None:
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, lars=lars)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            beta1, beta2 = group["betas"]
            firsts, seconds, first_corrections, second_corrections = [], [], [], []
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                firsts.append(state["exp_avg"])
                seconds.append(state["exp_avg_sq"])
                first_corrections.append(1 - beta1 ** state["step"])
                second_corrections.append(1 - beta2 ** state["step"])
            grads = [p.grad for p in params]
            torch._foreach_lerp_(firsts, grads, 1 - beta1)
            torch._foreach_mul_(seconds, beta2)
            torch._foreach_addcmul_(seconds, grads, grads, value=1 - beta2)
            denominators = torch._foreach_sqrt(torch._foreach_div(seconds, second_corrections))
            torch._foreach_add_(denominators, group["eps"])
            updates = torch._foreach_div(torch._foreach_div(firsts, first_corrections), denominators)
            if group["weight_decay"]:
                torch._foreach_add_(updates, params, alpha=group["weight_decay"])
            if group["lars"]:
                param_norms = torch.stack(torch._foreach_norm(params))
                update_norms = torch.stack(torch._foreach_norm(updates))
                trust = torch.where((param_norms > 0) & (update_norms > 0),
                                    param_norms / update_norms, torch.ones_like(param_norms))
                torch._foreach_mul_(updates, list(trust.unbind()))
            torch._foreach_add_(params, updates, alpha=-group["lr"])
        return loss


def decays(name: str, param: torch.Tensor) -> bool:
    """Whether the parameter called ``name`` gets weight decay (and LARS/LAMB's trust ratio):
    weight matrices and kernels do; biases, norms and the learnt tokens and position tables of
    ``NO_DECAY_NAMES`` do not (they are inputs, not weights: decaying them pulls every token
    towards zero, which the ViT, MAE and BEiT recipes avoid)."""
    return param.ndim >= 2 and name.split(".")[-1] not in NO_DECAY_NAMES


def param_groups(model: nn.Module, weight_decay: float,
                 lr_scales: Optional[dict[str, float]] = None,
                 fixed_modules: Sequence[nn.Module] = ()) -> list[dict]:
    """Weights (decayed, LARS-adapted) and biases/norms (neither), each split by ``fixed_lr``.

    Parameters of ``fixed_modules`` (a method's ``fixed_lr_modules()``: SimSiam's predictor) go to
    groups flagged ``fixed_lr=True``, which ``set_learning_rates`` keeps at their base rate; those
    groups come last (and only when not empty), so group 0 is always a scheduled one.

    ``lr_scales`` (parameter name → multiple of the base rate; 1 for names it lacks) splits the
    groups further by that multiple, recorded as each group's ``lr_scale`` (fine-tuning: a
    backbone below its new head, layer-wise decay).
    """
    fixed_ids = {id(p) for module in fixed_modules for p in module.parameters()}
    settings = {"decayed": {"weight_decay": weight_decay, "lars": True},
                "plain": {"weight_decay": 0.0, "lars": False}}
    if lr_scales is not None:  # groups in the order their first parameter comes
        scaled: dict[tuple[float, str, bool], list[torch.Tensor]] = {}
        for name, p in model.named_parameters():
            if p.requires_grad:
                key = (lr_scales.get(name, 1.0), "decayed" if decays(name, p) else "plain",
                       id(p) in fixed_ids)
                scaled.setdefault(key, []).append(p)
        # fixed-rate groups last (a stable sort), so group 0 is a scheduled one here too
        return [{"params": params, **settings[kind], "fixed_lr": fixed, "lr_scale": scale}
                for (scale, kind, fixed), params in sorted(scaled.items(),
                                                           key=lambda item: item[0][2])]
    groups = {(kind, fixed): [] for fixed in (False, True) for kind in ("decayed", "plain")}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups["decayed" if decays(name, p) else "plain", id(p) in fixed_ids].append(p)
    return [{"params": params, **settings[kind], "fixed_lr": fixed}
            for (kind, fixed), params in groups.items() if params or not fixed]


def set_learning_rates(optimizer: torch.optim.Optimizer, base_lrs: list[float], factor: float) -> None:
    """Set each group's rate to its base rate × the schedule's ``factor``, except groups flagged
    ``fixed_lr``, which stay at their base rate (SimSiam's "fix lr for predictor")."""
    for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
        group["lr"] = base if group.get("fixed_lr", False) else base * factor


def scaled_lr(config: OptimConfig, global_batch_size: int) -> float:
    """``config.lr`` (per 256) at ``global_batch_size`` by ``config.lr_scaling``: linear (Goyal et
    al. 2017), sqrt (Malladi et al. 2022, for Adam) or none."""
    ratio = global_batch_size / 256
    return config.lr * {"linear": ratio, "sqrt": ratio ** 0.5, "none": 1.0}[config.lr_scaling]


def build_optimizer(model: nn.Module, config: OptimConfig, global_batch_size: int,
                    lr_scales: Optional[dict[str, float]] = None,
                    fixed_modules: Sequence[nn.Module] = ()) -> torch.optim.Optimizer:
    """Build the optimiser a config names, at the batch-scaled learning rate; ``lr_scales``
    (parameter name → multiple) sets some parameters' rates apart, and ``fixed_modules`` keep
    their base rate through the schedule (``param_groups``)."""
    lr = scaled_lr(config, global_batch_size)
    groups = param_groups(model, config.weight_decay, lr_scales, fixed_modules)
    for group in groups:
        if "lr_scale" in group:
            group["lr"] = lr * group["lr_scale"]
    cuda = any(p.is_cuda for p in model.parameters())
    if config.name == "lars":
        return LARS(groups, lr=lr, momentum=config.momentum, eta=config.lars_eta)
    if config.name == "lamb":
        return LAMB(groups, lr=lr, betas=tuple(config.betas))
    for g in groups:
        g.pop("lars")
    if config.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, foreach=True)
    if config.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(config.betas), fused=cuda or None)
    raise ConfigError(f"unknown optimiser {config.name!r}; choose sgd, lars, lamb or adamw")


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float,
              schedule: str = "cosine") -> float:
    """Linear warm-up from 0 to 1 over ``warmup_steps``, then a decay to ``min_ratio``, reached
    exactly at the last step (``total_steps − 1``): half a cosine (``schedule="cosine"``) or a
    straight line (``"linear"``, which under a fixed budget often beats the cosine: Li, Yumer and
    Ramanan, "Budgeted Training", ICLR 2020)."""
    import math

    if schedule not in LR_SCHEDULES:  # a typo in a direct caller must not quietly mean cosine
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose one of "
                         f"{', '.join(LR_SCHEDULES)}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - 1 - warmup_steps)
    progress = min(1.0, progress)
    remaining = 1 - progress if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return min_ratio + (1 - min_ratio) * remaining
