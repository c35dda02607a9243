"""DINO: the loss and centre against their formulas, what the teacher sees, its EMA and temperature
schedules, its own BatchNorm statistics, the head's shape, evaluation and export of the teacher, the
frozen last layer, the multi-crop recipe, learning on digits and a whole run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from selfsup.backbones import build_backbone
from selfsup.config import OptimConfig
from selfsup.data import load_split
from selfsup.errors import ConfigError, DataError
from selfsup.losses import dino_loss, update_center
from selfsup.methods.dino import DINO, DINOOptions, has_batchnorm, teacher_temp_at
from selfsup.train import Trainer
from selfsup.train.metrics_log import read_metrics
from selfsup.train.optim import build_optimizer
from selfsup.views import make_views
from selfsup.views import recipes
from method_helpers import assert_ema_step, interrupt_then_resume

SMALL_HEAD = dict(proj_hidden_dim=32, proj_dim=16, num_prototypes=64)


def tiny_dino(**options) -> DINO:
    torch.manual_seed(0)
    encoder = build_backbone({"name": "small-cnn", "widths": [8, 16]}, 1, 8)
    return DINO(encoder, DINOOptions(**{**SMALL_HEAD, **options}))


def digit_views(count: int = 16, seed: int = 0, num_local_views: int = 2) -> list[torch.Tensor]:
    images = load_split("digits", "train").get(torch.arange(count))
    maker = make_views("multicrop", (1, 8, 8), {"num_local_views": num_local_views})
    return maker(images, torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# the loss and the centre


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def dino_loss_by_pairs(student: list[np.ndarray], teacher: list[np.ndarray], center: np.ndarray,
                       student_temp: float, teacher_temp: float) -> float:
    """DINO eq. 3 with explicit loops: every (teacher view i, student view j ≠ i), every sample."""
    terms = []
    for i, t in enumerate(teacher):
        p_teacher = softmax((t - center) / teacher_temp)
        for j, s in enumerate(student):
            if j == i:
                continue
            log_p_student = np.log(softmax(s / student_temp))
            terms.append(np.mean([-(p_teacher[b] * log_p_student[b]).sum() for b in range(len(s))]))
    return float(np.mean(terms))


def test_dino_loss_matches_the_mean_over_view_pairs():
    g = torch.Generator().manual_seed(0)
    # 2 global + 3 local student views, the teacher's 2 global ones
    student = [torch.randn(4, 10, generator=g, requires_grad=True) for _ in range(5)]
    teacher = [torch.randn(4, 10, generator=g, requires_grad=True) for _ in range(2)]
    center = torch.randn(10, generator=g)
    expected = dino_loss_by_pairs([s.detach().double().numpy() for s in student],
                                  [t.detach().double().numpy() for t in teacher],
                                  center.double().numpy(), 0.1, 0.04)
    assert dino_loss(student, teacher, center, 0.1, 0.04).item() == pytest.approx(expected, rel=1e-5)
    # the temperature may be a tensor (the method keeps it in a buffer)
    loss = dino_loss(student, teacher, center, 0.1, torch.tensor(0.04))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert all(t.grad is None for t in teacher)  # the teacher's distribution is a constant
    assert all(s.grad is not None for s in student)


def test_dino_loss_of_two_equal_views_is_the_teacher_entropy():
    """Worked example: student = teacher, no centre, equal temperatures → CE(p, p) = H(p)."""
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    p = torch.softmax(logits, dim=1)
    entropy = -(p * p.log()).sum().item()
    loss = dino_loss([logits, logits], [logits, logits], torch.zeros(3), 1.0, 1.0)
    assert loss.item() == pytest.approx(entropy, rel=1e-6)


def test_dino_loss_needs_a_student_view_besides_the_teachers():
    x = torch.zeros(2, 3)
    with pytest.raises(DataError, match="at least one teacher view"):
        dino_loss([x], [x], torch.zeros(3))


def test_update_center_is_the_momentum_average_of_the_batch_mean():
    g = torch.Generator().manual_seed(0)
    center, logits = torch.randn(6, generator=g), torch.randn(5, 6, generator=g)
    expected = 0.9 * center.numpy() + 0.1 * logits.numpy().mean(axis=0)
    np.testing.assert_allclose(update_center(center, logits, 0.9).numpy(), expected, rtol=1e-5)


def test_update_center_averages_over_the_gathered_batch_of_all_processes():
    """Two processes with unequal batches: the centre moves towards the mean of all 7 rows."""
    g = torch.Generator().manual_seed(1)
    center = torch.randn(4, generator=g)
    mine, theirs = torch.randn(3, 4, generator=g), torch.randn(4, 4, generator=g)
    sent = []
    update_center(center, theirs, 0.8, gather=lambda t: sent.append(t) or t)  # what they contribute
    gathered = update_center(center, mine, 0.8, gather=lambda t: torch.cat([t, sent[0]]))
    expected = 0.8 * center + 0.2 * torch.cat([mine, theirs]).mean(0)
    torch.testing.assert_close(gathered, expected)


def test_forward_moves_the_centre_by_the_formula_in_training_only():
    method = tiny_dino()
    views = digit_views()
    with torch.no_grad():
        method.center.normal_()
        before = method.center.clone()
        teacher_logits = method.teacher(torch.cat(views[:2]))  # train-mode BN: same as in forward
    method(views)
    torch.testing.assert_close(method.center, 0.9 * before + 0.1 * teacher_logits.mean(0))
    assert "center" in method.state_dict()  # a buffer: checkpoints hold it

    method.eval()
    frozen = method.center.clone()
    method(views)
    assert torch.equal(method.center, frozen)


def test_prototype_logits_are_float32_cosines_even_under_bf16_autocast():
    head = tiny_dino().head
    prototypes = head.prototypes.weight.detach()
    z = torch.cat([3.0 * prototypes[:2], torch.randn(3, 16)])  # two rows along prototypes 0 and 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head.logits(z)
    assert logits.dtype == torch.float32
    cosines = (z / z.norm(dim=1, keepdim=True)) @ (prototypes / prototypes.norm(dim=1, keepdim=True)).T
    torch.testing.assert_close(logits, cosines)
    assert logits[0, 0].item() == pytest.approx(1.0) and logits[1, 1].item() == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------
# the teacher


def test_local_crops_never_reach_the_teacher():
    method = tiny_dino()
    seen_inputs, teacher_outputs = [], []
    method.teacher.net.register_forward_pre_hook(lambda module, args: seen_inputs.append(args[0].shape))
    method.teacher.net.register_forward_hook(lambda module, args, out: teacher_outputs.append(out))
    views = digit_views(count=8, num_local_views=3)
    poisoned = views[:2] + [torch.full_like(v, float("nan")) for v in views[2:]]
    method(poisoned)
    assert seen_inputs == [torch.Size([16, 1, 8, 8])]  # one call, the two global views only
    assert torch.isfinite(teacher_outputs[0]).all() and torch.isfinite(method.center).all()


def test_student_sees_every_view_with_each_size_as_one_batch():
    method = tiny_dino()
    seen = []
    method.encoder.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    method(digit_views(count=8, num_local_views=3))
    assert seen == [(16, 1, 8, 8), (24, 1, 4, 4)]


def test_teacher_gets_no_gradient_and_no_optimiser_updates():
    method = tiny_dino()
    method(digit_views()).loss.backward()
    assert all(not t.requires_grad and t.grad is None for t in method.teacher.parameters())
    assert all(p.grad is not None for p in method.encoder.parameters())
    assert all(p.grad is not None for p in method.head.parameters())
    optimised = {id(p) for g in build_optimizer(method, OptimConfig(), 64).param_groups
                 for p in g["params"]}
    assert optimised.isdisjoint(id(t) for t in method.teacher.parameters())


def test_teacher_starts_as_a_copy_and_moves_by_exactly_the_scheduled_momentum():
    method = tiny_dino(base_momentum=0.9)
    student = list(method.encoder.parameters()) + list(method.head.parameters())
    assert_ema_step(method, student, method.teacher.parameters(), 0.9)


def test_teacher_temperature_warms_up_linearly_then_stays():
    # 30% of 100 steps: 0.04 at step 0, halfway (0.055) at step 15, 0.07 from step 30 on
    assert teacher_temp_at(0, 100, 0.04, 0.07, 0.3) == pytest.approx(0.04)
    assert teacher_temp_at(15, 100, 0.04, 0.07, 0.3) == pytest.approx(0.04 + 0.03 * 15 / 30)
    assert teacher_temp_at(30, 100, 0.04, 0.07, 0.3) == pytest.approx(0.07)
    assert teacher_temp_at(99, 100, 0.04, 0.07, 0.3) == pytest.approx(0.07)
    assert teacher_temp_at(0, 100, 0.04, 0.07, 0.0) == pytest.approx(0.07)  # no warm-up


def test_the_step_uses_the_scheduled_teacher_temperature():
    method = tiny_dino(teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_teacher_temp_fraction=0.5)
    assert method.teacher_temperature.item() == pytest.approx(0.04)  # before any step
    for step in range(3):
        method.after_step(step, 10)  # 3 steps done: 0.04 + 0.03 · 3/5
    assert method.teacher_temperature.item() == pytest.approx(0.058)

    method.eval()  # per-sample BatchNorm: the student's per-view outputs equal its batched ones
    views = digit_views()
    with torch.no_grad():
        method.center.normal_()
        student = [method.head(method.encoder(v)) for v in views]
        teacher = method.teacher(torch.cat(views[:2])).chunk(2)
        expected = dino_loss(student, teacher, method.center, 0.1, 0.058)
        assert method(views).loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_the_teacher_keeps_its_own_batchnorm_statistics_from_the_global_views():
    method = tiny_dino()
    views = digit_views(num_local_views=2)
    teacher_bn = next(m for m in method.teacher.modules() if isinstance(m, nn.BatchNorm2d))
    student_bn = next(m for m in method.encoder.modules() if isinstance(m, nn.BatchNorm2d))
    seen = []
    teacher_bn.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    before = teacher_bn.running_mean.clone()
    method(views)
    # one training-mode update with the batch mean of what the teacher's layer saw (globals only)
    assert len(seen) == 1 and len(seen[0]) == 2 * len(views[0])
    expected = 0.9 * before + 0.1 * seen[0].mean((0, 2, 3))
    torch.testing.assert_close(teacher_bn.running_mean, expected)
    method.after_step(0, 10)  # the EMA moves weights only
    torch.testing.assert_close(teacher_bn.running_mean, expected)
    # the student's statistics also saw the local crops: copying them would have changed these
    assert not torch.allclose(student_bn.running_mean, expected)


# ---------------------------------------------------------------------------------------------
# the head


def test_head_batchnorm_follows_the_encoder_unless_set_and_uses_gelu():
    cnn_head = tiny_dino().head.mlp
    assert has_batchnorm(cnn_head) and any(isinstance(m, nn.GELU) for m in cnn_head)
    assert not any(isinstance(m, nn.ReLU) for m in cnn_head)
    assert not has_batchnorm(tiny_dino(head_batch_norm=False).head.mlp)
    vit = build_backbone({"name": "vit-tiny", "depth": 1, "embed_dim": 16, "num_heads": 2,
                          "patch_size": 4}, 1, 8)
    assert not has_batchnorm(vit)
    vit_head = DINO(vit, DINOOptions(**SMALL_HEAD)).head.mlp  # BatchNorm-free, as in the paper
    assert not has_batchnorm(vit_head)
    assert all(m.bias is not None for m in vit_head if isinstance(m, nn.Linear))
    assert has_batchnorm(DINO(vit, DINOOptions(**SMALL_HEAD, head_batch_norm=True)).head.mlp)


def test_head_linear_layers_start_from_a_normal_of_std_002_with_zero_biases():
    torch.manual_seed(0)
    encoder = build_backbone({"name": "small-cnn", "widths": [8, 16]}, 1, 8)
    head = DINO(encoder, DINOOptions(proj_hidden_dim=512, proj_dim=256, num_prototypes=64,
                                     head_batch_norm=False)).head.mlp
    for layer in (m for m in head if isinstance(m, nn.Linear)):  # ≥ 8192 weights each
        assert abs(layer.weight.std().item() - 0.02) < 0.001
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))


# ---------------------------------------------------------------------------------------------
# evaluation uses the teacher


def test_evaluation_and_health_use_the_teachers_backbone():
    method = tiny_dino()
    with torch.no_grad():  # the student moves away: student and teacher now differ
        for p in [*method.encoder.parameters(), *method.head.parameters()]:
            p.add_(0.1 * torch.randn_like(p))
    assert method.export_encoder is method.teacher.net[0]
    assert method.export_encoder is not method.encoder
    x = torch.cat(digit_views(count=8)[:1]).contiguous()
    method.eval()
    with torch.no_grad():
        teacher_h = method.teacher.net[0](x)
        torch.testing.assert_close(method.embed(x), teacher_h)
        health = method.health_embeddings(x)
        torch.testing.assert_close(health["encoder"], teacher_h)
        torch.testing.assert_close(health["projector"], method.teacher.net[1].mlp(teacher_h))
        assert not torch.allclose(method.encoder(x), teacher_h)


# ---------------------------------------------------------------------------------------------
# the frozen last layer and resume


def test_prototypes_get_no_gradient_during_the_first_steps():
    method = tiny_dino(freeze_last_layer_steps=2)
    views = digit_views()
    for step in range(3):
        method.zero_grad(set_to_none=True)
        method(views).loss.backward()
        frozen = step < 2
        assert (method.head.prototypes.weight.grad is None) == frozen, step
        assert all(p.grad is not None for p in method.head.mlp.parameters())
        method.after_step(step, 10)


def test_state_dict_restores_the_step_count_centre_and_temperature():
    method = tiny_dino(freeze_last_layer_steps=5, teacher_temp=0.07)
    with torch.no_grad():
        method.center.normal_()
    for step in range(3):
        method.after_step(step, 10)
    restored = tiny_dino(freeze_last_layer_steps=5, teacher_temp=0.07)
    restored.load_state_dict(method.state_dict())
    assert restored.steps_done == 3 and restored.head.freeze_prototypes
    assert torch.equal(restored.center, method.center)
    assert torch.equal(restored.teacher_temperature, method.teacher_temperature)


@pytest.mark.parametrize("key, value", [("student_temp", 0.0), ("center_momentum", 1.5),
                                        ("num_prototypes", 0), ("freeze_last_layer_steps", -1),
                                        ("head_batch_norm", "yes"), ("head_activation", "tanh")])
def test_bad_options_raise_named_errors(key, value):
    with pytest.raises(ConfigError, match=f"method.{key}"):
        tiny_dino(**{key: value})


def test_fewer_than_two_views_raise_a_named_error():
    method = tiny_dino()
    with pytest.raises(DataError, match="views.recipe=multicrop"):
        method(digit_views()[:1])


# ---------------------------------------------------------------------------------------------
# the multi-crop recipe


def test_multicrop_defaults_for_28_pixel_images():
    maker = make_views("multicrop", (1, 28, 28), {})
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    views = maker(images, torch.Generator().manual_seed(0))
    assert [tuple(v.shape) for v in views] == [(3, 1, 28, 28)] * 2 + [(3, 1, 14, 14)] * 6
    specs = maker.specs
    assert {s.crop_scale for s in specs[:2]} == {(0.35, 1.0)}
    assert {s.crop_scale for s in specs[2:]} == {(0.1, 0.35)}
    assert [s.solarize_prob for s in specs] == [0.0, 0.2] + [0.0] * 6  # BYOL's asymmetry
    assert {s.blur_prob for s in specs} == {0.0}  # no blur at ≤ 64 px


def test_multicrop_uses_dinos_split_and_blur_on_large_images():
    specs = make_views("multicrop", (3, 224, 224), {}).specs
    assert specs[0].size == (224, 224) and specs[2].size == (112, 112)
    assert (specs[0].crop_scale, specs[2].crop_scale) == ((0.4, 1.0), (0.05, 0.4))
    assert [s.blur_prob for s in specs[:3]] == [1.0, 0.1, 0.5]


def test_multicrop_options_set_counts_sizes_and_scales():
    maker = make_views("multicrop", (1, 8, 8), {"num_local_views": 3, "local_size": [4, 3],
                                                "global_size": 6, "local_scale": [0.2, 0.3]})
    views = maker(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.Generator().manual_seed(0))
    assert [tuple(v.shape[2:]) for v in views] == [(6, 6)] * 2 + [(4, 3)] * 3
    assert maker.specs[2].crop_scale == (0.2, 0.3)
    assert len(make_views("multicrop", (1, 8, 8), {"num_local_views": 0})(
        torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.Generator().manual_seed(0))) == 2


def test_multicrop_makes_each_size_in_one_batched_call(monkeypatch):
    calls = []
    original = recipes.augment
    monkeypatch.setattr(recipes, "augment",
                        lambda x, specs, g: calls.append(len(x)) or original(x, specs, g))
    make_views("multicrop", (1, 8, 8), {"num_local_views": 5})(
        torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.Generator().manual_seed(0))
    assert calls == [2 * 4, 5 * 4]


def test_multicrop_same_seed_same_views_other_seed_other_views():
    images = load_split("digits", "train").get(torch.arange(8))
    maker = make_views("multicrop", (1, 8, 8), {})
    a, b, c = (maker(images, torch.Generator().manual_seed(s)) for s in (0, 0, 1))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, z) for x, z in zip(a, c))


@pytest.mark.parametrize("options, key", [({"num_local_views": -1}, "num_local_views"),
                                          ({"local_scale": [0.5, 0.2]}, "local_scale"),
                                          ({"global_size": 0}, "global_size"),
                                          ({"blur_probs": [0.5, 0.5]}, "blur_probs"),
                                          ({"size": 8}, "size")])
def test_multicrop_bad_options_raise_named_errors(options, key):
    with pytest.raises(ConfigError, match=key):
        make_views("multicrop", (1, 8, 8), options)


# ---------------------------------------------------------------------------------------------
# learning


def test_loss_falls_over_a_few_steps_on_digits():
    method = tiny_dino(proj_hidden_dim=128, proj_dim=32)  # a narrower head learns less reliably
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=0.03)
    images = load_split("digits", "train").get(torch.arange(64))
    views = make_views("multicrop", (1, 8, 8), {"num_local_views": 2})
    g = torch.Generator().manual_seed(0)
    losses = []
    for step in range(15):
        loss = method(views(images, g)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        method.after_step(step, 15)
        losses.append(loss.item())
    # The last three steps' mean is 12-33% below the first three's (≈ ln 64 = 4.2) over the
    # initialisation seeds 0-9; asking for 7% leaves a margin.
    assert np.mean(losses[-3:]) < 0.93 * np.mean(losses[:3])


def test_a_whole_dino_run_logs_finite_losses_and_health_and_exports_the_teacher(tiny_config):
    trainer = Trainer(tiny_config("method.name=dino", "method.proj_hidden_dim=32",
                                  "method.num_prototypes=64"))
    run = trainer.fit()
    records = read_metrics(run / "metrics.jsonl")
    losses = [r["loss"] for r in records if r["kind"] in ("step", "epoch")]
    assert losses and all(isinstance(v, float) and math.isfinite(v) for v in losses)
    watched = {r["embedding"] for r in records if r["kind"] == "health"}
    assert watched == {"encoder", "projector"}
    exported = load_file(str(run / "encoder.safetensors"))
    teacher, student = trainer.parts.method.teacher.net[0].state_dict(), trainer.parts.method.encoder.state_dict()
    assert exported.keys() == teacher.keys()
    assert all(torch.equal(exported[k], teacher[k]) for k in exported)
    assert not all(torch.equal(exported[k], student[k]) for k in exported)


def test_resume_through_the_frozen_last_layer_is_exact(tiny_config, monkeypatch):
    """Stopping after epoch 1 (3 steps) of a run whose prototypes are frozen for its first 2 steps:
    the resumed run must know it is past them (a method that forgot its step count would freeze
    them again) and reach the same weights."""
    options = ["method.name=dino", "method.proj_hidden_dim=32", "method.num_prototypes=64",
               "method.freeze_last_layer_steps=2", "method.teacher_temp=0.07"]
    straight = Trainer(tiny_config(*options, out="straight")).fit()

    resumed = interrupt_then_resume(tiny_config(*options, out="resumed"), 0, monkeypatch)
    a, b = (load_file(str(Path(run) / "encoder.safetensors")) for run in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
