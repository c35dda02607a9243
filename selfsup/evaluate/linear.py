"""Linear probe: multinomial logistic regression on frozen features.

Trained full-batch with L-BFGS on the features' device — a convex problem, so zero initialisation
and a deterministic optimiser give the same answer every time. Two things are chosen, both by
stratified k-fold cross-validation on the labelled training rows only (never the test set):

* the feature scaling: ``standardise`` (each feature to zero mean, unit variance; right for dense
  embeddings whose dimensions carry arbitrary scales) or ``uniform`` (zero mean, one common scale
  for all features; right for sparse or count features such as TF-IDF and k-mer frequencies, whose
  rare features standardising would blow up to the size of the common ones). Both use statistics
  of ``standardise_with`` (the whole unlabelled training set), so they need no labels;
* the L2 weight decay, from a grid of half decades walked from strong to weak with warm starts.

The criterion is the mean validation accuracy, ties broken by the mean validation cross-entropy.
The folds keep the data set's groups apart when they are given (``stratified_folds``). Then the probe is refit on all labelled rows.

For speed only (none changes the optimum): the folds are fitted together in one L-BFGS run; with
fewer rows than features the fit runs in the rows' own span (``RowSpace``); sparse features
(TF-IDF) are fitted as CSR matrices. scikit-learn's logistic regression with C chosen by 5-fold
cross-validation (``bench/probe_strength.py``) is the yardstick this was measured against.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F

from selfsup.errors import ConfigError, DataError
from selfsup.evaluate.knn import check_labelled_features
from selfsup.evaluate.sampling import at_most_per_class

# Decays for features of unit average variance (both scalings give that), 10 to 1e-6 in half decades:
# mean cross-entropy + decay/2·‖W‖² matches scikit-learn's C = 1 / (decay · rows), so this spans
# C ≈ 1e-3 … 1e4 on the 100 to 10,000 labelled rows of a probe.
DEFAULT_WEIGHT_DECAYS = tuple(10.0 ** (exponent / 2) for exponent in range(2, -13, -1))
SCALINGS = ("standardise", "uniform")
CV_FOLDS = 5  # folds of the cross-validation that chooses scaling and decay
# Above this many cells (rows × columns fitted) one fifth held out ranks decays precisely enough
# (≥ 1,000 validation rows for dense features) and the other four folds would only cost time.
CV_MAX_CELLS = 2_500_000
MAX_ITERATIONS = 100  # L-BFGS iterations per fit
GRADIENT_TOLERANCE = 1e-5  # tighter optima do not move a probe's accuracy, only its run time
SELECTION_TOLERANCE = 1e-4  # the cross-validation fits only rank decays: looser still
# L-BFGS iterations per cross-validation fit: warm-started along the path, 50 rank the decays as
# 100 do (the same choices on Fashion-MNIST pixels, TF-IDF, composition, k-mers) at half the time
SELECTION_ITERATIONS = 50
# The (scaling, decay) pairs are ranked by validation accuracy, ties to the lower cross-entropy.
# Cross-entropy alone, a proper score, picked a decay about half a decade stronger than
# accuracy's: on swissprot composition at 10 % of labels it cost 1.2 points against the
# reference's accuracy-chosen C, and on no yardstick set did it win by more than 0.3
# (docs/benchmarks.md, 2026-12-07). The sweep stops on cross-entropy (PATIENCE): it is smooth
# where accuracy moves in steps.
PATIENCE = 2  # stop a decay sweep after this many weaker decays that validate worse in a row
SELECTION_MAX_ROWS = 5000  # scaling and decay are chosen on at most this many labelled rows

# Features with fewer non-zeros than this (TF-IDF: ~1 %) are fitted as sparse matrices (centred
# through a rank-one correction, which leaves the matrix sparse), from SPARSE_MIN_ROWS rows on:
# on TF-IDF, 11,293 rows fit 2× faster sparse than dense, while 1,127 fit 2× faster dense in
# their RowSpace
SPARSE_BELOW = 0.1
SPARSE_MIN_ROWS = 2000

Params = tuple[torch.Tensor, torch.Tensor]  # a probe's (W: D × classes, b: classes)


def _fit(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    weight_decay: float,
    init: Optional[Params] = None,
    tolerance: float = GRADIENT_TOLERANCE,
    row_weights: Optional[torch.Tensor] = None,
    max_iterations: int = MAX_ITERATIONS,
    offset: Optional[torch.Tensor] = None,
) -> Params:
    """Minimise mean cross-entropy + weight_decay/2 · ||W||² (bias not decayed); return (W, b).

    ``x`` may be a sparse CSR matrix (see ``SPARSE_BELOW``); the rows fitted are then
    ``x − offset`` (centred without filling the matrix in: ``(x − 1·offsetᵀ)·W = x·W − 1·offsetᵀW``).
    ``row_weights`` (N × P, each column summing to 1) fits P independent problems at once, problem
    p weighting row i by ``row_weights[i, p]`` instead of 1/N: the folds of a cross-validation in
    one optimisation, W then D × (P · classes), problem p's columns ``p·classes … (p+1)·classes``.
    One L-BFGS run over all folds costs a fifth of the Python overhead of five, and small probes
    are overhead-bound.
    """
    weights = (torch.full((x.shape[0], 1), 1 / x.shape[0], device=x.device)
               if row_weights is None else row_weights)
    problems = weights.shape[1]
    if init is None:
        weight = torch.zeros(x.shape[1], problems * num_classes, device=x.device)
        bias = torch.zeros(problems * num_classes, device=x.device)
    else:
        weight, bias = (t.clone() for t in init)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iterations,
        history_size=20,
        tolerance_grad=tolerance,
        tolerance_change=1e-9,
        line_search_fn="strong_wolfe",
    )

    onehot = F.one_hot(y, num_classes).to(weight.dtype).unsqueeze(1)  # N × 1 × classes
    weights = weights.unsqueeze(2)  # N × P × 1
    rows = x.shape[0]
    if x.layout == torch.sparse_csr:  # xᵀ·g from a CSR copy of xᵀ, made once per fit
        x_t = _sparse_rows(x.t())
        x_t_times = lambda g: (x_t @ g if offset is None  # noqa: E731
                               else x_t @ g - torch.outer(offset, g.sum(dim=0)))
    else:
        x_t_times = lambda g: (g.T @ x).T.contiguous()  # noqa: E731

    def closure() -> torch.Tensor:
        # The gradient of softmax regression in closed form: dL/dlogits = (softmax − onehot) · w.
        # Autograd would form xᵀ·g, a transposed product that CPU BLAS runs ~5× slower than the
        # (gᵀ·x)ᵀ written here; on 60000×256 features that is most of a probe's run time.
        logits = (_rows_times(x, weight, offset) + bias).view(rows, problems, num_classes)
        log_probs = logits.log_softmax(dim=2)
        loss = -(log_probs * onehot * weights).sum() + 0.5 * weight_decay * weight.pow(2).sum()
        g = ((log_probs.exp() - onehot) * weights).view(rows, -1)
        weight.grad = x_t_times(g) + weight_decay * weight
        bias.grad = g.sum(dim=0)
        return loss

    with torch.no_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def _accuracy(params: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> float:
    weight, bias = params
    return float(((x @ weight + bias).argmax(dim=1) == y).float().mean())


def stratified_folds(labels: torch.Tensor, folds: int, seed: int,
                     groups: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(N,) int64 fold ids in [0, folds) on the CPU: each class's members, in a random order drawn
    with ``seed``, are dealt to the folds in turn, starting where the previous class stopped, so
    every fold gets its share of every class and the folds' sizes differ by at most one.

    With ``groups`` (one int id per row) whole groups are dealt instead, each to the fold holding
    the fewest rows of its majority class so far: rows of one group (a protein family, the reads
    of one gene) never sit on both sides of a fold, as they never sit on both sides of the data
    set's own train/test split, so validation measures what the test split measures."""
    generator = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    fold_of = torch.empty(len(labels), dtype=torch.int64)
    if groups is not None:
        groups = groups.cpu()
        _, group_of = torch.unique(groups, return_inverse=True)
        order = torch.randperm(int(group_of.max()) + 1, generator=generator).tolist()
        filled: dict[tuple[int, int], int] = {}
        for group in order:
            members = (group_of == group).nonzero().flatten()
            majority = int(torch.mode(labels[members]).values)
            fold = min(range(folds), key=lambda f: (filled.get((majority, f), 0), f))
            fold_of[members] = fold
            filled[(majority, fold)] = filled.get((majority, fold), 0) + len(members)
        return fold_of
    start = 0
    for cls in torch.unique(labels).tolist():
        members = (labels == cls).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        fold_of[members] = (start + torch.arange(len(members))) % folds
        start = (start + len(members)) % folds
    return fold_of


