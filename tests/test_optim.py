"""Optimisation: LAMB and LARS against their formulas, which parameters they adapt and decay,
fixed-rate groups under the schedule, gradient accumulation, the fp16 gradient scaler's step, and
checkpointed ViT blocks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from selfsup.backbones import build_backbone
from selfsup.config import OptimConfig
from selfsup.errors import ConfigError
from selfsup.data import load_split
from selfsup.losses import nt_xent, queue_info_nce
from selfsup.methods import build_method
from selfsup.methods.base import StepOutput
from selfsup.train.optim import (
    LAMB,
    LARS,
    build_optimizer,
    lr_factor,
    param_groups,
    scaled_lr,
    set_learning_rates,
)
from selfsup.train.step import split_views, train_step
from selfsup.views import make_views

CPU = torch.device("cpu")
TINY_VIT = {"name": "vit-tiny", "depth": 2, "embed_dim": 16, "num_heads": 2, "patch_size": 4}


# ------------------------------------------------------------------------------------------------
# LAMB and LARS


def test_lamb_matches_its_formula_with_a_step_count_per_parameter():
    w0, b0 = np.array([[3.0, -4.0], [1.0, 2.0]]), np.array([0.5, -1.5])
    w = torch.tensor(w0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(b0, dtype=torch.float64, requires_grad=True)
    lr, (beta1, beta2), eps, decay = 0.1, (0.8, 0.95), 1e-6, 0.1
    opt = LAMB([{"params": [w], "weight_decay": decay, "lars": True},
                {"params": [b], "weight_decay": 0.0, "lars": False}], lr=lr, betas=(beta1, beta2),
               eps=eps)
    grads_w = [np.array([[0.1, 0.2], [-0.3, 0.4]]), np.array([[1.0, -1.0], [0.5, 0.0]]),
               np.array([[0.2, 0.1], [0.0, -0.2]])]
    grads_b = [np.array([2.0, -1.0]), None, np.array([0.5, 0.5])]  # b skips step 2
    for gw, gb in zip(grads_w, grads_b):
        w.grad = torch.tensor(gw)
        b.grad = None if gb is None else torch.tensor(gb)
        opt.step()

    def lamb(x, grads, weight_decay, trust_ratio):
        m, v, t = np.zeros_like(x), np.zeros_like(x), 0
        for g in grads:
            if g is None:
                continue
            t += 1
            m = beta1 * m + (1 - beta1) * g
            v = beta2 * v + (1 - beta2) * g * g
            u = (m / (1 - beta1**t)) / (np.sqrt(v / (1 - beta2**t)) + eps) + weight_decay * x
            ratio = np.linalg.norm(x) / np.linalg.norm(u) if trust_ratio else 1.0
            x = x - lr * ratio * u
        return x

    np.testing.assert_allclose(w.detach().numpy(), lamb(w0, grads_w, decay, True), rtol=1e-12)
    np.testing.assert_allclose(b.detach().numpy(), lamb(b0, grads_b, 0.0, False), rtol=1e-12)
    assert opt.state[b]["step"] == 2 and opt.state[w]["step"] == 3


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3),
                         nn.LayerNorm(3))


@pytest.mark.parametrize("name", ["lars", "lamb"])
def test_biases_and_norm_parameters_are_neither_adapted_nor_decayed(name):
    net = small_net()
    config = OptimConfig(name=name, lr=0.4, weight_decay=0.5, lars_eta=0.02)
    opt = build_optimizer(net, config, global_batch_size=512)
    assert isinstance(opt, LARS if name == "lars" else LAMB)
    weights = {id(net[0].weight), id(net[3].weight)}
    adapted, plain = opt.param_groups
    assert {id(p) for p in adapted["params"]} == weights
    assert adapted["lars"] and adapted["weight_decay"] == 0.5
    assert {id(p) for p in plain["params"]} == {id(p) for p in net.parameters()} - weights
    assert not plain["lars"] and plain["weight_decay"] == 0.0
    lr = 0.4 * 512 / 256  # the linear scaling rule on the global batch
    assert opt.param_groups[0]["lr"] == pytest.approx(lr) == scaled_lr(config, 512)

    before = {id(p): p.detach().clone() for p in net.parameters()}
    for i, p in enumerate(net.parameters()):
        p.grad = torch.full_like(p, 0.1 * (i + 1))
    opt.step()
    for p in net.parameters():
        w, g = before[id(p)], p.grad
        if id(p) in weights:  # trust ratio times the decayed direction
            u = g + 0.5 * w if name == "lars" else g / (g.abs() + 1e-6) + 0.5 * w
            ratio = (0.02 if name == "lars" else 1.0) * w.norm() / u.norm()
            expected = w - lr * ratio * u
        else:  # the first step of plain SGD (momentum buffer = g) or of Adam (update ≈ sign(g))
            expected = w - lr * (g if name == "lars" else g / (g.abs() + 1e-6))
        torch.testing.assert_close(p.detach(), expected)


# ------------------------------------------------------------------------------------------------
# groups whose learning rate the schedule leaves alone


class WithFixedHead(nn.Module):
    """A body on the schedule and a head at a fixed rate (SimSiam's predictor, in small)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
        self.head = nn.Linear(3, 2)

    def fixed_lr_modules(self) -> list[nn.Module]:
        return [self.head]


def ids(params) -> set[int]:
    return {id(p) for p in params}


def test_fixed_rate_modules_get_their_own_groups_last_and_keep_decay_and_lars_flags():
    net = WithFixedHead()
    groups = param_groups(net, weight_decay=0.5, fixed_modules=net.fixed_lr_modules())
    assert [(g["lars"], g["weight_decay"], g["fixed_lr"]) for g in groups] == [
        (True, 0.5, False), (False, 0.0, False), (True, 0.5, True), (False, 0.0, True)]
    assert ids(groups[0]["params"]) == {id(net.body[0].weight)}
    assert ids(groups[1]["params"]) == ids([net.body[0].bias, *net.body[1].parameters()])
    assert ids(groups[2]["params"]) == {id(net.head.weight)}
    assert ids(groups[3]["params"]) == {id(net.head.bias)}
    # no fixed modules: the two scheduled groups only
    assert [g["fixed_lr"] for g in param_groups(net.body, 0.5)] == [False, False]


@pytest.mark.parametrize("name", ["sgd", "lars", "lamb", "adamw"])
def test_after_n_scheduled_steps_fixed_groups_sit_at_their_base_rate_and_the_rest_decays(name):
    net = WithFixedHead()
    optimizer = build_optimizer(net, OptimConfig(name=name, lr=0.2), global_batch_size=512,
                                fixed_modules=net.fixed_lr_modules())
    base = [g["lr"] for g in optimizer.param_groups]
    assert base == [pytest.approx(0.2 * 512 / 256)] * 4
    total, warmup, steps_done = 100, 10, 50
    for step in range(steps_done):
        set_learning_rates(optimizer, base, lr_factor(step, total, warmup, 0.0))
    # the cosine of the last step set, written out: 0.5 · (1 + cos(π · (49 − 10) / 89)) ≈ 0.60
    # (the cosine runs from step 10 to the last step, 99)
    cosine = 0.5 * (1 + math.cos(math.pi * (steps_done - 1 - warmup) / (total - 1 - warmup)))
    rates = [g["lr"] for g in optimizer.param_groups]
    assert rates[:2] == [pytest.approx(0.4 * cosine)] * 2 and cosine < 0.7
    assert rates[2:] == [0.4, 0.4]  # the fixed groups: exactly their base rate
    set_learning_rates(optimizer, base, lr_factor(0, total, warmup, 0.0))  # warm-up: 1/10 of it
    assert [g["lr"] for g in optimizer.param_groups] == [pytest.approx(0.04)] * 2 + [0.4, 0.4]


def test_set_learning_rates_rejects_a_base_list_of_another_length():
    net = WithFixedHead()
    optimizer = build_optimizer(net, OptimConfig(name="sgd"), 256, fixed_modules=net.fixed_lr_modules())
    with pytest.raises(ValueError):
        set_learning_rates(optimizer, [0.1, 0.1], 0.5)


# ------------------------------------------------------------------------------------------------
# the training step: accumulation and the fp16 gradient scaler


def byol(backbone: dict, **heads) -> nn.Module:
    torch.manual_seed(0)
    return build_method({"name": "byol", "proj_dim": 16, **heads}, build_backbone(backbone, 1, 8))


def digit_views(method: nn.Module, count: int = 16) -> list[torch.Tensor]:
    images = load_split("digits", "train").get(torch.arange(count))
    return make_views(method.view_recipe, (1, 8, 8), {})(images, torch.Generator().manual_seed(0))


def step_with(method: nn.Module, micro_batches: list[list[torch.Tensor]]) -> float:
    # SGD's step is proportional to the gradient, so a mis-scaled accumulation shows.
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    loss, _ = train_step(method, micro_batches, opt, CPU)
    method.after_step(0, 10)
    return loss.item()


def test_accumulating_micro_batches_equals_one_big_batch_without_batchnorm():
    """BYOL's loss is a mean of per-sample terms; on a ViT (LayerNorm, per sample) with 1-layer
    heads nothing else couples the samples, so 4 micro-batches of 4 must give the step of 16."""
    start, accumulated, whole = (byol(TINY_VIT, proj_layers=1, pred_layers=1) for _ in range(3))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in whole.modules())
    views = digit_views(whole)
    micro = split_views(views, 4)
    assert [len(m[0]) for m in micro] == [4, 4, 4, 4]
    accumulated_loss = step_with(accumulated, micro)
    whole_loss = step_with(whole, [views])
    assert accumulated_loss == pytest.approx(whole_loss, rel=1e-5)
    changed = 0
    initial = start.state_dict()
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(accumulated.state_dict()[name], value, rtol=1e-5, atol=1e-6, msg=name)
        changed += not torch.equal(value, initial[name])
    assert changed > 10  # online weights and, through after_step, the target's


