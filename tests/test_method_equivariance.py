"""Invariance vs equivariance: the group representation, the loss, the error measurement, training."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from selfsup.backbones import build_backbone
from selfsup.errors import ConfigError
from selfsup.methods import build_method
from selfsup.methods.equivariance import GROUPS, equivariance_error, equivariance_loss
from selfsup.train import Trainer
from selfsup.train.metrics_log import read_metrics
from method_helpers import assert_learns_on_digits

GROUP_NAMES = sorted(GROUPS)


# ---------------------------------------------------------------------------------- ρ


@pytest.mark.parametrize("name", GROUP_NAMES)
@pytest.mark.parametrize("dim", [2, 6])
def test_rho_is_an_orthogonal_group_homomorphism(name, dim):
    group = GROUPS[name]
    n = group.order
    rho = [group.rho_matrix(k, dim) for k in range(n)]
    eye = torch.eye(dim)
    assert torch.equal(rho[0], eye)
    for a in range(n):
        torch.testing.assert_close(rho[a].T @ rho[a], eye)
        assert torch.equal(group.rho_matrix(a + n, dim), rho[a])
        for b in range(n):
            torch.testing.assert_close(rho[a] @ rho[b], rho[(a + b) % n])
    torch.testing.assert_close(torch.linalg.matrix_power(rho[1], n), eye)
    # No vector but 0 is fixed by a g ≠ e, so an invariant embedding cannot look equivariant.
    for a in range(1, n):
        assert torch.linalg.svdvals(rho[a] - eye).min() > 0.5


def test_rho_of_a_quarter_turn_turns_each_pair_of_dimensions_a_quarter():
    quarter = torch.tensor([[0.0, -1.0], [1.0, 0.0]])  # 90° counter-clockwise in the plane
    expected = torch.block_diag(quarter, quarter, quarter)
    assert torch.equal(GROUPS["rotation"].rho_matrix(1, 6), expected)
    assert torch.equal(GROUPS["flip"].rho_matrix(1, 4), -torch.eye(4))


@pytest.mark.parametrize("name", GROUP_NAMES)
def test_rho_and_the_image_action_take_one_element_per_sample(name):
    group = GROUPS[name]
    z, x = torch.randn(7, 6), torch.randn(7, 1, 5, 5)
    k = torch.arange(7) % group.order
    moved, acted = group.rho(z, k), group.act(x, k)
    for i in range(7):
        torch.testing.assert_close(moved[i], group.rho_matrix(int(k[i]), 6) @ z[i])
        assert torch.equal(acted[i:i + 1], group.act(x[i:i + 1], int(k[i])))
    # a group action: acting by a then by b is acting by a + b
    for a in range(group.order):
        for b in range(group.order):
            assert torch.equal(group.act(group.act(x, a), b), group.act(x, (a + b) % group.order))


# ---------------------------------------------------------------------------------- the loss


def nt_xent_by_loops(queries: np.ndarray, keys: np.ndarray, temperature: float) -> float:
    """NT-Xent from its formula: 2B anchors, each against its partner over all 2B − 1 others."""
    views = np.concatenate([queries, keys])
    views = views / np.linalg.norm(views, axis=1, keepdims=True)
    batch = len(queries)
    total = 0.0
    for i in range(2 * batch):
        partner = (i + batch) % (2 * batch)
        others = [math.exp(views[i] @ views[j] / temperature) for j in range(2 * batch) if j != i]
        total += -math.log(math.exp(views[i] @ views[partner] / temperature) / sum(others))
    return total / (2 * batch)


def test_loss_pairs_each_moved_view_with_rho_of_the_other():
    rng = np.random.default_rng(0)
    z_moved, z_still = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    k = [1, 2, 3]
    quarter = np.array([[0.0, -1.0], [1.0, 0.0]])
    rho = [np.kron(np.eye(2), np.linalg.matrix_power(quarter, j)) for j in range(4)]  # 2 pairs
    targets = np.stack([rho[j] @ z for j, z in zip(k, z_still)])
    temperature = 0.5
    args = (torch.tensor(z_moved), torch.tensor(z_still), torch.tensor(k))
    equivariant = equivariance_loss(*args, GROUPS["rotation"].rho, temperature)
    invariant = equivariance_loss(*args, None, temperature)
    assert equivariant.item() == pytest.approx(nt_xent_by_loops(z_moved, targets, temperature), rel=1e-5)
    assert invariant.item() == pytest.approx(nt_xent_by_loops(z_moved, z_still, temperature), rel=1e-5)


@pytest.mark.parametrize("mode", ["invariant", "equivariant"])
def test_method_moves_the_first_view_and_represents_the_move_on_the_second(mode):
    torch.manual_seed(0)
    encoder = build_backbone({"name": "small-cnn", "widths": [4, 8]}, 1, 8)
    method = build_method({"name": "equivariance", "mode": mode, "proj_dim": 4, "temperature": 0.5},
                          encoder)
    x1, x2 = torch.randn(6, 1, 8, 8), torch.randn(6, 1, 8, 8)
    torch.manual_seed(1)
    loss = method([x1, x2]).loss
    torch.manual_seed(1)  # the method draws one rotation per image first thing
    k = torch.randint(0, 4, (6,))
    with torch.no_grad():
        z = method.projector(method.encoder(torch.cat([torch.rot90(x, int(j), dims=(-2, -1))[None]
                                                       for x, j in zip(x1, k)] + [x2]))).double()
    z_moved, z_still = z[:6].numpy(), z[6:].numpy()
    if mode == "equivariant":
        z_still = np.stack([GROUPS["rotation"].rho_matrix(int(j), 4).double().numpy() @ v
                            for j, v in zip(k, z_still)])
    assert loss.item() == pytest.approx(nt_xent_by_loops(z_moved, z_still, 0.5), rel=1e-4)


@pytest.mark.parametrize("section, message", [
    ({"mode": "both"}, "method.mode"),
    ({"group": "scale"}, "method.group"),
    ({"proj_dim": 15}, "method.proj_dim must be even"),
])
def test_bad_options_are_refused_by_name(section, message):
    encoder = build_backbone({"name": "small-cnn", "widths": [4]}, 1, 8)
    with pytest.raises(ConfigError, match=message):
        build_method({"name": "equivariance", **section}, encoder)


# ---------------------------------------------------------------------------------- measuring


class Features(nn.Module):
    """A fixed random nonlinear map of the pixels: neither invariant nor equivariant."""

    def __init__(self, pixels: int, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(pixels, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.linear(x.flatten(1)))


def averaged_over_the_group(h: nn.Module, name: str, equivariant: bool):
    """f(x) = Σ_j h(g_j·x) is invariant; f(x) = Σ_j ρ(g_j)⁻¹·h(g_j·x) is equivariant, since
    f(g_k·x) = Σ_j ρ(g_j)⁻¹ h(g_{j+k}·x) = ρ(g_k) Σ_i ρ(g_i)⁻¹ h(g_i·x)."""
    group = GROUPS[name]

    def f(x: torch.Tensor) -> torch.Tensor:
        terms = [h(group.act(x, j)) for j in range(group.order)]
        if equivariant:
            terms = [group.rho(t, -j) for j, t in enumerate(terms)]
        return torch.stack(terms).sum(0)

    return f


@pytest.mark.parametrize("name", GROUP_NAMES)
def test_encoders_invariant_or_equivariant_by_construction_measure_zero(name):
    torch.manual_seed(0)
    group, h = GROUPS[name], Features(36, 8)
    images = torch.randn(50, 1, 6, 6)

    def errors(fn):
        return equivariance_error(fn, images, group.act, group.rho, group.order)

    invariant = errors(averaged_over_the_group(h, name, equivariant=False))
    equivariant = errors(averaged_over_the_group(h, name, equivariant=True))
    plain = errors(h)
    assert invariant["invariance_error"] < 1e-5 < 0.1 < invariant["equivariance_error"]
    assert equivariant["equivariance_error"] < 1e-5 < 0.1 < equivariant["invariance_error"]
    assert plain["invariance_error"] > 0.1 and plain["equivariance_error"] > 0.1


def test_equivariance_error_follows_its_formula():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, size=(4, 1, 2, 2))
    rho = [GROUPS["rotation"].rho_matrix(k, 4).double().numpy() for k in range(4)]
    invariance, equivariance = [], []
    for image in images:
        plain = image.reshape(-1) / np.linalg.norm(image)
        for k in (1, 2, 3):
            moved = np.rot90(image[0], k).reshape(-1)
            moved = moved / np.linalg.norm(moved)
            invariance.append(np.linalg.norm(moved - plain))
            equivariance.append(np.linalg.norm(moved - rho[k] @ plain))
    measured = equivariance_error(lambda x: x.flatten(1), torch.tensor(images, dtype=torch.float32))
    assert measured["invariance_error"] == pytest.approx(np.mean(invariance), rel=1e-5)
    assert measured["equivariance_error"] == pytest.approx(np.mean(equivariance), rel=1e-5)


def test_equivariance_error_evaluates_a_module_in_eval_mode_and_restores_its_mode():
    encoder = build_backbone({"name": "small-cnn", "widths": [4, 8]}, 1, 8).train()
    images = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    seen_modes = []
    encoder.register_forward_hook(lambda module, args, out: seen_modes.append(module.training))
    equivariance_error(encoder, images)
    assert seen_modes and not any(seen_modes) and encoder.training


# ---------------------------------------------------------------------------------- training


@pytest.mark.parametrize("mode", ["invariant", "equivariant"])
def test_loss_falls_on_digits(mode):
    assert_learns_on_digits({"name": "equivariance", "mode": mode, "proj_dim": 16})


def test_equivariance_trains_end_to_end(tiny_config):
    run = Trainer(tiny_config("method.name=equivariance")).fit()
    records = read_metrics(Path(run) / "metrics.jsonl")
    losses = [r["loss"] for r in records if r["kind"] in ("step", "epoch")]
    assert losses and all(math.isfinite(loss) for loss in losses)
    assert {r["embedding"] for r in records if r["kind"] == "health"} == {"encoder", "projector"}
