"""MoCo v2 and v3: the queue is a FIFO buffer sized from the training set, both losses against
their formulas (MoCo v2 with and without the batch's keys as negatives), shuffling BN (keys
normalised over random sub-batches, back in order), the momentum key encoder's schedule and
isolation, learning on digits, and a whole tiny run of each."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from selfsup.backbones import build_backbone
from selfsup.config import OptimConfig
from selfsup.data import load_split
from selfsup.errors import ConfigError
from selfsup.methods import build_method
from selfsup.methods.base import BuildContext, Collectives
from selfsup.methods.moco import (
    KeyQueue,
    MoCoV2,
    MoCoV2Options,
    MoCoV3,
    MoCoV3Options,
    SplitBatchNorm,
    default_queue_size,
    split_batchnorm,
)
from selfsup.losses import queue_info_nce
from selfsup.registry import METHODS
from selfsup.train import Trainer
from selfsup.train.checkpoint import load_checkpoint
from selfsup.train.metrics_log import read_metrics
from selfsup.train.optim import build_optimizer
from selfsup.views import make_views



def two_processes(gather, rank: int) -> Collectives:
    """Collectives of a stand-in second process: ``gather`` puts the other's keys in place."""
    return Collectives(gather=gather, rank=rank, world_size=2)

def tiny_encoder() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone({"name": "small-cnn", "widths": [8, 16]}, 1, 8)


def tiny_mocov2(**options) -> MoCoV2:
    return MoCoV2(tiny_encoder(), MoCoV2Options(**{"proj_dim": 16, "queue_size": 40, **options}))


def tiny_mocov3(**options) -> MoCoV3:
    return MoCoV3(tiny_encoder(), MoCoV3Options(**{"proj_dim": 16, **options}))


def digit_views(recipe: str, start: int = 0, count: int = 16, seed: int = 0) -> list[torch.Tensor]:
    images = load_split("digits", "train").get(torch.arange(start, start + count))
    return make_views(recipe, (1, 8, 8), {})(images, torch.Generator().manual_seed(seed))


def unit(v: np.ndarray) -> np.ndarray:
    return v / math.sqrt(v @ v)


def moco_loss_by_formula(q: np.ndarray, k: np.ndarray, negatives: np.ndarray, tau: float) -> float:
    """MoCo's InfoNCE query by query: −log e^{q·k⁺/τ} / (e^{q·k⁺/τ} + Σ_n e^{q·n/τ})."""
    total = 0.0
    for q_i, k_i in zip(q.astype(np.float64), k.astype(np.float64)):
        positive = math.exp(unit(q_i) @ unit(k_i) / tau)
        negative = sum(math.exp(unit(q_i) @ unit(n) / tau) for n in negatives.astype(np.float64))
        total -= math.log(positive / (positive + negative))
    return total / len(q)


def queue_and_batch_loss_by_formula(q: np.ndarray, batch_keys: np.ndarray, own: list[int],
                                    negatives: np.ndarray, tau: float) -> float:
    """MoCo v2 with batch negatives, query by query: the positive is key own(i) of the batch;
    −log e^{q·k_own/τ} / (e^{q·k_own/τ} + Σ_{j≠own} e^{q·k_j/τ} + Σ_n e^{q·n/τ})."""
    total = 0.0
    for q_i, p in zip(q.astype(np.float64), own):
        q_i = unit(q_i)
        similarity = [math.exp(q_i @ unit(k_j) / tau) for k_j in batch_keys.astype(np.float64)]
        positive = similarity[p]
        other_keys = sum(similarity) - positive
        queued = sum(math.exp(q_i @ unit(n) / tau) for n in negatives.astype(np.float64))
        total -= math.log(positive / (positive + other_keys + queued))
    return total / len(q)


def in_batch_loss_by_formula(q: np.ndarray, keys: np.ndarray, positives: list[int], tau: float) -> float:
    """InfoNCE with every key as a candidate: −log e^{q_i·k_{p(i)}/τ} / Σ_j e^{q_i·k_j/τ}."""
    total = 0.0
    for q_i, p in zip(q.astype(np.float64), positives):
        logits = [unit(q_i) @ unit(k_j) / tau for k_j in keys.astype(np.float64)]
        total -= logits[p] - math.log(sum(math.exp(x) for x in logits))
    return total / len(q)