class Scaling(NamedTuple):
    """A feature scaling: ``(x − mean) / scale``, by name (one of ``SCALINGS``)."""

    name: str
    mean: torch.Tensor
    scale: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale


def _column_std(x: torch.Tensor, mean: torch.Tensor, rows_per_chunk: int = 4096) -> torch.Tensor:
    """The population std of each column of ``x`` around its ``mean``, summed over row chunks:
    ``Tensor.std(dim=0)`` took 11.7 s on 60,000 × 4,096 features, this 2.1 s (one thread)."""
    squares = torch.zeros_like(mean)
    for chunk in x.split(rows_per_chunk):
        squares += (chunk - mean).pow(2).sum(dim=0)
    return (squares / max(x.shape[0], 1)).sqrt()


def feature_scalings(reference: torch.Tensor, names: Sequence[str]) -> dict[str, Scaling]:
    """The scalings ``names`` from ``reference``'s statistics: centred on its mean and divided by
    its per-feature std (``standardise``) or by the root-mean-square of those stds (``uniform``:
    one scale for all features, so their relative sizes stay). Either way the features' average
    variance on the reference is 1, so one decay grid serves both. Constant features stay
    constant (0)."""
    mean = reference.mean(dim=0)
    std = _column_std(reference, mean)
    scales = {"standardise": torch.where(std > 1e-8, std, torch.ones_like(std)),
              "uniform": std.pow(2).mean().sqrt().clamp_min(1e-12)}
    unknown = [name for name in names if name not in scales]
    if unknown:
        raise ConfigError(f"unknown feature scaling {unknown[0]!r}; known: {', '.join(SCALINGS)}")
    return {name: Scaling(name, mean, scales[name]) for name in names}


