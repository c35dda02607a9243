"""Collapse diagnostics against formulas, brute-force loops and crafted histories."""

import itertools
import json
import math

import numpy as np
import pytest
import torch

from selfsup.errors import ConfigError, DataError
from selfsup.health import (
    HealthMonitor,
    LossProbeDivergence,
    alignment,
    collapse_warnings,
    effective_rank,
    embedding_std,
    health_metrics,
    mean_cosine,
    mean_cosine_centred,
    singular_spectrum,
    uniformity,
)


def gaussian(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def orthonormal_columns(n: int, k: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(gaussian(n, k, seed).double())
    return q


# --- metrics ---------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 8])
def test_effective_rank_of_k_equal_singular_values_is_k(k):
    # (N, k) orthonormal columns times a (k, D) orthonormal map: k singular values, all 3.
    z = 3 * orthonormal_columns(40, k) @ orthonormal_columns(16, k, seed=1).T
    assert effective_rank(z) == pytest.approx(k, rel=1e-3)


def test_effective_rank_of_unequal_singular_values_follows_the_entropy_formula():
    z = torch.diag(torch.tensor([2.0, 1.0, 0.0]))
    p = np.array([2 / 3, 1 / 3])
    expected = math.exp(-(p * np.log(p)).sum())  # ≈ 1.89, below the algebraic rank 2
    assert effective_rank(z) == pytest.approx(expected, rel=1e-4)


def test_effective_rank_of_constant_and_zero_batches():
    constant = gaussian(1, 12).repeat(50, 1)
    assert effective_rank(constant) == pytest.approx(1.0, abs=1e-3)
    assert effective_rank(torch.zeros(5, 4)) == 0.0


def test_effective_rank_of_tall_gaussian_is_close_to_full():
    d = 16
    rank = effective_rank(gaussian(4000, d))
    assert 0.97 * d < rank <= d


def test_singular_spectrum_is_of_the_uncentred_matrix_in_descending_order():
    z = gaussian(30, 6) + 5.0  # a large offset: centring would shrink the first value a lot
    expected = np.linalg.svd(z.double().numpy(), compute_uv=False)
    got = singular_spectrum(z)
    assert np.allclose(got.numpy(), expected)
    assert torch.all(got[:-1] >= got[1:])


def test_embedding_std_is_one_over_sqrt_dim_when_isotropic_and_zero_when_collapsed():
    d = 32
    assert embedding_std(gaussian(4000, d)) == pytest.approx(1 / math.sqrt(d), rel=0.05)
    collapsed = gaussian(1, d).repeat(100, 1) + 1e-6 * gaussian(100, d, seed=1)
    assert embedding_std(collapsed) < 1e-5


def test_embedding_std_matches_numpy():
    z = gaussian(20, 7).double().numpy()
    unit = z / np.linalg.norm(z, axis=1, keepdims=True)
    assert embedding_std(torch.from_numpy(z)) == pytest.approx(unit.std(axis=0).mean(), rel=1e-9)


def brute_force_mean_cosine(z: np.ndarray) -> float:
    cosines = [
        z[i] @ z[j] / (np.linalg.norm(z[i]) * np.linalg.norm(z[j]))
        for i, j in itertools.permutations(range(len(z)), 2)
    ]
    return float(np.mean(cosines))


def test_mean_cosine_equals_a_double_loop():
    z = gaussian(9, 5).double() + 0.5
    assert mean_cosine(z) == pytest.approx(brute_force_mean_cosine(z.double().numpy()), rel=1e-9)
    centred = (z - z.mean(0)).double().numpy()
    assert mean_cosine_centred(z) == pytest.approx(brute_force_mean_cosine(centred), rel=1e-9)


def test_mean_cosine_is_tied_to_the_spread_of_normalised_embeddings():
    # Σ_d Var_d(u) = (N−1)/N · (1 − mean cosine) for unit rows u: two views of the same geometry.
    z = torch.relu(gaussian(64, 10, seed=3) + 1.0)
    n = len(z)
    unit = torch.nn.functional.normalize(z.double(), dim=1)
    total_variance = float(unit.var(dim=0, correction=0).sum())
    assert total_variance == pytest.approx((n - 1) / n * (1 - mean_cosine(z)), rel=1e-9)


def test_alignment_and_uniformity_match_direct_formulas():
    z1, z2 = gaussian(8, 4).double(), gaussian(8, 4, seed=1).double()
    u1 = (z1 / z1.norm(dim=1, keepdim=True)).double().numpy()
    u2 = (z2 / z2.norm(dim=1, keepdim=True)).double().numpy()
    for alpha in (1, 2):
        direct = np.mean([np.linalg.norm(u1[i] - u2[i]) ** alpha for i in range(8)])
        assert alignment(z1, z2, alpha=alpha) == pytest.approx(direct, rel=1e-9)
    for t in (0.5, 2):
        pairs = itertools.combinations(range(8), 2)
        direct = np.log(np.mean([np.exp(-t * np.sum((u1[i] - u1[j]) ** 2)) for i, j in pairs]))
        assert uniformity(z1, t=t) == pytest.approx(direct, rel=1e-9)


def test_health_metrics_estimate_uniformity_on_the_first_rows_only():
    from selfsup.health.metrics import UNIFORMITY_MAX_ROWS

    z = gaussian(UNIFORMITY_MAX_ROWS + 300, 4)
    z[UNIFORMITY_MAX_ROWS:] = z[0]  # the rows past the cap all collapse onto one point
    assert health_metrics(z)["uniformity"] == pytest.approx(uniformity(z[:UNIFORMITY_MAX_ROWS]))
    assert uniformity(z) > uniformity(z[:UNIFORMITY_MAX_ROWS]) + 0.01  # they would have counted


def test_uniformity_is_zero_when_collapsed_and_finite_for_large_t():
    assert uniformity(torch.ones(6, 3)) == pytest.approx(0.0, abs=1e-12)
    assert math.isfinite(uniformity(gaussian(6, 3), t=1e4))


def test_health_metrics_keys_and_consistency():
    z, z_pair = gaussian(50, 8), gaussian(50, 8, seed=1)
    metrics = health_metrics(z)
    assert "alignment" not in metrics
    assert health_metrics(z, z_pair)["alignment"] == pytest.approx(alignment(z, z_pair))
    assert metrics["dim"] == 8 and metrics["num_samples"] == 50
    assert metrics["effective_rank"] == pytest.approx(effective_rank(z))
    assert metrics["effective_rank_centred"] == pytest.approx(effective_rank(z - z.mean(0)))
    assert metrics["embedding_std_x_sqrt_dim"] == pytest.approx(embedding_std(z) * math.sqrt(8))
    assert metrics["mean_cosine_centred"] == pytest.approx(mean_cosine_centred(z))
    assert len(metrics["spectrum"]) == 8 and sum(metrics["spectrum"]) == pytest.approx(1.0)
    json.dumps(metrics)  # goes straight into metrics.jsonl


@pytest.mark.parametrize(
    "bad",
    [torch.zeros(5), torch.zeros(1, 4), torch.tensor([[1.0, float("nan")], [0.0, 1.0]])],
    ids=["1-d", "one-row", "nan"],
)
def test_bad_batches_raise_data_error(bad):
    with pytest.raises(DataError):
        health_metrics(bad)


def test_alignment_needs_matching_shapes():
    with pytest.raises(DataError, match="same shape"):
        alignment(gaussian(4, 3), gaussian(5, 3))


# --- collapse warnings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "features",
    [
        gaussian(512, 64),
        torch.relu(gaussian(512, 64)),
        # Like a random-init ResNet's pooled ReLU features: a large shared offset, high raw cosine.
        torch.relu(gaussian(512, 64) + 2.0),
    ],
    ids=["gaussian", "relu-gaussian", "relu-offset-gaussian"],
)
def test_no_warning_for_healthy_features(features):
    metrics = health_metrics(features)
    assert collapse_warnings(metrics) == []


def test_offset_relu_features_really_have_a_high_raw_cosine():
    # Guards the test above: these features are the case a raw-cosine rule would get wrong.
    assert mean_cosine(torch.relu(gaussian(512, 64) + 2.0)) > 0.6


def test_complete_collapse_to_a_point_warns():
    point = gaussian(1, 128).repeat(256, 1) + 1e-5 * gaussian(256, 128, seed=1)
    warnings = collapse_warnings(health_metrics(point))
    assert warnings and any("collapsed to a point" in w for w in warnings)


def test_collapse_to_a_line_warns_with_the_rank():
    line = gaussian(256, 1) @ gaussian(1, 128, seed=1)
    warnings = collapse_warnings(health_metrics(line))
    assert any(w.startswith("effective rank 1.00 of 128 dims") for w in warnings)


def test_dimensional_collapse_warns_without_claiming_complete_collapse():
    three_directions = gaussian(512, 3) @ gaussian(3, 512, seed=1)
    warnings = collapse_warnings(health_metrics(three_directions))
    assert len(warnings) == 1 and "dimensional collapse" in warnings[0]


# --- loss/probe divergence ---------------------------------------------------------------------


def divergence_with(losses, probes, **kwargs) -> LossProbeDivergence:
    watcher = LossProbeDivergence(**kwargs)
    for epoch, loss in losses.items():
        watcher.update_loss(epoch, loss)
    for epoch, accuracy in probes.items():
        watcher.update_probe(epoch, accuracy)
    return watcher


def test_divergence_fires_when_loss_falls_and_probe_sets_no_new_best_with_both_numbers():
    watcher = divergence_with({5: 4.0, 10: 3.5, 15: 3.0}, {5: 0.500, 10: 0.499, 15: 0.498}, window=2)
    message = watcher.warning()
    assert message is not None
    assert "25.0%" in message  # (4 − 3) / 4, from the last probe before the window to the latest
    assert "-0.10 points" in message  # best in window 0.499 − best before 0.500


@pytest.mark.parametrize(
    "losses, probes",
    [
        ({5: 4.0, 10: 3.5, 15: 3.0}, {5: 0.50, 10: 0.55, 15: 0.60}),  # probe still improving
        ({5: 4.0, 10: 3.5, 15: 3.0}, {5: 0.80, 10: 0.79, 15: 0.801}),  # slow, but a new best
        ({5: 4.0, 10: 3.99, 15: 3.98}, {5: 0.50, 10: 0.50, 15: 0.50}),  # loss flat too (0.5%)
        ({5: 4.0, 10: 3.5}, {5: 0.50, 10: 0.50}),  # no probe before the window
        ({}, {5: 0.50, 10: 0.50, 15: 0.50}),  # no loss recorded
    ],
    ids=["probe-improving", "slow-new-best", "loss-flat", "too-few-probes", "no-loss"],
)
def test_divergence_stays_quiet(losses, probes):
    assert divergence_with(losses, probes, window=2).warning() is None


def test_divergence_only_looks_at_the_last_window():
    # The probe rose early, then stalled below its best while the loss kept falling.
    probes = {1: 0.2, 2: 0.6, 3: 0.59, 4: 0.595, 5: 0.598}
    losses = {1: 6.0, 2: 5.0, 3: 4.5, 4: 4.0, 5: 3.8}
    assert divergence_with(losses, probes, window=3).warning() is not None
    assert divergence_with(losses, probes, window=4).warning() is None  # window includes the rise


def test_divergence_is_quiet_on_a_real_healthy_probe_curve():
    # Online k-NN probe (every 5 epochs) and epoch loss of SimCLR/ResNet-18 on Fashion-MNIST
    # (H100, 80 epochs): the probe creeps up late in training; no warning is due.
    probes = [0.787, 0.818, 0.808, 0.832, 0.827, 0.831, 0.840, 0.841, 0.856, 0.846, 0.858, 0.864,
              0.864, 0.867, 0.868, 0.864]
    losses = [3.47, 3.25, 3.18, 3.14, 3.09, 3.04, 2.98, 2.92, 2.85, 2.78, 2.71, 2.65, 2.60, 2.57,
              2.54, 2.54]
    watcher = LossProbeDivergence()
    for i, (loss, accuracy) in enumerate(zip(losses, probes)):
        watcher.update_loss(5 * i + 4, loss)
        watcher.update_probe(5 * i + 4, accuracy)
        assert watcher.warning() is None, (5 * i + 4, watcher.warning())


def test_divergence_handles_negative_losses():
    # SimSiam/BYOL losses are negative cosines: −0.5 → −0.9 is an 80% relative drop.
    watcher = divergence_with({1: -0.5, 2: -0.7, 3: -0.9}, {1: 0.3, 2: 0.3, 3: 0.3}, window=2)
    assert "80.0%" in watcher.warning()


def test_divergence_window_must_hold_a_probe():
    with pytest.raises(ConfigError):
        LossProbeDivergence(window=0)


# --- monitor -----------------------------------------------------------------------------------


def test_monitor_check_records_and_verdicts():
    monitor = HealthMonitor()
    assert monitor.verdict()["status"] == "unknown"
    healthy = gaussian(128, 16)
    records = monitor.check(1, 100, {"encoder": (healthy, healthy + 0.1), "projector": healthy})
    assert [r["embedding"] for r in records] == ["encoder", "projector"]
    assert all(r["kind"] == "health" and r["epoch"] == 1 and r["step"] == 100 for r in records)
    assert "alignment" in records[0] and "alignment" not in records[1]
    assert monitor.verdict()["status"] == "healthy"

    collapsed = torch.ones(128, 16) + 1e-6 * healthy
    monitor.check(2, 200, {"encoder": (healthy, None), "projector": (collapsed, None)})
    verdict = monitor.verdict()
    assert verdict["status"] == "collapsed"
    assert verdict["messages"] and all(m.startswith("projector: ") for m in verdict["messages"])

    monitor.check(3, 300, {"encoder": (healthy, None), "projector": (healthy, None)})
    assert monitor.verdict()["status"] == "healthy"  # judged on the latest checks only


def test_monitor_probe_emits_warning_and_stalled_verdict():
    monitor = HealthMonitor(probe_window=1)
    monitor.loss(1, 2.0)
    assert [r["kind"] for r in monitor.probe(1, 10, 0.40)] == ["probe"]
    monitor.loss(2, 1.0)
    records = monitor.probe(2, 20, 0.40)
    assert [r["kind"] for r in records] == ["probe", "warning"]
    assert records[0]["knn_top1"] == 0.40 and "50.0%" in records[1]["message"]
    assert monitor.verdict() == {"status": "stalled", "messages": [records[1]["message"]]}


def test_monitor_state_round_trips_through_json():
    monitor = HealthMonitor(probe_window=2)
    monitor.check(1, 10, {"encoder": (gaussian(64, 8), None)})
    for epoch, (loss, accuracy) in enumerate([(3.0, 0.5), (2.5, 0.5)], start=1):
        monitor.loss(epoch, loss)
        monitor.probe(epoch, 10 * epoch, accuracy)

    resumed = HealthMonitor(probe_window=2)
    resumed.load_state_dict(json.loads(json.dumps(monitor.state_dict())))
    assert resumed.verdict() == monitor.verdict()
    # The third probe completes the window only if the first two survived the round trip.
    for watcher in (monitor, resumed):
        watcher.loss(3, 2.0)
        assert [r["kind"] for r in watcher.probe(3, 30, 0.5)] == ["probe", "warning"]
    assert resumed.state_dict() == monitor.state_dict()


@pytest.mark.gpu
def test_health_metrics_are_the_same_on_cuda():
    z, z_pair = torch.relu(gaussian(256, 32)), gaussian(256, 32, seed=1)
    on_cpu = health_metrics(z, z_pair)
    on_cuda = health_metrics(z.cuda(), z_pair.cuda())
    for key, value in on_cpu.items():
        assert on_cuda[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


# ---------------------------------------------------------------------------------------------
# a broken training signal: a loss that does not move, weights that explode


def test_a_loss_that_does_not_move_for_five_logs_is_unhealthy_and_one_change_clears_it():
    from selfsup.health.monitor import CONSTANT_LOSS_LOGS

    monitor = HealthMonitor()
    for step in range(20, 20 * CONSTANT_LOSS_LOGS, 20):  # one log short
        monitor.step_loss(step, math.log(63))
    assert monitor.signal.problems() == []
    monitor.step_loss(20 * CONSTANT_LOSS_LOGS, math.log(63))
    verdict = monitor.verdict()
    assert verdict["status"] == "unhealthy"
    assert "exactly 4.14313 at every logged step since step 20" in verdict["messages"][0]
    monitor.step_loss(200, math.log(63) - 1e-6)  # it moved
    assert monitor.signal.problems() == []


def test_a_loss_stuck_at_zero_says_so():
    monitor = HealthMonitor()
    for step in range(5):
        monitor.step_loss(step, 0.0)
    assert "no other sample to compare with" in monitor.verdict()["messages"][0]


def test_weights_beyond_a_thousand_times_their_start_have_exploded():
    monitor = HealthMonitor()
    monitor.weight_norm(10.0)
    monitor.weight_norm(9_000.0)  # large but within the bound
    assert monitor.verdict()["status"] != "unhealthy"
    monitor.weight_norm(6.6e33)
    assert "the weights have exploded: their norm is 6.6e+33" in monitor.verdict()["messages"][0]
    monitor.weight_norm(float("inf"))
    assert monitor.verdict()["status"] == "unhealthy"


def test_the_training_signal_survives_a_resume():
    monitor = HealthMonitor()
    monitor.weight_norm(10.0)
    for step in range(4):
        monitor.step_loss(step, 1.0)
    restored = HealthMonitor()
    restored.load_state_dict(json.loads(json.dumps(monitor.state_dict())))
    restored.step_loss(4, 1.0)
    restored.weight_norm(10.0)  # the resumed run's first check: the start's norm is kept
    assert restored.signal.initial_norm == 10.0
    assert restored.verdict()["status"] == "unhealthy"


@pytest.mark.parametrize("sets, message", [
    (["method.temperature=1e30"], "the training loss has been exactly 4.14313"),  # ln(2·32 − 1)
    (["optim.name=sgd", "optim.lr=1e6"], "the weights have exploded"),
])
def test_runs_the_audit_found_healthy_are_unhealthy(tiny_config, sets, message):
    from selfsup.train import Trainer

    config = tiny_config("train.batch_size=32", "train.steps_per_epoch=10", "train.log_every=2",
                         "train.epochs=1", *sets)
    run = Trainer(config).fit()
    verdict = json.loads((run / "health_verdict.json").read_text())
    assert verdict["status"] == "unhealthy" and message in verdict["messages"][0]
