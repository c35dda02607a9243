"""Linear probe: multinomial logistic regression on frozen, standardised features.

Trained full-batch with L-BFGS on the features' device — a convex problem, so zero initialisation
and a deterministic optimiser give the same answer every time. The L2 weight decay is chosen on a
class-stratified validation split of the labelled training data (never the test set), walking the
grid from strong to weak decay with warm starts, then the probe is refit on all labelled data.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from selfsup.errors import ConfigError, DataError
from selfsup.evaluate.knn import check_labelled_features

DEFAULT_WEIGHT_DECAYS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
VALIDATION_FRACTION = 0.2
MAX_ITERATIONS = 100  # L-BFGS iterations per fit; standardised features converge well before
GRADIENT_TOLERANCE = 1e-5  # tighter optima do not move a probe's accuracy, only its run time
PATIENCE = 2  # stop the decay sweep after this many weaker decays that validate worse in a row
SELECTION_MAX_ROWS = 10000  # the decay is chosen on at most this many labelled rows (see below)


def split_per_class(
    labels: torch.Tensor, take: Callable[[int], int], seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomly split the indices of each class into ``take(class size)`` taken and the rest.

    Returns (taken, rest) as sorted CPU LongTensors. Deterministic under ``seed`` whatever the
    labels' device, because the permutations are drawn on the CPU.
    """
    generator = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    taken, rest = [], []
    for cls in torch.unique(labels).tolist():
        members = (labels == cls).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        count = take(len(members))
        taken.append(members[:count])
        rest.append(members[count:])
    return torch.cat(taken).sort().values, torch.cat(rest).sort().values


def _validation_size(class_size: int) -> int:
    """20% of a class for validation, but always leave one example to train on."""
    return min(round(VALIDATION_FRACTION * class_size), class_size - 1)


def _fit(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    weight_decay: float,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise mean cross-entropy + weight_decay/2 · ||W||² (bias not decayed); return (W, b)."""
    if init is None:
        weight = x.new_zeros(x.shape[1], num_classes)
        bias = x.new_zeros(num_classes)
    else:
        weight, bias = (t.clone() for t in init)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=MAX_ITERATIONS,
        history_size=20,
        tolerance_grad=GRADIENT_TOLERANCE,
        tolerance_change=1e-9,
        line_search_fn="strong_wolfe",
    )

    onehot = F.one_hot(y, num_classes).to(x.dtype)

    def closure() -> torch.Tensor:
        # The gradient of softmax regression in closed form: dL/dlogits = (softmax − onehot) / N.
        # Autograd would form xᵀ·g, a transposed product that CPU BLAS runs ~5× slower than the
        # (gᵀ·x)ᵀ written here; on 60000×256 features that is most of a probe's run time.
        logits = torch.addmm(bias, x, weight)
        log_probs = logits.log_softmax(dim=1)
        loss = -(log_probs * onehot).sum() / len(x) + 0.5 * weight_decay * weight.pow(2).sum()
        g = (log_probs.exp() - onehot) / len(x)
        weight.grad = (g.T @ x).T.contiguous() + weight_decay * weight
        bias.grad = g.sum(dim=0)
        return loss

    with torch.no_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def _accuracy(params: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> float:
    weight, bias = params
    return float(((x @ weight + bias).argmax(dim=1) == y).float().mean())


def linear_probe(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    seed: int = 0,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    standardise_with: Optional[torch.Tensor] = None,
) -> dict[str, float]:
    """Train a logistic-regression probe on the labelled features; return its test accuracy.

    Features are standardised with the mean and std of ``standardise_with`` (default:
    ``train_feats``). Standardising needs no labels, so with few labels pass the features of the
    whole (unlabelled) training set: the std of a handful of labelled rows is so noisy that it
    blows up uninformative dimensions.

    The weight decay is chosen from ``weight_decays`` by accuracy on a class-stratified 20%
    validation split of the training data (drawn with ``seed``; ties go to the stronger decay).
    When no class has enough examples to spare one for validation (e.g. one example per class)
    the strongest decay is used: with that little data nothing can be chosen, and strong
    regularisation is the safe prior.

    Returns ``{"accuracy": test accuracy in [0, 1], "weight_decay": the chosen decay}``.
    """
    check_labelled_features(train_feats, train_labels, num_classes, "train_feats")
    check_labelled_features(test_feats, test_labels, num_classes, "test_feats")
    if test_feats.shape[1] != train_feats.shape[1]:
        raise DataError(
            f"train_feats have {train_feats.shape[1]} dims but test_feats {test_feats.shape[1]}: "
            "extract both with the same encoder"
        )
    if not weight_decays or min(weight_decays) < 0:
        raise ConfigError(
            f"weight_decays must be a non-empty list of decays >= 0, got {weight_decays}"
        )

    device = train_feats.device
    reference = train_feats if standardise_with is None else standardise_with
    if reference.dim() != 2 or reference.shape[1] != train_feats.shape[1]:
        raise DataError(
            f"standardise_with must be (N, {train_feats.shape[1]}) features like train_feats, got "
            f"{tuple(reference.shape)}"
        )
    reference = reference.to(device, torch.float32)
    mean = reference.mean(dim=0)
    std = reference.std(dim=0, correction=0)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))  # constant features stay constant (0)
    x = (train_feats.to(torch.float32) - mean) / std
    x_test = (test_feats.to(device, torch.float32) - mean) / std
    y = train_labels.to(device, torch.long)
    y_test = test_labels.to(device, torch.long)

    decays = sorted(weight_decays, reverse=True)
    validation, fitting = split_per_class(y, _validation_size, seed)
    # With many labels, choosing the decay on a class-stratified subsample costs a fraction of the
    # full sweep and picks the same optimum once the decay is rescaled: with the mean loss, a fixed
    # prior on W corresponds to a decay ∝ 1/N, so a decay chosen with n fitting rows is applied
    # to N rows as decay · n / N.
    scale = 1.0
    if len(y) > SELECTION_MAX_ROWS:
        keep_fraction = SELECTION_MAX_ROWS / len(y)
        generator = torch.Generator().manual_seed(seed + 1)
        validation = validation[torch.rand(len(validation), generator=generator) < keep_fraction]
        fitting = fitting[torch.rand(len(fitting), generator=generator) < keep_fraction]
        scale = len(fitting) / len(y)
    chosen, params = decays[0], None
    if len(decays) > 1 and len(validation) > 0:
        validation, fitting = validation.to(device), fitting.to(device)
        best_accuracy, worse_in_a_row = -1.0, 0
        for decay in decays:  # strong to weak: each fit warm-starts the next
            params = _fit(x[fitting], y[fitting], num_classes, decay, init=params)
            accuracy = _accuracy(params, x[validation], y[validation])
            if accuracy > best_accuracy:
                best_accuracy, chosen, best_params = accuracy, decay, params
                worse_in_a_row = 0
            elif accuracy < best_accuracy:
                worse_in_a_row += 1
                if worse_in_a_row == PATIENCE:  # past the optimum: weaker decays only overfit more
                    break
        params = best_params
    chosen *= scale
    params = _fit(x, y, num_classes, chosen, init=params)
    return {"accuracy": _accuracy(params, x_test, y_test), "weight_decay": chosen}