# ------------------------------------------------------------------------------ the queue
def numbered_keys(first: int, count: int) -> torch.Tensor:
    """Key t is (t, −t): its value says when it was pushed."""
    t = torch.arange(first, first + count, dtype=torch.float32)
    return torch.stack([t, -t], dim=1)


def test_queue_overwrites_the_oldest_keys_first_and_wraps_around():
    queue = KeyQueue(size=5, dim=2)
    queue.push(numbered_keys(0, 3))
    assert torch.equal(queue.keys[:3], numbered_keys(0, 3)) and queue.pointer.item() == 3
    queue.push(numbered_keys(3, 3))  # slots 3, 4, then wraps to 0: key 0 (the oldest) goes first
    assert torch.equal(queue.keys, numbered_keys(0, 6)[[5, 1, 2, 3, 4]])
    assert queue.pointer.item() == 1


@settings(max_examples=25, deadline=None)
@given(size=st.integers(1, 7), pushes=st.lists(st.integers(1, 12), min_size=1, max_size=6))
def test_queue_holds_the_newest_keys_with_key_t_in_slot_t_mod_size(size, pushes):
    queue = KeyQueue(size=size, dim=2)
    pushed = 0
    for count in pushes:  # any batch size, smaller or larger than the queue
        queue.push(numbered_keys(pushed, count))
        pushed += count
    newest = range(max(0, pushed - size), pushed)
    for t in newest:
        assert queue.keys[t % size].tolist() == [t, -t]
    assert queue.pointer.item() == pushed % size


def test_queue_is_checkpointed_and_never_holds_gradients():
    method = tiny_mocov2()
    state = method.state_dict()
    assert {"queue.keys", "queue.pointer"} <= set(state)
    assert not any(p is method.queue.keys for p in method.parameters())

    out = method(digit_views("simclr"))
    # The push changed the queue in place after the loss used it: backward must still work.
    out.loss.backward()
    assert not method.queue.keys.requires_grad and method.queue.keys.grad_fn is None
    assert method.queue.pointer.item() == 2 * 16

    restored = tiny_mocov2()
    restored.load_state_dict(method.state_dict())
    assert torch.equal(restored.queue.keys, method.queue.keys)
    assert restored.queue.pointer.item() == 2 * 16


@pytest.mark.parametrize("num_train, size", [
    (None, 4096),  # size unknown (built outside the trainer): the small-data default
    (60_000, 4096),  # Fashion-MNIST
    (999_999, 4096),
    (1_281_167, 65536),  # ImageNet: the paper's queue
    (10_000, 4096),  # the cap, 5000, is above 4096
    (1438, 719),  # digits: half the training set
    (3, 1), (1, 1),
])
def test_default_queue_size_follows_the_training_set(num_train, size):
    assert default_queue_size(num_train) == size


def test_build_method_sizes_the_queue_from_the_training_set_unless_one_is_given():
    def queue_length(section: dict, num_train: int | None) -> int:
        return len(build_method({"name": "mocov2", **section}, tiny_encoder(),
                                BuildContext(num_train=num_train)).queue.keys)

    assert queue_length({}, 1438) == 719
    assert queue_length({}, 2_000_000) == 65536
    assert queue_length({}, None) == 4096
    assert queue_length({"queue_size": 3000}, 1438) == 3000  # a given size is used as given


def test_a_checkpointed_queue_keeps_its_length_when_the_method_is_rebuilt_without_the_data():
    trained = MoCoV2(tiny_encoder(), MoCoV2Options(proj_dim=16), BuildContext(num_train=100))  # 50 keys
    trained(digit_views("simclr"))
    rebuilt = MoCoV2(tiny_encoder(), MoCoV2Options(proj_dim=16))  # 4096 keys until loaded
    rebuilt.load_state_dict(trained.state_dict())
    assert rebuilt.queue.keys.shape == (50, 16)
    assert torch.equal(rebuilt.queue.keys, trained.queue.keys)
    assert rebuilt.queue.pointer.item() == 32 % 50
    given = MoCoV2(tiny_encoder(), MoCoV2Options(proj_dim=16, queue_size=64))
    with pytest.raises(RuntimeError, match="size mismatch"):  # a size given outright must match
        given.load_state_dict(trained.state_dict())


