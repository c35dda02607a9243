"""Barlow Twins and VICReg: their losses against the papers' formulas, worked examples, properties,
and training on digits."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from selfsup.backbones import build_backbone
from selfsup.data import load_split
from selfsup.errors import DataError
from selfsup.losses import barlow_twins_loss, vicreg_loss
from selfsup.methods import build_method
from selfsup.methods.barlow_twins import BarlowTwins
from selfsup.methods.vicreg import VICReg
from selfsup.registry import METHODS
from selfsup.train import Trainer
from selfsup.train.metrics_log import read_metrics
from selfsup.views import make_views

BN_EPS = 1e-5  # barlow_twins_loss's default variance epsilon


# --------------------------------------------------------------------------- references
def barlow_by_formula(z1: np.ndarray, z2: np.ndarray, lam: float, eps: float = BN_EPS) -> float:
    """Zbontar et al. 2021, eq. 1–2, with each dimension standardised over the batch first:

        ẑ_bi = (z_bi − mean_b z_bi) / sqrt(mean_b (z_bi − mean)² + eps)
        C_ij = Σ_b ẑ1_bi ẑ2_bj / N
        L    = Σ_i (1 − C_ii)² + λ Σ_i Σ_{j≠i} C_ij²
    """
    def standardise(z):
        z = z.astype(np.float64)
        centred = z - z.mean(axis=0)
        return centred / np.sqrt((centred ** 2).mean(axis=0) + eps)

    a, b = standardise(z1), standardise(z2)
    n, d = a.shape
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(a[k, i] * b[k, j] for k in range(n)) / n
            loss += (1 - c_ij) ** 2 if i == j else lam * c_ij ** 2
    return loss


def vicreg_by_formula(z1: np.ndarray, z2: np.ndarray, sim: float, std: float, cov: float,
                      eps: float = 1e-4) -> tuple[float, float, float, float]:
    """Bardes et al. 2022, eq. 1–6, with the reference code's halving of the variance term:

        s    = (1 / ND) Σ_n Σ_d (z1_nd − z2_nd)²
        v(Z) = (1 / D) Σ_d max(0, 1 − sqrt(Var(Z_d) + eps)),   Var unbiased (÷ (N − 1))
        c(Z) = (1 / D) Σ_{i≠j} Cov(Z)_ij²,  Cov(Z)_ij = Σ_n (z_ni − z̄_i)(z_nj − z̄_j) / (N − 1)
        total = sim·s + std·(v(Z1) + v(Z2)) / 2 + cov·(c(Z1) + c(Z2))
    """
    z1, z2 = z1.astype(np.float64), z2.astype(np.float64)
    n, d = z1.shape
    invariance = sum((z1[k, i] - z2[k, i]) ** 2 for k in range(n) for i in range(d)) / (n * d)

    def covariance_matrix(z):
        centred = z - z.mean(axis=0)
        return np.array([[sum(centred[k, i] * centred[k, j] for k in range(n)) / (n - 1)
                          for j in range(d)] for i in range(d)])

    def v(z):
        variances = np.diag(covariance_matrix(z))
        return sum(max(0.0, 1 - math.sqrt(var + eps)) for var in variances) / d

    def c(z):
        m = covariance_matrix(z)
        return sum(m[i, j] ** 2 for i in range(d) for j in range(d) if i != j) / d

    variance = (v(z1) + v(z2)) / 2
    covariance = c(z1) + c(z2)
    return sim * invariance + std * variance + cov * covariance, invariance, variance, covariance


def hadamard_embeddings() -> torch.Tensor:
    """8 samples × 7 dimensions of ±1: columns 1–7 of the 8 × 8 Sylvester–Hadamard matrix.

    Each column has mean 0 and (biased) variance 1, and the columns are orthogonal: the embeddings
    are already standardised and perfectly decorrelated.
    """
    h = torch.ones(1, 1)
    for _ in range(3):
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])
    return h[:, 1:]


def random_pair(seed: int, n: int = 10, d: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Correlated views (z2 = z1 + noise, with uneven scales and offsets per dimension)."""
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g) * torch.linspace(0.3, 3.0, d) + torch.arange(d)
    z2 = z1 + 0.7 * torch.randn(n, d, generator=g)
    return z1, z2