def test_accumulation_differs_from_one_big_batch_when_batchnorm_couples_the_samples():
    """Why the equality above needs a method without BatchNorm: the small CNN normalises each
    micro-batch by its own statistics."""
    accumulated, whole = (byol({"name": "small-cnn", "widths": [8, 16]}) for _ in range(2))
    views = digit_views(whole)
    step_with(accumulated, split_views(views, 4))
    step_with(whole, [views])
    first_conv = [m.encoder.features[0].weight for m in (accumulated, whole)]
    assert not torch.allclose(*first_conv, rtol=1e-4, atol=1e-5)


class Quadratic(nn.Module):
    """loss = mean_i (x_i · w)², a method-like module with a known gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))

    def forward(self, views: list[torch.Tensor]) -> StepOutput:
        return StepOutput(loss=(views[0] @ self.w).square().mean())


def scaled_and_plain_steps(x: torch.Tensor) -> tuple[Quadratic, Quadratic, torch.amp.GradScaler]:
    scaled, plain = Quadratic(), Quadratic()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    for model, grad_scaler in ((scaled, scaler), (plain, None)):
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        train_step(model, [[x]], opt, CPU, clip_grad=1.0, scaler=grad_scaler)
    return scaled, plain, scaler


def test_scaled_step_equals_the_plain_step_with_clipping_on_unscaled_gradients():
    x = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 2.0]])
    gradient = 2 * ((x @ Quadratic().w.detach())[:, None] * x).mean(0)
    assert gradient.norm() > 1.0  # so clipping to norm 1 acts
    scaled, plain, scaler = scaled_and_plain_steps(x)
    # Scaling by a power of 2 and back is exact; clipping saw the true gradient, else it would have
    # shrunk the 4096-times larger one to norm 1 and the step to nearly nothing.
    assert torch.equal(scaled.w, plain.w)
    clipped = gradient / gradient.norm()
    torch.testing.assert_close(plain.w.detach(), Quadratic().w.detach() - 0.01 * clipped)
    assert scaler.get_scale() == 2.0**12


def test_a_step_whose_scaled_gradients_overflow_is_skipped_and_the_scale_lowered():
    x = torch.tensor([[1.0, float("inf"), 0.5]])
    scaled, _, scaler = scaled_and_plain_steps(x)
    assert torch.equal(scaled.w.detach(), Quadratic().w.detach())
    assert scaler.get_scale() == 2.0**11


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_contrastive_losses_stay_float32_under_half_precision_autocast(dtype):
    torch.manual_seed(0)
    z1, z2, bank = torch.randn(8, 16), torch.randn(8, 16), torch.randn(32, 16)
    expected = [nt_xent(z1, z2, 0.2), queue_info_nce(z1, z2, bank, 0.2)]
    with torch.autocast("cpu", dtype=dtype):
        got = [nt_xent(z1, z2, 0.2), queue_info_nce(z1, z2, bank, 0.2)]
    for value, reference in zip(got, expected):
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, reference)


# ------------------------------------------------------------------------------------------------
# activation checkpointing


def test_checkpointed_vit_blocks_give_the_same_loss_and_gradients_in_a_method():
    methods = [byol({**TINY_VIT, "grad_checkpointing": flag}) for flag in (False, True)]
    assert methods[1].encoder.grad_checkpointing and not methods[0].encoder.grad_checkpointing
    views = digit_views(methods[0], count=8)
    losses = []
    for method in methods:
        loss = method.train()(views).loss
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1])
    for (name, a), (_, b) in zip(methods[0].named_parameters(), methods[1].named_parameters()):
        if a.requires_grad:
            assert a.grad is not None and b.grad is not None, name
            torch.testing.assert_close(b.grad, a.grad, msg=name)


def test_vit_tokens_and_position_table_are_not_decayed_in_pretraining():
    from selfsup.backbones import build_backbone
    from selfsup.methods import build_method

    encoder = build_backbone({"name": "vit-tiny", "img_size": 8, "patch_size": 4}, 1, 8)
    method = build_method({"name": "mae"}, encoder)
    decayed, plain = param_groups(method, 0.05)
    plain_ids = {id(p) for p in plain["params"]}
    for token in (encoder.cls_token, encoder.pos_embed, method.mask_token):
        assert token.ndim == 3 and id(token) in plain_ids
    assert id(encoder.patch_embed.weight) in {id(p) for p in decayed["params"]}
    assert decayed["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0


@pytest.mark.parametrize("method_name", ["mlm", "next-token"])
def test_accumulating_token_losses_weights_micro_batches_by_their_tokens(method_name):
    """MLM's and next-token's losses are means over a data-dependent number of tokens; micro-batches
    with different numbers must still add up to the step of the whole batch."""
    from selfsup.tokenize import ProteinTokenizer
    from selfsup.views.sequence_recipes import make_sequence_views

    tokenizer = ProteinTokenizer()
    sequences = ["MKVLAAGIVGLLLAVSAPEPTIDE", "PEP", "ACDEFGHIKLMNPQRSTVWYACDEFG", "MST"]
    ids = tokenizer.encode_batch(sequences).ids
    recipe = "mlm" if method_name == "mlm" else "tokens"
    views = make_sequence_views(recipe, tokenizer, {"rate": 0.3} if recipe == "mlm" else {})(
        ids, torch.Generator().manual_seed(0))

    def tiny():
        torch.manual_seed(0)
        encoder = build_backbone({"name": "transformer-tiny", "vocab_size": tokenizer.vocab_size,
                                  "dim": 16, "depth": 1, "ffn_dim": 32, "num_heads": 2,
                                  "causal": method_name == "next-token"}, 0, 0)
        return build_method({"name": method_name}, encoder)

    accumulated, whole = tiny(), tiny()
    micro = split_views(views, 2)
    counts = [int(accumulated.loss_weight(m)) for m in micro]
    assert counts[0] != counts[1]  # the premise: an equal-weight mean would be wrong here
    accumulated_loss = step_with(accumulated, micro)
    whole_loss = step_with(whole, [views])
    assert accumulated_loss == pytest.approx(whole_loss, rel=1e-5)
    for (name, a), b in zip(accumulated.named_parameters(), whole.parameters()):
        torch.testing.assert_close(a, b, msg=name)


def test_accumulating_through_a_wrapper_without_the_method_is_refused():
    """A DDP or compiled wrapper hides ``loss_weight``: equal weights would be silently wrong for
    MLM, so train_step must be told the method inside."""

    class Wrapper(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, views):
            return self.inner(views)

    method = byol({"name": "small-cnn", "widths": [8, 16]})
    micro = split_views(digit_views(method), 2)
    opt = torch.optim.SGD(method.parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"got a Wrapper: pass train_step\(\.\.\., method=\.\.\.\)"):
        train_step(Wrapper(method), micro, opt, CPU)


def test_sqrt_scaling_for_adam_and_the_sequence_default_at_small_batches():
    config = OptimConfig(name="adamw", lr=2e-3, lr_scaling="sqrt")
    assert scaled_lr(config, 64) == pytest.approx(1e-3)  # √(64/256) = 1/2
    assert scaled_lr(OptimConfig(lr=2e-3, lr_scaling="none"), 64) == pytest.approx(2e-3)
    assert scaled_lr(OptimConfig(lr=2e-3), 64) == pytest.approx(5e-4)  # linear, the default
    with pytest.raises(ConfigError, match="lr_scaling"):
        OptimConfig(lr_scaling="cubic")
    # the sequence methods' default gives a batch of 32 a rate that trains (it was 1.25e-4)
    from selfsup.run_config import load_config

    config = load_config(None, ["method.name=mlm", "train.batch_size=32"]).optim
    assert scaled_lr(config, 32) == pytest.approx(2e-3 * (32 / 256) ** 0.5)
    assert scaled_lr(config, 32) > 5e-4