def _rows_times(x: torch.Tensor, weight: torch.Tensor,
                offset: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(x − 1·offsetᵀ)·W without forming x − 1·offsetᵀ (which would fill a sparse x in)."""
    product = x @ weight
    return product if offset is None else product - offset @ weight


class RowSpace:
    """Fitting rows in the span of their own features, when there are fewer rows than features.

    With an L2 penalty the optimal W lies in the span of the fitting rows (a component orthogonal
    to them changes no training logit and only adds to the penalty). So with an orthonormal basis
    Q (D × n) of that span, fitting Z on the projected rows X·Q and taking W = Q·Z gives exactly
    the full problem's optimum, with n × C parameters instead of D × C: for 100 TF-IDF rows of
    10,000 words, a 100-fold smaller problem. With as many rows as features there is nothing to
    gain, and the rows are used as they are (Q = None); so are sparse rows, already cheap.
    """

    def __init__(self, x: torch.Tensor, offset: Optional[torch.Tensor] = None) -> None:
        self.offset = offset  # sparse rows stand for x − offset (see _fit)
        self.basis: Optional[torch.Tensor] = None
        if x.layout == torch.strided and x.shape[0] < x.shape[1]:
            self.basis = torch.linalg.qr(x.T, mode="reduced").Q
        self.x = self.project(x)

    def logits(self, params: Params) -> torch.Tensor:
        """The rows' logits under ``params`` (fitted in this space)."""
        weight, bias = params
        return _rows_times(self.x, weight, self.offset) + bias

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of the full feature space in the basis (unchanged without one)."""
        return x if self.basis is None else x @ self.basis

    def to_full(self, params: Params) -> Params:
        """(W, b) fitted on projected rows as the full space's (Q·W, b)."""
        weight, bias = params
        return (weight if self.basis is None else self.basis @ weight), bias

    def from_full(self, params: Optional[Params]) -> Optional[Params]:
        """A full-space (W, b) as a warm start in the basis: (Qᵀ·W, b)."""
        if params is None or self.basis is None:
            return params
        weight, bias = params
        return self.basis.T @ weight, bias


class Choice(NamedTuple):
    """What cross-validation chose: its score ((accuracy, −cross-entropy), larger is better), the
    scaling, the decay (for the rows of one fold's fit) and fold 0's full-space parameters there
    (the refit's warm start)."""

    score: tuple[float, float]
    scaling: str
    weight_decay: float
    params: Params


def _sweep(space: RowSpace, y: torch.Tensor, held: torch.Tensor, num_classes: int,
           decays: Sequence[float], scaling: str) -> Optional[Choice]:
    """Mean k-fold validation accuracy and cross-entropy of each decay, strong to weak, all folds
    fitted together (:func:`_fit`'s ``row_weights``) and warm-started from their fit at the
    previous decay; stops ``PATIENCE`` decays past the lowest cross-entropy. The best by
    accuracy, then cross-entropy (ties: the stronger decay) as a Choice, or None when no fold has rows to fit and
    rows of the classes it fits to validate.

    ``space`` holds the rows (projected onto their span: every fold's fitting rows lie in it, so
    each fold's optimum does too); ``held`` (N × folds, bool) marks each fold's validation rows."""
    cells = space.x.values().numel() if space.x.layout == torch.sparse_csr else space.x.numel()
    if cells > CV_MAX_CELLS:
        held = held[:, :1]
    fitting = ~held
    # a held-out row of a class the fold does not fit on is wrong at any decay: it tells nothing
    fitted_classes = fitting.T.float() @ F.one_hot(y, num_classes).float() > 0  # P × classes
    held &= fitted_classes[:, y].T
    usable = held.any(dim=0)
    held, fitting = held[:, usable], fitting[:, usable].to(space.x.dtype)
    if held.shape[1] == 0:
        return None
    row_weights = fitting / fitting.sum(dim=0)
    params: Optional[Params] = None
    best: Optional[Choice] = None
    best_cross_entropy: Optional[float] = None
    worse_in_a_row = 0
    for decay in decays:
        params = _fit(space.x, y, num_classes, decay, init=params, tolerance=SELECTION_TOLERANCE,
                      row_weights=row_weights, max_iterations=SELECTION_ITERATIONS,
                      offset=space.offset)
        logits = space.logits(params).view(len(y), held.shape[1], num_classes)
        true_class = y[:, None, None].expand(-1, held.shape[1], 1)
        loss = -logits.log_softmax(dim=2).gather(2, true_class).squeeze(2)  # N × P
        cross_entropy = float(((loss * held).sum(dim=0) / held.sum(dim=0)).mean())
        right = (logits.argmax(dim=2) == y[:, None]).float()
        accuracy = float(((right * held).sum(dim=0) / held.sum(dim=0)).mean())
        score = (accuracy, -cross_entropy)
        if best is None or score > best.score:
            fold0 = (params[0][:, :num_classes], params[1][:num_classes])
            best = Choice(score, scaling, decay, space.to_full(fold0))
        if best_cross_entropy is None or cross_entropy < best_cross_entropy:
            best_cross_entropy = cross_entropy
            worse_in_a_row = 0
        elif cross_entropy > best_cross_entropy:
            worse_in_a_row += 1
            if worse_in_a_row == PATIENCE:  # past the optimum: weaker decays only overfit more
                break
    return best


def cross_validation_folds(labels: torch.Tensor, groups: Optional[torch.Tensor],
                           seed: int) -> torch.Tensor:
    """(N, CV_FOLDS) bool, column p marking fold p's validation rows (:func:`stratified_folds`).

    (Drawing the folds three times over and averaging, on sets of ≤ 1,000 rows, chose no better
    on the sequence baselines at 1 and 10 % of labels — within 0.3 points — at twice the cost.)"""
    fold_of = stratified_folds(labels, CV_FOLDS, seed, groups)
    return torch.stack([fold_of == fold for fold in range(CV_FOLDS)], dim=1)


def _sparse_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a CSR matrix, without torch's note that sparse CSR support is in beta (the two
    products the probe needs are tested against dense ones in tests/test_evaluate.py)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return x.to_sparse_csr()