# --------------------------------------------------------------------------- Barlow Twins loss
@pytest.mark.parametrize("lam", [5e-3, 0.1, 1.0])
def test_barlow_twins_loss_matches_the_formula(lam):
    for seed in range(2):
        z1, z2 = random_pair(seed)
        expected = barlow_by_formula(z1.numpy(), z2.numpy(), lam)
        assert barlow_twins_loss(z1, z2, lam).item() == pytest.approx(expected, rel=1e-5)


def test_barlow_twins_worked_examples_on_hadamard_embeddings():
    z = hadamard_embeddings()  # C = I for z against itself
    d = z.shape[1]
    assert barlow_twins_loss(z, z, 5e-3).item() == pytest.approx(0.0, abs=1e-6)
    # Opposite views: C = −I, every (1 − C_ii)² = 4 and no off-diagonal entry.
    assert barlow_twins_loss(z, -z, 5e-3).item() == pytest.approx(4 * d, rel=1e-4)
    # Two dimensions swapped: C_00 = C_11 = 0 and C_01 = C_10 = 1, so L = 2 + 2λ.
    swapped = z[:, [1, 0, 2, 3, 4, 5, 6]]
    assert barlow_twins_loss(z, swapped, 0.25).item() == pytest.approx(2 + 2 * 0.25, rel=1e-4)


def test_barlow_twins_loss_ignores_positive_scale_and_shift_of_each_dimension():
    z1, z2 = random_pair(3)
    g = torch.Generator().manual_seed(4)
    # 0.6× to 7.4×: small enough scales would make the variance comparable to the eps added to it.
    scale = torch.exp(torch.empty(z1.shape[1]).uniform_(-0.5, 2, generator=g))
    shift = 10 * torch.randn(z1.shape[1], generator=g)
    base = barlow_twins_loss(z1, z2, 5e-3)
    assert barlow_twins_loss(z1 * scale + shift, z2, 5e-3).item() == pytest.approx(base.item(), rel=1e-4)
    assert barlow_twins_loss(z1, 100 * z2, 5e-3).item() == pytest.approx(base.item(), rel=1e-4)
    # A sign flip is not a positive scale: it turns C_00 from ≈ +1 into ≈ −1.
    flipped = z2.clone()
    flipped[:, 0] *= -1
    assert barlow_twins_loss(z1, flipped, 5e-3) > base + 1


# --------------------------------------------------------------------------- VICReg loss
@pytest.mark.parametrize("coeffs", [(25.0, 25.0, 1.0), (1.0, 2.0, 3.0)])
def test_vicreg_loss_and_its_terms_match_the_formula(coeffs):
    for seed in range(2):
        z1, z2 = random_pair(seed)
        z1, z2 = 0.5 * z1, 0.5 * z2  # some dimensions with std below 1, so the hinge is active
        got = vicreg_loss(z1, z2, *coeffs)
        expected = vicreg_by_formula(z1.numpy(), z2.numpy(), *coeffs)
        for value, reference in zip(got, expected):
            assert value.item() == pytest.approx(reference, rel=1e-5, abs=1e-7)
        assert got.variance > 0  # the case exercises the hinge