def test_an_evaluation_pass_leaves_the_queue_alone():
    method = tiny_mocov2().eval()
    before = method.queue.keys.clone()
    with torch.no_grad():
        method(digit_views("simclr"))
    assert torch.equal(method.queue.keys, before) and method.queue.pointer.item() == 0


# ------------------------------------------------------------------------------ losses
def test_queue_info_nce_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    q, k, negatives = (torch.randn(n, 5, generator=g) for n in (4, 4, 7))
    expected = moco_loss_by_formula(q.numpy(), k.numpy(), negatives.numpy(), tau=0.3)
    assert queue_info_nce(q, k, negatives, 0.3).item() == pytest.approx(expected, rel=1e-5)


def test_batch_negatives_worked_example():
    """Two images, τ = 1, no queue to speak of (one key orthogonal to everything): query 0 is its
    own key e₁, the other image's key is e₂ → −log(e / (e + 1 + 1)); its own key is never also a
    negative, which would give −log(e / (2e + 1 + 1))."""
    method = tiny_mocov2(temperature=1.0, batch_negatives=True)
    e1, e2, e3 = torch.eye(3)
    queue = e3[None]
    loss = method._contrast(e1[None], torch.stack([e1, e2]), 0, queue)
    assert loss.item() == pytest.approx(-math.log(math.e / (math.e + 2)), rel=1e-6)


def test_mocov2_batch_negatives_are_the_gathered_keys_of_all_processes():
    """Under torchrun the queue is filled with every process's keys: the batch negatives are those
    gathered keys too, and query i's positive is key i of this process's slice."""
    method = tiny_mocov2(temperature=0.5, bn_splits=1)  # batch_negatives: the default
    assert method.options.batch_negatives
    views = digit_views("simclr")
    other = F.normalize(torch.randn(16, 16, generator=torch.Generator().manual_seed(1)), dim=1)
    method.collectives = two_processes(lambda keys: torch.cat([other, keys]), rank=1)  # 0's first
    negatives = method.queue.keys.clone().numpy()
    with torch.no_grad():
        q1, q2 = (t.numpy() for t in method.projector(method.encoder(torch.cat(views))).chunk(2))
        k1, k2 = (torch.cat([other, k]).numpy() for k in method.keys(views))
    own = [16 + i for i in range(16)]
    expected = (queue_and_batch_loss_by_formula(q1, k2, own, negatives, 0.5)
                + queue_and_batch_loss_by_formula(q2, k1, own, negatives, 0.5)) / 2
    assert method(views).loss.item() == pytest.approx(expected, rel=1e-4)


def test_queue_info_nce_worked_example():
    # q = k⁺ = e₁, one negative e₂, τ = 1: −log(e / (e + 1)).
    e1, e2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert queue_info_nce(e1, e1, e2, 1.0).item() == pytest.approx(math.log1p(math.exp(-1)), rel=1e-6)


def keys_by_sub_batch(method: MoCoV2, inputs: torch.Tensor, order: torch.Tensor,
                      splits: int) -> torch.Tensor:
    """Keys of ``inputs`` computed sub-batch by sub-batch (consecutive runs of ``order``) by an
    ordinary BatchNorm network in training mode, written back to their input rows. The network is
    a copy of encoder → projector, which the key encoder starts as."""
    network = copy.deepcopy(nn.Sequential(method.encoder, method.projector)).train()
    keys = torch.empty(len(inputs), method.options.proj_dim)
    with torch.no_grad():
        for part in order.chunk(splits):
            keys[part] = network(inputs[part])
    return keys