def linear_probe(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    seed: int = 0,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    standardise_with: Optional[torch.Tensor] = None,
    scalings: Sequence[str] = SCALINGS,
    groups: Optional[torch.Tensor] = None,
) -> dict[str, float | str]:
    """Train a logistic-regression probe on the labelled features; return its test accuracy.

    Features are scaled (see the module docstring) with the mean and std of ``standardise_with``
    (default: ``train_feats``). Scaling needs no labels, so with few labels pass the features of
    the whole (unlabelled) training set: the std of a handful of labelled rows is so noisy that it
    blows up uninformative dimensions.

    The scaling (one of ``scalings``) and the weight decay (one of ``weight_decays``) are chosen by
    ``CV_FOLDS``-fold stratified cross-validation on the labelled rows, by validation
    accuracy, then cross-entropy (folds drawn with ``seed``; ties go to the stronger decay, then to the earlier
    scaling; above ``CV_MAX_CELLS`` one fold only). Above ``SELECTION_MAX_ROWS``
    labelled rows they are chosen on a stratified sample of that many, and the decay rescaled for
    the refit on all rows: with the mean loss, a fixed prior on W is a decay ∝ 1/rows. When no
    fold can be validated (one example in all), the first scaling and the strongest decay are
    used: with that little data nothing can be chosen, and strong regularisation is the safe prior.

    ``groups`` (one int id per labelled row, e.g. a protein family) keeps each group within one
    fold (:func:`stratified_folds`): pass them when the test split keeps groups apart.

    Returns ``{"accuracy": test accuracy in [0, 1], "weight_decay": the decay of the refit,
    "scaling": the chosen scaling}``.
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
    if not scalings or set(scalings) - set(SCALINGS):
        raise ConfigError(f"scalings must be a non-empty list of {', '.join(SCALINGS)}; "
                          f"got {scalings}")

    device = train_feats.device
    reference = train_feats if standardise_with is None else standardise_with
    if reference.dim() != 2 or reference.shape[1] != train_feats.shape[1]:
        raise DataError(
            f"standardise_with must be (N, {train_feats.shape[1]}) features like train_feats, got "
            f"{tuple(reference.shape)}"
        )
    reference = reference.to(device, torch.float32)
    train = train_feats.to(torch.float32)
    test = test_feats.to(device, torch.float32)
    y = train_labels.to(device, torch.long)
    y_test = test_labels.to(device, torch.long)

    decays = sorted(weight_decays, reverse=True)
    # the rows scaling and decay are chosen on (seed + 1: not the draw of the label subset)
    rows = at_most_per_class(train_labels, SELECTION_MAX_ROWS, seed + 1)
    held = cross_validation_folds(train_labels.cpu()[rows],
                                  None if groups is None else groups.cpu()[rows], seed).to(device)
    rows = rows.to(device)
    sparse = float((reference != 0).float().mean()) < SPARSE_BELOW
    scalings_by_name = feature_scalings(reference, scalings)

    def row_space(scaling: Scaling, x: torch.Tensor) -> RowSpace:
        if not sparse or len(x) < SPARSE_MIN_ROWS:
            return RowSpace(scaling(x))
        return RowSpace(_sparse_rows(x / scaling.scale), scaling.mean / scaling.scale)

    best: Optional[Choice] = None
    spaces: dict[str, RowSpace] = {}
    if len(decays) > 1 or len(scalings) > 1:  # else nothing to choose
        for name, scaling in scalings_by_name.items():
            spaces[name] = row_space(scaling, train[rows])
            choice = _sweep(spaces[name], y[rows], held, num_classes, decays, name)
            if choice is not None and (best is None or choice.score > best.score):
                best = choice
    if best is None:
        name, decay, init = scalings[0], decays[0], None
    else:
        # the decay was chosen for the rows of one fit in the cross-validation
        rows_per_fit = len(rows) - float(held.sum(dim=0).float().mean())
        name, decay, init = best.scaling, best.weight_decay * rows_per_fit / len(y), best.params
    scaling = scalings_by_name[name]
    # the selection rows' span, when they are all the rows; else the rows' own
    space = spaces[name] if len(rows) == len(y) and name in spaces else row_space(scaling, train)
    params = space.to_full(_fit(space.x, y, num_classes, decay, init=space.from_full(init),
                                offset=space.offset))
    return {"accuracy": _accuracy(params, scaling(test), y_test), "weight_decay": decay,
            "scaling": name}