def test_vicreg_worked_examples():
    z = hadamard_embeddings()  # std ≈ 1.07 ≥ 1 in every dimension, orthogonal centred columns
    total, invariance, variance, covariance = vicreg_loss(z, z)
    assert (total.item(), invariance.item(), variance.item()) == (0.0, 0.0, 0.0)
    assert covariance.item() == pytest.approx(0.0, abs=1e-6)

    # Collapse to a point: std = sqrt(0 + eps) = 0.01, so each hinge is 0.99; views 1 apart.
    point = torch.ones(8, 4)
    total, invariance, variance, covariance = vicreg_loss(point, point + 1)
    assert (invariance.item(), covariance.item()) == (1.0, 0.0)
    assert variance.item() == pytest.approx(0.99)
    assert total.item() == pytest.approx(25 * 1.0 + 25 * 0.99)

    # Two copies of one ±1 column: Cov = [[v, v], [v, v]] with v = 8/7, so c(Z) = 2v²/2 per view.
    column = z[:, :1]
    twins = torch.cat([column, column], dim=1)
    assert vicreg_loss(twins, twins).covariance.item() == pytest.approx(2 * (8 / 7) ** 2, rel=1e-6)


# --------------------------------------------------------------------------- shared properties
def test_losses_compute_in_float32_under_bf16_autocast():
    """The statistics must not be rounded to bf16's ~3 significant digits."""
    z1, z2 = random_pair(5, n=64, d=32)
    exact_barlow = barlow_twins_loss(z1, z2, 5e-3)
    exact_vicreg = vicreg_loss(z1, z2).total
    with torch.autocast("cpu", dtype=torch.bfloat16):
        barlow = barlow_twins_loss(z1, z2, 5e-3)
        vicreg = vicreg_loss(z1, z2).total
        # What the loss would be with its matmuls left to autocast:
        rounded = (z1.T @ z2).float()
    assert (z1.T @ z2 - rounded).abs().max() > 1e-3  # autocast really does round here
    assert barlow.dtype == vicreg.dtype == torch.float32
    assert barlow.item() == pytest.approx(exact_barlow.item(), rel=1e-6)
    assert vicreg.item() == pytest.approx(exact_vicreg.item(), rel=1e-6)
    # bf16 inputs (e.g. a projector run under autocast) are accepted and give float32 losses.
    assert barlow_twins_loss(z1.bfloat16(), z2.bfloat16(), 5e-3).dtype == torch.float32


def simulated_gather(full: dict[int, torch.Tensor], rank: int, per_rank: int):
    """What an all-gather returns on process ``rank``: the whole batch, with its own slice in place."""
    def gather(local: torch.Tensor) -> torch.Tensor:
        whole = full[id(local)]
        return torch.cat([whole[:rank * per_rank], local, whole[(rank + 1) * per_rank:]])
    return gather


def local_slices(z1, z2, rank, per_rank):
    part = slice(rank * per_rank, (rank + 1) * per_rank)
    mine1, mine2 = z1[part], z2[part]
    return mine1, mine2, {id(mine1): z1, id(mine2): z2}


def test_gathered_statistics_split_across_processes_equal_one_big_batch():
    """Each of two simulated processes sees half the batch and gathers the rest: the batch
    statistics are the whole batch's, and the mean of the per-process losses is the one-process loss."""
    z1, z2 = random_pair(6, n=12, d=5)
    per_rank = 6
    barlow_full = barlow_twins_loss(z1, z2, 0.1)
    vicreg_full = vicreg_loss(z1, z2)
    vicreg_ranks = []
    for rank in range(2):
        mine1, mine2, full = local_slices(z1, z2, rank, per_rank)
        gather = simulated_gather(full, rank, per_rank)
        barlow = barlow_twins_loss(mine1, mine2, 0.1, gather=gather)
        assert barlow.item() == pytest.approx(barlow_full.item(), rel=1e-6)
        assert barlow.item() != pytest.approx(barlow_twins_loss(mine1, mine2, 0.1).item(), rel=1e-3)
        vicreg_ranks.append(vicreg_loss(mine1, mine2, gather=gather))
    for name in ("total", "invariance", "variance", "covariance"):
        mean = sum(getattr(terms, name) for terms in vicreg_ranks) / 2
        assert mean.item() == pytest.approx(getattr(vicreg_full, name).item(), rel=1e-6), name