@pytest.mark.parametrize("splits, batch_negatives", [(1, False), (4, False), (1, True), (4, True)])
def test_mocov2_loss_is_the_symmetrised_formula_and_it_queues_both_views_keys(splits,
                                                                              batch_negatives):
    method = tiny_mocov2(temperature=0.2, bn_splits=splits, batch_negatives=batch_negatives)
    views = digit_views("simclr")
    negatives = method.queue.keys.clone().numpy()
    inputs = torch.cat(views)
    order = copy.deepcopy(method).key_order(32, torch.device("cpu"))  # the order forward draws
    if splits == 1:
        order = torch.arange(32)
    with torch.no_grad():  # queries: the whole batch, in order
        q1, q2 = (t.numpy() for t in method.projector(method.encoder(inputs)).chunk(2))
    keys = keys_by_sub_batch(method, inputs, order, splits)
    if splits > 1:  # the sub-batches' statistics make a difference the check below can see
        assert not torch.allclose(keys, keys_by_sub_batch(method, inputs, order, 1), atol=1e-3)
    k1, k2 = (t.numpy() for t in keys.chunk(2))
    loss = method(views).loss.item()
    if batch_negatives:  # queue + the other images' keys of the batch
        diagonal = list(range(16))
        expected = (queue_and_batch_loss_by_formula(q1, k2, diagonal, negatives, 0.2)
                    + queue_and_batch_loss_by_formula(q2, k1, diagonal, negatives, 0.2)) / 2
    else:  # the paper's: queue only
        expected = (moco_loss_by_formula(q1, k2, negatives, 0.2)
                    + moco_loss_by_formula(q2, k1, negatives, 0.2)) / 2
    assert loss == pytest.approx(expected, rel=1e-4)
    queued = method.queue.keys[:32].numpy()  # both views' keys, back in the input order
    np.testing.assert_allclose(queued, np.stack([unit(v) for v in keys.numpy()]), atol=1e-5)
    assert torch.equal(method.queue.keys[32:], torch.from_numpy(negatives[32:]))  # rest untouched


# ------------------------------------------------------------------------------ shuffling BN
def batchnorm_pair(kind: type, channels: int = 3) -> tuple[nn.Module, SplitBatchNorm]:
    torch.manual_seed(0)
    plain = kind(channels)
    with torch.no_grad():
        for t in (plain.weight, plain.bias, plain.running_mean):
            t.normal_()
        plain.running_var.uniform_(0.5, 2.0)
    return plain, SplitBatchNorm(copy.deepcopy(plain))


@pytest.mark.parametrize("kind, shape", [(nn.BatchNorm1d, (12, 3)), (nn.BatchNorm2d, (12, 3, 4, 5))])
def test_split_batchnorm_normalises_each_sub_batch_like_its_own_batchnorm(kind, shape):
    plain, split = batchnorm_pair(kind)
    split.groups = 3
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1)) * 3 + 1
    expected = [copy.deepcopy(plain).train()(part) for part in x.chunk(3)]  # one BN per sub-batch
    before = {k: v.clone() for k, v in split.state_dict().items()}
    y = split.train()(x)
    torch.testing.assert_close(y, torch.cat(expected))
    assert not torch.allclose(y, copy.deepcopy(plain).train()(x), atol=1e-3)  # ≠ one batch
    # running statistics are the momentum target's copy of the query encoder's: training leaves
    # them alone
    assert all(torch.equal(before[k], v) for k, v in split.state_dict().items())
    # evaluation: the running statistics, as the BatchNorm it replaced
    plain.load_state_dict(split.state_dict())
    torch.testing.assert_close(split.eval()(x), plain.eval()(x))


def test_split_batchnorm_keeps_the_state_dict_and_parameter_order_of_the_network():
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 4),
                            nn.BatchNorm1d(4))
    names = list(network.state_dict())
    params = [id(p) for p in network.parameters()]
    split_batchnorm(network)
    assert isinstance(network[1], SplitBatchNorm) and isinstance(network[4], SplitBatchNorm)
    assert list(network.state_dict()) == names
    assert [id(p) for p in network.parameters()] == params  # the same tensors, in the same order


def test_shuffled_keys_come_back_in_the_order_of_their_inputs():
    """With BatchNorm on running statistics (evaluation mode) a key no longer depends on the
    sub-batch it is computed in, so the shuffled computation must equal the plain one row by row."""
    method = tiny_mocov2(bn_splits=4).eval()
    views = digit_views("simclr")
    order = copy.deepcopy(method).key_order(32, torch.device("cpu"))
    assert not torch.equal(order, torch.arange(32))  # a real shuffle
    with torch.no_grad():
        expected = F.normalize(method.key_encoder(torch.cat(views)), dim=1).chunk(2)
    for got, want in zip(method.global_keys(views), expected):
        torch.testing.assert_close(got, want)


def test_each_step_draws_a_new_key_order_and_a_resumed_run_draws_the_same():
    method = tiny_mocov2()
    first = method.key_order(32, torch.device("cpu"))
    restored = tiny_mocov2()
    restored.load_state_dict(method.state_dict())  # the seed and count travel in the state dict
    second = method.key_order(32, torch.device("cpu"))
    assert not torch.equal(first, second)
    assert torch.equal(restored.key_order(32, torch.device("cpu")), second)
    assert sorted(second.tolist()) == list(range(32))


