"""SimSiam: the loss against its formula, where the stop-gradient cuts the graph, the predictor's
fixed learning rate, learning on digits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from selfsup.backbones import build_backbone
from selfsup.config import OptimConfig
from selfsup.data import load_split
from selfsup.errors import DataError
from selfsup.losses import negative_cosine
from selfsup.methods.simsiam import SimSiam, SimSiamOptions
from selfsup.train import Trainer
from selfsup.train.metrics_log import read_metrics
from selfsup.train.optim import build_optimizer, lr_factor
from selfsup.views import make_views
from method_helpers import digit_step_losses


def tiny_simsiam(**options) -> SimSiam:
    torch.manual_seed(0)
    encoder = build_backbone({"name": "small-cnn", "widths": [8, 16]}, 1, 8)
    return SimSiam(encoder, SimSiamOptions(proj_dim=16, **options))


def digit_views(method: SimSiam, count: int = 32, seed: int = 0) -> list[torch.Tensor]:
    images = load_split("digits", "train").get(torch.arange(count))
    return make_views(method.view_recipe, (1, 8, 8), {})(images, torch.Generator().manual_seed(seed))


def unit(v: np.ndarray) -> np.ndarray:
    return v / math.sqrt(v @ v)


def negative_cosine_by_formula(p: np.ndarray, z: np.ndarray) -> float:
    """SimSiam eq. 1, pair by pair: −(p/|p|)·(z/|z|), averaged over the batch."""
    pairs = zip(p.astype(np.float64), z.astype(np.float64))
    return sum(-(unit(p_i) @ unit(z_i)) for p_i, z_i in pairs) / len(p)


def captured_heads(method: SimSiam) -> dict[str, torch.Tensor]:
    """Filled on each forward with the projector's z and the predictor's p (both views stacked)."""
    seen: dict[str, torch.Tensor] = {}
    method.projector.register_forward_hook(lambda module, inputs, out: seen.update(z=out))
    method.predictor.register_forward_hook(lambda module, inputs, out: seen.update(p=out))
    return seen


def test_negative_cosine_matches_its_formula_and_bounds():
    g = torch.Generator().manual_seed(0)
    p, z = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    expected = negative_cosine_by_formula(p.numpy(), z.numpy())
    assert negative_cosine(p, z).item() == pytest.approx(expected, rel=1e-5)
    assert negative_cosine(3 * p, z / 7).item() == pytest.approx(expected, rel=1e-5)
    assert negative_cosine(p, p).item() == pytest.approx(-1.0, rel=1e-6)
    assert negative_cosine(p, -p).item() == pytest.approx(1.0, rel=1e-6)


def test_negative_cosine_rejects_unpaired_shapes_by_name():
    with pytest.raises(DataError, match=r"p \(4, 3\) and z \(4, 1\)"):
        negative_cosine(torch.randn(4, 3), torch.randn(4, 1))  # would broadcast silently


def test_loss_is_half_the_sum_of_the_cross_view_negative_cosines():
    method = tiny_simsiam()
    seen = captured_heads(method)
    loss = method(digit_views(method)).loss
    p1, p2 = seen["p"].detach().numpy().reshape(2, 32, -1)
    z1, z2 = seen["z"].detach().numpy().reshape(2, 32, -1)
    expected = 0.5 * (negative_cosine_by_formula(p1, z2) + negative_cosine_by_formula(p2, z1))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("stop_gradient", [True, False])
def test_stop_gradient_cuts_exactly_the_target_path(stop_gradient):
    """z reaches the loss by two paths: through the predictor (p) and directly as the target.

    The direct path's gradient is the total dL/dz minus what flows back through the predictor. With
    the stop-gradient it must vanish; without, it is the derivative of ½·D(p₁, z₂) + ½·D(p₂, z₁) in
    z: for one pair, d/dz [−cos(p, z)] = −(p̂ − cos(p, z)·ẑ) / |z|, divided by 2B for the averages.
    """
    method = tiny_simsiam(stop_gradient=stop_gradient)
    seen = captured_heads(method)
    loss = method(digit_views(method, count=8)).loss
    z, p = seen["z"], seen["p"]
    dz_total, dp = torch.autograd.grad(loss, [z, p], retain_graph=True)
    (dz_through_predictor,) = torch.autograd.grad(p, z, grad_outputs=dp)
    direct = (dz_total - dz_through_predictor).numpy()

    if stop_gradient:
        np.testing.assert_allclose(direct, 0.0, atol=1e-7)
        return
    p_np, z_np = p.detach().double().numpy(), z.detach().double().numpy()
    batch = len(z_np) // 2
    expected = np.zeros_like(z_np)
    for i in range(len(z_np)):
        partner = (i + batch) % len(z_np)  # z_i is the target of the other view's prediction
        p_hat, z_hat = unit(p_np[partner]), unit(z_np[i])
        cosine = p_hat @ z_hat
        expected[i] = -(p_hat - cosine * z_hat) / math.sqrt(z_np[i] @ z_np[i]) / (2 * batch)
    assert np.abs(expected).max() > 1e-4  # the check below is not vacuous
    np.testing.assert_allclose(direct, expected, rtol=1e-3, atol=1e-7)


def test_loss_falls_over_a_few_steps_on_digits():
    method = tiny_simsiam()
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1, momentum=0.9)
    losses = digit_step_losses(method, load_split("digits", "train").images, optimizer)
    # Starts near 0 (random predictions are about orthogonal to their targets) and heads towards
    # −1; here the mean falls by about 0.08 from the first three steps to the last three (seeds
    # 0-2), the bar is half of that.
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.04


@pytest.mark.parametrize("fixed", [True, False])
def test_the_optimiser_puts_exactly_the_predictor_in_the_fixed_rate_groups(fixed):
    method = tiny_simsiam(fix_predictor_lr=fixed)
    groups = build_optimizer(method, OptimConfig(name="sgd"), 256,
                             fixed_modules=method.fixed_lr_modules()).param_groups
    in_fixed = {id(p) for g in groups if g["fixed_lr"] for p in g["params"]}
    assert in_fixed == ({id(p) for p in method.predictor.parameters()} if fixed else set())


def test_a_whole_simsiam_run_logs_finite_losses_and_health_with_the_predictor_at_a_fixed_rate(
        tiny_config):
    trainer = Trainer(tiny_config("method.name=simsiam"))
    run = trainer.fit()
    records = read_metrics(run / "metrics.jsonl")
    losses = [r["loss"] for r in records if r["kind"] in ("step", "epoch")]
    assert losses and all(isinstance(v, float) and -1.0 <= v <= 1.0 for v in losses)
    watched = {r["embedding"] for r in records if r["kind"] == "health"}
    assert watched == {"encoder", "projector"}
    # After the last step (6 of 6, with half an epoch of warm-up) the scheduled groups sit at the
    # cosine's end, the predictor's at its base rate (SimSiam's "fix lr for predictor").
    factor = lr_factor(trainer.parts.schedule.total_steps - 1, trainer.parts.schedule.total_steps, trainer.parts.schedule.warmup_steps,
                       trainer.config.optim.min_lr_ratio)
    assert factor < 0.2
    predictor = {id(p) for p in trainer.parts.method.predictor.parameters()}
    for group, base in zip(trainer.parts.optimizer.param_groups, trainer.parts.base_lrs):
        is_predictor = {id(p) for p in group["params"]} <= predictor
        assert group["lr"] == pytest.approx(base if is_predictor else base * factor)
    step_lrs = [r["lr"] for r in records if r["kind"] == "step"]  # the log shows the schedule
    assert step_lrs[-1] == pytest.approx(trainer.parts.base_lrs[0] * factor)