@pytest.mark.parametrize("loss", [lambda a, b: barlow_twins_loss(a, b, 5e-3), vicreg_loss])
def test_bad_batches_raise_named_errors(loss):
    with pytest.raises(DataError, match="same shape"):
        loss(torch.randn(4, 3), torch.randn(4, 5))
    with pytest.raises(DataError, match="batch_size"):
        loss(torch.randn(1, 3), torch.randn(1, 3))


# --------------------------------------------------------------------------- the methods
SMALL_HEADS = {"proj_hidden_dim": 64, "proj_dim": 32}


def tiny_method(name: str, **options) -> nn.Module:
    torch.manual_seed(0)
    encoder = build_backbone({"name": "small-cnn", "widths": [8, 16]}, 1, 8)
    return build_method({"name": name, **SMALL_HEADS, **options}, encoder)


@pytest.mark.parametrize("name, cls", [("barlow-twins", BarlowTwins), ("vicreg", VICReg)])
def test_registered_with_byol_views_and_the_papers_three_layer_projector(name, cls):
    assert METHODS.get(name) is cls and cls.view_recipe == "byol"
    encoder = build_backbone({"name": "small-cnn", "widths": [8, 16]}, 1, 8)
    projector = cls(encoder).projector  # default options
    linears = [m for m in projector if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 2048), (2048, 2048), (2048, 2048)]
    # Linear-BN-ReLU twice, then a plain Linear (the loss itself standardises / regularises z).
    assert [type(m) for m in projector] == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 2 + [nn.Linear]


def test_barlow_twins_step_is_its_loss_on_the_projected_views():
    method = tiny_method("barlow-twins", lambda_offdiag=0.05)
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(16, 1, 8, 8, generator=g) for _ in range(2)]
    out = method(views)
    z1, z2 = method.projector(method.encoder(torch.cat(views))).chunk(2)
    assert out.loss.item() == pytest.approx(barlow_twins_loss(z1, z2, 0.05).item(), rel=1e-5)
    assert out.embeddings.shape == (16, 32)


def test_vicreg_step_logs_its_three_terms_and_their_weighted_sum_is_the_loss():
    method = tiny_method("vicreg", sim_coeff=2.0, std_coeff=3.0, cov_coeff=4.0)
    g = torch.Generator().manual_seed(0)
    out = method([torch.randn(16, 1, 8, 8, generator=g) for _ in range(2)])
    logs = out.logs
    assert set(logs) == {"invariance", "variance", "covariance"}
    weighted = 2 * logs["invariance"] + 3 * logs["variance"] + 4 * logs["covariance"]
    assert out.loss.item() == pytest.approx(weighted.item(), rel=1e-6)
    assert not any(value.requires_grad for value in logs.values())


@pytest.mark.parametrize("name", ["barlow-twins", "vicreg"])
def test_loss_falls_on_digits(name):
    """A few optimiser steps on one fixed pair of views lower the loss.

    The views are made once: fresh views every step change these losses by ±30% (Barlow Twins on
    a 32-d projector), which would hide the descent in 15 steps.
    """
    method = tiny_method(name)
    images = load_split("digits", "train").get(torch.arange(64))
    views = make_views("byol", (1, 8, 8), {})(images, torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(method.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = method(views).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < 0.85 * first, losses


@pytest.mark.parametrize("name", ["barlow-twins", "vicreg"])
def test_end_to_end_tiny_run(tiny_config, name):
    run = Trainer(tiny_config(f"method.name={name}", "method.proj_hidden_dim=64")).fit()
    records = read_metrics(Path(run) / "metrics.jsonl")
    losses = [r["loss"] for r in records if r["kind"] in ("step", "epoch")]
    assert losses and all(math.isfinite(x) for x in losses)
    health = [r for r in records if r["kind"] == "health"]
    assert {r["embedding"] for r in health} == {"encoder", "projector"}
    assert all(math.isfinite(r["effective_rank"]) and r["effective_rank"] >= 1 for r in health)