def test_bad_bn_splits_raise_named_config_errors():
    with pytest.raises(ConfigError, match="bn_splits"):
        tiny_mocov2(bn_splits=0)
    with pytest.raises(ConfigError, match="bn_splits=5"):  # 32 keys do not split into 5
        tiny_mocov2(bn_splits=5)(digit_views("simclr"))
    # two processes (a stand-in gather that doubles the batch): 48 keys in 3 sub-batches of 16,
    # but 3 sub-batches cannot be shared by 2 processes
    method = tiny_mocov2(bn_splits=3)
    method.collectives = two_processes(lambda x: torch.cat([x, x]), rank=0)
    with pytest.raises(ConfigError, match="multiple of the number of processes"):
        method(digit_views("simclr", count=12))


def test_mocov3_loss_is_the_papers_symmetric_ctr_times_two_tau():
    method = tiny_mocov3(temperature=0.2)
    views = digit_views("byol")
    with torch.no_grad():
        z = method.projector(method.encoder(torch.cat(views)))
        p1, p2 = (t.numpy() for t in method.predictor(z).chunk(2))
        k1, k2 = (t.numpy() for t in z.chunk(2))
    diagonal = list(range(16))
    expected = 2 * 0.2 * (in_batch_loss_by_formula(p1, k2, diagonal, 0.2)
                          + in_batch_loss_by_formula(p2, k1, diagonal, 0.2))
    assert method(views).loss.item() == pytest.approx(expected, rel=1e-4)


def test_mocov3_takes_negatives_from_the_gathered_keys_of_all_processes():
    method = tiny_mocov3(temperature=0.5)
    views = digit_views("byol")
    other = torch.randn(16, 16, generator=torch.Generator().manual_seed(1))  # process 0's keys
    method.collectives = two_processes(lambda keys: torch.cat([other, keys]), rank=1)
    with torch.no_grad():
        z = method.projector(method.encoder(torch.cat(views)))
        p1, p2 = (t.numpy() for t in method.predictor(z).chunk(2))
        k1, k2 = z.chunk(2)
    own = [16 + i for i in range(16)]  # this process's keys follow process 0's
    expected = 2 * 0.5 * (in_batch_loss_by_formula(p1, torch.cat([other, k2]).numpy(), own, 0.5)
                          + in_batch_loss_by_formula(p2, torch.cat([other, k1]).numpy(), own, 0.5))
    assert method(views).loss.item() == pytest.approx(expected, rel=1e-4)


# ------------------------------------------------------------------------------ key encoder
def online_path(method) -> list[torch.Tensor]:
    return [*method.encoder.parameters(), *method.projector.parameters()]


@pytest.mark.parametrize("make, schedule, expected_momentum", [
    (tiny_mocov2, "constant", 0.99),  # MoCo v2: the same momentum late in training
    (tiny_mocov3, "cosine", 1 - (1 - 0.99) * (math.cos(math.pi * 7 / 10) + 1) / 2),
])
def test_key_encoder_moves_by_exactly_one_minus_m(make, schedule, expected_momentum):
    method = make(momentum=0.99, momentum_schedule=schedule)
    with torch.no_grad():
        for p in online_path(method):
            p.add_(torch.randn_like(p))
    before = [t.clone() for t in method.key_encoder.parameters()]
    method.after_step(step=7, total_steps=10)
    m = expected_momentum
    for b, t, o in zip(before, method.key_encoder.parameters(), online_path(method)):
        torch.testing.assert_close(t, m * b + (1 - m) * o)


@pytest.mark.parametrize("make, recipe", [(tiny_mocov2, "simclr"), (tiny_mocov3, "byol")])
def test_keys_get_no_gradient_and_the_key_encoder_is_not_optimised(make, recipe):
    method = make()
    views = digit_views(recipe)
    assert not any(k.requires_grad for k in method.keys(views))
    method(views).loss.backward()
    assert all(not t.requires_grad and t.grad is None for t in method.key_encoder.parameters())
    assert all(p.grad is not None for p in method.encoder.parameters())
    optimised = {id(p) for g in build_optimizer(method, OptimConfig(), 64).param_groups
                 for p in g["params"]}
    assert optimised.isdisjoint(id(t) for t in method.key_encoder.parameters())


# ------------------------------------------------------------------------------ learning
def losses_over_steps(method, batches: list[list[torch.Tensor]], steps: int = 15) -> list[float]:
    """Adam steps cycling over fixed batches of views (fresh views every step would hide the
    descent in 15 steps behind augmentation noise)."""
    optimizer = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for step in range(steps):
        loss = method(batches[step % len(batches)]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.after_step(step, steps)
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("batch_negatives", [True, False])
def test_mocov2_loss_falls_below_chance_on_digits(batch_negatives):
    method = tiny_mocov2(proj_dim=32, proj_hidden_dim=64, queue_size=128,
                         batch_negatives=batch_negatives)
    # Two batches of 64 different digits: the queue (both views' keys of one batch) then always
    # holds other images' keys. A first pass fills it with real keys instead of random vectors.
    batches = [digit_views("simclr", start, 64) for start in (0, 64)]
    with torch.no_grad():
        method(batches[1])
    losses = losses_over_steps(method, batches)
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    # Queue only: about 5.03 → 4.47 here (seeds 0-2: falls of 13-19%), chance log(1 + 128) = 4.86;
    # queue + the batch's 63 other keys: 5.43 → 4.84, chance log(1 + 63 + 128) = 5.26.
    chance = math.log(1 + 128 + (63 if batch_negatives else 0))
    assert last < 0.93 * first and last < chance, losses


def test_mocov3_loss_falls_below_chance_on_digits():
    method = tiny_mocov3(proj_dim=32, proj_hidden_dim=64, pred_hidden_dim=64)
    batches = [digit_views("byol", 0, 64)]
    losses = losses_over_steps(method, batches)
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    # About 3.3 → 1.6 here (seeds 0-2); chance is 2 · 2τ · log 64 = 3.33.
    assert last < 0.75 * first and last < 2 * 2 * 0.2 * math.log(64), losses


# ------------------------------------------------------------------------------ wiring
def test_registered_with_their_view_recipes():
    assert METHODS.get("mocov2") is MoCoV2 and MoCoV2.view_recipe == "simclr"
    assert METHODS.get("mocov3") is MoCoV3 and MoCoV3.view_recipe == "byol"


@pytest.mark.parametrize("options, named", [
    ({"momentum_schedule": "linear"}, "linear"),
    ({"momentum": 1.5}, "1.5"),
    ({"temperature": 0.0}, "temperature"),
    ({"queue_size": -1}, "queue_size"),
])
def test_bad_options_raise_a_named_config_error(options, named):
    with pytest.raises(ConfigError, match=named):
        tiny_mocov2(**options)


@pytest.mark.parametrize("name, extra", [("mocov2", ["method.queue_size=100"]), ("mocov3", [])])
def test_a_whole_tiny_run_logs_finite_losses_and_health(tiny_config, name, extra):
    run = Path(Trainer(tiny_config(f"method.name={name}", *extra)).fit())
    records = read_metrics(run / "metrics.jsonl")
    losses = [r["loss"] for r in records if r["kind"] in ("step", "epoch")]
    assert losses and all(isinstance(v, float) and math.isfinite(v) for v in losses)
    assert {r["embedding"] for r in records if r["kind"] == "health"} == {"encoder", "projector"}
    state = load_checkpoint(run / "checkpoints" / "last.pt")["method"]
    assert any(key.startswith("key_encoder.") for key in state)
    if name == "mocov2":  # 2 epochs × 3 steps × 2 views × 64 keys pushed into 100 slots
        assert state["queue.pointer"].item() == (2 * 3 * 2 * 64) % 100
        assert state["_extra_state"]["shuffles_done"] == 2 * 3  # one key order per step


def test_the_trainer_sizes_the_mocov2_queue_from_its_training_set(tiny_config):
    """No method.queue_size: the trainer tells MoCo v2 the training set's size (digits: 1438
    images), which caps the queue at half of it."""
    run = Path(Trainer(tiny_config("method.name=mocov2", "train.epochs=1",
                                   "train.steps_per_epoch=1")).fit())
    state = load_checkpoint(run / "checkpoints" / "last.pt")["method"]
    assert state["queue.keys"].shape[0] == len(load_split("digits", "train")) // 2 == 719
