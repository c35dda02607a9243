"""Data-parallel training: 2 gloo processes on the CPU against 1 process on the same global batch.

One pair of processes is spawned for the whole file (starting one costs seconds); it runs every
case and a few whole ``Trainer`` runs, saves what it computed, and the tests compare that with
references computed here in one process.

Exactness, per method: two optimiser steps (SGD with momentum: its step is proportional to the
gradient, so a gradient off by 1/world_size shows; LARS or Adam would normalise it away) with
after_step on 2 processes × b images give the same parameters as one process with 2b images:

* "global" reference: one process, one forward pass over the 2b images. This is what every method
  must match with SyncBatchNorm (its default for methods whose loss couples samples), and what
  methods without such a loss match with SyncBatchNorm switched on. Buffers (BatchNorm statistics,
  queues, centres) must match as well, and the mean of the processes' losses the reference loss.
* "split" reference, for per-process BatchNorm (the default of per-sample losses: BYOL, SimSiam,
  MAE, ...): one process runs the two halves separately, as the two processes do, and averages
  their losses. Only parameters are compared: each process keeps its own BatchNorm statistics.

A method whose model has no BatchNorm (the token Transformers) gets the global reference alone: its
BatchNorm choice changes nothing, and the masked-token loss, normalised by the global number of
chosen tokens, is not the average of per-shard losses that the split reference computes.

Inputs: digits images for image methods; for token methods short random protein sequences (DNA
reads for dna-contrastive) of varied lengths, each step's global batch padded to one width so the
reference can concatenate the shards. Views are drawn outside the forward pass with a generator
seeded per step and rank (``local_views``), the same for both runs. The token shards hold different
numbers of chosen tokens (checked), so a per-process mean would fail the comparison.

Random draws inside a forward pass (masks, noise, rotations) come from each process's global
generator. The split reference draws them per half with the same seeds; a method whose loss also
couples samples (equivariance) cannot be split, so its group elements are pinned to the sample's
index in the global batch for both runs (``pinned_randint``). BEiT cannot be split either (its
codebook learns from the patches of every process at once): the global reference draws its block
masks b at a time from each process's forward seed, as the processes do (``masks_drawn_per_rank``).
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
import subprocess
import sys
import warnings
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch import nn

from selfsup.backbones import build_backbone
from selfsup.config import OptimConfig
from selfsup.run_config import load_config
from selfsup.data import load_split
from selfsup.data.base import ImageSource, TensorImages
from selfsup.data.loader import BatchStream
from selfsup.errors import ConfigError
from selfsup.losses import masked_token_cross_entropy
from selfsup.methods import BuildContext, build_method
from selfsup.methods.base import SINGLE_PROCESS, Collectives
from selfsup.methods.dino import has_batchnorm
from selfsup.methods.next_token import next_token_targets
from selfsup.registry import METHODS
from selfsup.tokenize import IGNORE_LABEL, Tokenizer, make_tokenizer
from selfsup.train import Trainer
from selfsup.train.distributed import (
    CPUSyncBatchNorm,
    all_reduce_sum_,
    convert_sync_batchnorm,
    prepare_method,
    process_collectives,
    sync_batchnorm_default,
)
from selfsup.train.metrics_log import read_metrics
from selfsup.train.optim import build_optimizer, scaled_lr
from selfsup.train.process import ProcessInfo, process_info
from selfsup.train.step import split_views, train_step
from selfsup.views import is_sequence_recipe, make_sequence_views, make_views

from conftest import TINY
from method_helpers import free_port, interrupted_trainer

WORLD = 2
LOCAL_BATCH = 8  # b: the reference sees 2b
STEPS = 2
IN_SHAPE = (1, 8, 8)
CPU = torch.device("cpu")
SMALL_CNN = {"name": "small-cnn", "widths": [8, 16]}
TINY_VIT = {"name": "vit-tiny", "depth": 1, "embed_dim": 16, "num_heads": 2, "patch_size": 4}
TINY_TRANSFORMER = {"name": "transformer-tiny", "dim": 16, "depth": 1, "num_heads": 2,
                    "ffn_dim": 32}
# The tokeniser of each token view recipe's inputs: reverse complements need DNA reads.
RECIPE_TOKENIZER = {"mlm": "protein", "tokens": "protein", "dna-contrastive": "dna",
                    "protein-contrastive": "protein"}
# Smaller heads than the defaults: the test is about the arithmetic, not the capacity.
SMALL_OPTIONS = {
    "dino": {"proj_hidden_dim": 32, "proj_dim": 16, "num_prototypes": 64},
    "barlow-twins": {"proj_hidden_dim": 32, "proj_dim": 32},
    "vicreg": {"proj_hidden_dim": 32, "proj_dim": 32},
    "mocov2": {"queue_size": 64},
    "byol": {"proj_dim": 16},
    "simsiam": {"proj_dim": 16},
    "dna-contrastive": {"proj_dim": 16},
    "seq-contrastive": {"proj_dim": 16},
}
# Exact equality is not expected: sums run in another order. The rounding error grows with the
# gradients, so the tolerance is relative to each tensor's change over the steps; a 1/world_size
# error in the gradient would be off by about half that change. 1e-4 of the change: on an AMD EPYC
# one weight of seq-contrastive's synchronised BatchNorm run was 1.6e-5 of it off (1e-5 failed).
RELATIVE_TO_CHANGE, RTOL, ATOL = 1e-4, 1e-4, 1e-6


@dataclass(frozen=True)
class Case:
    name: str
    group: str  # the test it belongs to: the method's name, or a name with options
    method: dict[str, Any]
    backbone: dict[str, Any]
    sync_bn: bool
    reference: str  # "global" | "split"
    pin_randint: bool = False
    accumulate: int = 1  # micro-batches per optimiser step


# ------------------------------------------------------------------------------------------------
# what both sides compute


def build(case: Case, collectives: Collectives = SINGLE_PROCESS) -> nn.Module:
    torch.manual_seed(0)
    return build_method(case.method, build_backbone(case.backbone, 1, 8),
                        BuildContext(in_shape=IN_SHAPE, collectives=collectives))


def local_views(method: nn.Module, step: int, rank: int) -> list[torch.Tensor]:
    """Rank ``rank``'s views at ``step``: its b samples of the step's global batch, fixed views."""
    generator = torch.Generator().manual_seed(1000 * step + rank)
    if is_sequence_recipe(method.view_recipe):
        tokenizer = make_tokenizer(**method.encoder.options.tokenizer)
        maker = make_sequence_views(method.view_recipe, tokenizer, {})
        return maker(local_token_ids(tokenizer, step, rank), generator)
    start = (step * WORLD + rank) * LOCAL_BATCH
    images = load_split("digits", "train").get(torch.arange(start, start + LOCAL_BATCH))
    return make_views(method.view_recipe, IN_SHAPE, {})(images, generator)


def local_token_ids(tokenizer: Tokenizer, step: int, rank: int) -> torch.Tensor:
    """Rank ``rank``'s b sequences at ``step``, padded to the width of the step's global batch."""
    global_batch = WORLD * LOCAL_BATCH
    sequences = random_sequences(tokenizer.name)[step * global_batch:(step + 1) * global_batch]
    return tokenizer.encode_batch(sequences).ids[rank * LOCAL_BATCH:(rank + 1) * LOCAL_BATCH]


def random_sequences(tokenizer_name: str) -> list[str]:
    """STEPS global batches of random sequences of varied lengths: proteins, or DNA reads."""
    letters, shortest, longest = (("ACGT", 12, 40) if tokenizer_name == "dna"
                                  else ("ACDEFGHIKLMNPQRSTVWY", 6, 24))
    draw = random.Random(tokenizer_name)
    return ["".join(draw.choices(letters, k=draw.randint(shortest, longest)))
            for _ in range(STEPS * WORLD * LOCAL_BATCH)]


def forward_seed(step: int, rank: int) -> int:
    return 7919 * step + rank


def optimizer_for(method: nn.Module) -> torch.optim.Optimizer:
    return build_optimizer(method, OptimConfig(name="sgd", lr=2.0, weight_decay=0.0),
                           WORLD * LOCAL_BATCH, fixed_modules=method.fixed_lr_modules())


@contextlib.contextmanager
def pinned_randint(method: nn.Module, first_index: int):
    """Make ``torch.randint`` inside the method's module return k_i = i mod (high − low) + low for
    the samples i = first_index, first_index + 1, … of the global batch."""

    class PinnedTorch:
        def randint(self, low, high, size, device=None, **_):
            index = torch.arange(first_index, first_index + size[0], device=device)
            return index % (high - low) + low

        def __getattr__(self, name):
            return getattr(torch, name)

    module = sys.modules[type(method).__module__]
    original = module.torch
    module.torch = PinnedTorch()
    try:
        yield
    finally:
        module.torch = original


def maybe_pinned(case: Case, method: nn.Module, first_index: int):
    return pinned_randint(method, first_index) if case.pin_randint else contextlib.nullcontext()


@contextlib.contextmanager
def masks_drawn_per_rank(method: nn.Module, step: int):
    """In the one-process reference, make the method's ``mask_patches`` draw the global batch's
    masks as the processes do: b at a time, each rank's from that rank's forward seed (a process's
    first draw of the step; ``distributed_run`` seeds it just before)."""
    draw = method.mask_patches

    def per_rank(batch: int, *args, **kwargs) -> torch.Tensor:
        assert batch == WORLD * LOCAL_BATCH, "per-rank masks need the whole global batch at once"
        masks = []
        for rank in range(WORLD):
            torch.manual_seed(forward_seed(step, rank))
            masks.append(draw(LOCAL_BATCH, *args, **kwargs))
        return torch.cat(masks)

    method.mask_patches = per_rank
    try:
        yield
    finally:
        del method.mask_patches  # the instance attribute; the class's method shows through again


def distributed_run(case: Case, info: ProcessInfo) -> dict[str, Any]:
    """STEPS data-parallel steps of ``case`` on this process; its final state and losses."""
    method = build(case, process_collectives(info))
    step_module = prepare_method(method, info, CPU, case.sync_bn)
    optimizer = optimizer_for(method)
    losses = []
    for step in range(STEPS):
        torch.manual_seed(forward_seed(step, info.rank))
        with maybe_pinned(case, method, info.rank * LOCAL_BATCH):
            micro_batches = split_views(local_views(method, step, info.rank), case.accumulate)
            loss, _ = train_step(step_module, micro_batches, optimizer, CPU, method=method)
        method.after_step(step, STEPS)
        losses.append(loss.item())
    return {"state": copy.deepcopy(method.state_dict()), "losses": losses}


def reference_run(case: Case, lr_scale: float = 1.0) -> dict[str, Any]:
    """The same STEPS in one process on the global batch (see the module docstring)."""
    method = build(case)
    optimizer = optimizer_for(method)
    for group in optimizer.param_groups:
        group["lr"] *= lr_scale
    losses = []
    for step in range(STEPS):
        halves = [local_views(method, step, rank) for rank in range(WORLD)]
        if case.reference == "global":
            # micro-batch i of the global batch: micro-batch i of every process, in rank order
            per_rank = [split_views(views, case.accumulate) for views in halves]
            micro_batches = [[torch.cat(parts) for parts in zip(*micro)] for micro in zip(*per_rank)]
            per_rank_masks = (masks_drawn_per_rank(method, step) if hasattr(method, "mask_patches")
                              else contextlib.nullcontext())
            with maybe_pinned(case, method, 0), per_rank_masks:
                loss, _ = train_step(method, micro_batches, optimizer, CPU)
        else:
            loss = torch.zeros(())
            for rank, views in enumerate(halves):
                torch.manual_seed(forward_seed(step, rank))
                half = method(views).loss / WORLD
                half.backward()
                loss += half.detach()
            optimizer.step()
            optimizer.zero_grad()
        method.after_step(step, STEPS)
        losses.append(loss.item())
    return {"state": method.state_dict(), "losses": losses}


# ------------------------------------------------------------------------------------------------
# the cases


def method_cases(name: str, accumulate: int = 1, **options) -> list[Case]:
    """The default SyncBatchNorm choice of a method, plus SyncBatchNorm on where the default is off
    and the method draws nothing at random in its forward pass; one global case for a model
    without BatchNorm that draws nothing at random (both choices are the same model)."""
    section = {"name": name, **SMALL_OPTIONS.get(name, {}), **options}
    group = case_group(name, accumulate, **options)
    backbone = token_backbone(name) if makes_token_views(name) else SMALL_CNN
    try:
        method = build(Case(group, group, section, backbone, False, "global"))
    except ConfigError:  # e.g. MAE needs a ViT
        if makes_token_views(name):
            raise
        backbone = TINY_VIT
        method = build(Case(group, group, section, backbone, False, "global"))
    random_forward = draws_at_random(method)
    if sync_batchnorm_default(method):
        return [Case(f"{group}-sync-bn", group, section, backbone, True, "global",
                     pin_randint=random_forward, accumulate=accumulate)]
    if not random_forward and not has_batchnorm(method):  # own or synced BatchNorm: the same model
        return [Case(f"{group}-no-bn", group, section, backbone, False, "global",
                     accumulate=accumulate)]
    cases = [Case(f"{group}-own-bn", group, section, backbone, False, "split", accumulate=accumulate)]
    if not random_forward:
        cases.append(Case(f"{group}-sync-bn", group, section, backbone, True, "global",
                          accumulate=accumulate))
    return cases


def token_backbone(name: str) -> dict[str, Any]:
    """A tiny Transformer for the token method ``name``, with the backbone settings its config
    defaults demand (next-token: causal) and its recipe's tokeniser."""
    method = METHODS.get(name)
    tokenizer = make_tokenizer(RECIPE_TOKENIZER[method.view_recipe])
    demanded = {key: value for key, value in method.config_defaults.get("backbone", {}).items()
                if key != "name"}
    return {**TINY_TRANSFORMER, **demanded, "vocab_size": tokenizer.vocab_size,
            "pad_id": tokenizer.pad_id, "tokenizer": tokenizer.config()}


def case_group(name: str, accumulate: int = 1, **options) -> str:
    settings = {**options, **({"accumulate": accumulate} if accumulate > 1 else {})}
    return name + "".join(f"-{key}={value}" for key, value in settings.items())


# Beyond each method's defaults: DINO's frozen prototypes get no gradient in the first step (DDP
# must be told to look for them), gradient accumulation (DDP's no_sync) with a gathered loss and
# with the masked-token loss (each micro-batch normalised by its own global count, as in one
# process with the same micro-batches), the latter scoring the full logits (the tiny model's
# default scores the chosen positions alone: its 16 dimensions are fewer than the 30 tokens).
EXTRA_GROUPS = [("dino", 1, {"freeze_last_layer_steps": 1}), ("simclr", 2, {}),
                ("mlm", 2, {"score_chosen_only": False})]


def draws_at_random(method: nn.Module) -> bool:
    """Whether the method's training forward pass draws from the global random generator."""
    views = local_views(method, 0, 0)
    losses = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        losses.append(copy.deepcopy(method).train()(views).loss.detach())
    return not torch.equal(*losses)


def makes_token_views(name: str) -> bool:
    return is_sequence_recipe(METHODS.get(name).view_recipe)


def all_cases() -> list[Case]:
    cases = [case for name in METHODS.names() for case in method_cases(name)]
    return cases + [case for name, accumulate, options in EXTRA_GROUPS
                    for case in method_cases(name, accumulate, **options)]


# ------------------------------------------------------------------------------------------------
# the processes


def _worker(rank: int, port: int, cases: list[Case], runs: dict[str, Any], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    # oneDNN returns the 1-channel conv's weight gradient in another (equivalent) memory layout
    # than DDP's bucket expects: a performance note that does not concern these tiny models.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    info = process_info()
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    results: dict[str, Any] = {}
    for case in cases:
        # A failure is reported by that case's test; it is deterministic, so both ranks fail alike
        # and neither waits for the other in a collective.
        try:
            results[case.name] = distributed_run(case, info)
        except Exception as error:  # noqa: BLE001
            results[case.name] = f"{type(error).__name__}: {error}"
    results["token_loss"] = {name: token_loss_run(chosen, info.rank)
                             for name, chosen in TOKEN_LOSS_SHARDS.items()}
    results["trainer"] = trainer_runs(runs)
    torch.save(results, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


# The masked-token loss on its own: how many of a shard's POSITIONS are chosen, per rank.
TOKEN_LOSS_SHARDS = {"uneven": (5, 1), "a shard without chosen tokens": (4, 0),
                     "none chosen": (0, 0)}
POSITIONS, VOCAB, WIDTH = 6, 5, 3


def token_loss_shard(chosen: tuple[int, ...], rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank ``rank``'s (features, labels): random, with the first ``chosen[rank]`` labels chosen."""
    generator = torch.Generator().manual_seed(rank)
    features = torch.randn(POSITIONS, WIDTH, generator=generator)
    labels = torch.randint(VOCAB, (POSITIONS,), generator=generator)
    labels[chosen[rank]:] = IGNORE_LABEL
    return features, labels


def token_loss_weight() -> torch.Tensor:
    """The logits' weight, a parameter shared by every process: logits = features @ weightᵀ."""
    return torch.randn(VOCAB, WIDTH, generator=torch.Generator().manual_seed(99)).requires_grad_()


def token_loss_run(chosen: tuple[int, ...], rank: int) -> dict[str, Any]:
    """This process's masked-token loss, its gradient for the shared weight, and its loss without
    a graph (which must stay local: an evaluation on rank 0 alone must not wait for the others)."""
    features, labels = token_loss_shard(chosen, rank)
    weight = token_loss_weight()
    loss = masked_token_cross_entropy(features @ weight.T, labels, all_reduce_sum_)
    loss.backward()
    with torch.no_grad():
        evaluation = masked_token_cross_entropy(features @ weight.T, labels, all_reduce_sum_)
    return {"loss": loss.detach(), "attached": loss.requires_grad, "grad": weight.grad,
            "evaluation": evaluation}


def trainer_runs(runs: dict[str, Any]) -> dict[str, Any]:
    """Whole Trainer runs under the torchrun environment: straight, and stopped then resumed."""
    straight = Trainer(runs["straight"])
    straight.fit()
    try:
        interrupted_trainer(runs["resumed"], 0).fit()
    except KeyboardInterrupt:
        pass
    dist.barrier()  # rank 0 has written the checkpoint every process resumes from
    resumed = Trainer(runs["resumed"], resume=True)
    resumed.fit()
    # a budget: rank 1's clock runs 10× fast, so alone it would stop timing steps first and wait
    # forever in the other rank's next all-reduce; the stop is shared, so both agree
    import selfsup.train.budget as budget_module  # where the step rate is timed

    clock = budget_module.time.perf_counter
    if dist.get_rank() == 1:
        budget_module.time = type("FastClock", (), {"perf_counter": staticmethod(
            lambda: 10 * clock()), "time": staticmethod(time.time)})
    try:
        budget = Trainer(runs["budget"])
        budget.fit()
    finally:
        budget_module.time = time
    return {"straight": copy.deepcopy(straight.parts.method.state_dict()),
            "budget_steps": budget.parts.schedule.total_steps,
            "resumed": copy.deepcopy(resumed.parts.method.state_dict()),
            "base_lrs": straight.parts.base_lrs, "micro_batch": straight.parts.micro_batch}


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    """Run every case and the Trainer runs on 2 processes once; their results, and the cases."""
    cases = all_cases()
    out = tmp_path_factory.mktemp("ranks")
    base = TINY + ["train.epochs=2", "train.steps_per_epoch=2", "method.name=simclr"]
    runs = {name: load_config(None, [*base, f"out={out / name}"]) for name in ("straight", "resumed")}
    runs["budget"] = load_config(None, [*base, "train.budget_minutes=0.05", f"out={out / 'budget'}"])
    mp.spawn(_worker, args=(free_port(), cases, runs, str(out)), nprocs=WORLD, join=True)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    return {"cases": {case.name: case for case in cases}, "ranks": ranks, "runs": runs}


# ------------------------------------------------------------------------------------------------
# exactness


def groups() -> list[str]:
    """Every registered method, and the extra option groups."""
    return METHODS.names() + [case_group(*extra[:2], **extra[2]) for extra in EXTRA_GROUPS]


@pytest.mark.parametrize("group", groups())
def test_two_processes_match_one_process_on_the_global_batch(spawned, group):
    cases = [case for case in spawned["cases"].values() if case.group == group]
    assert cases, f"no case for {group}"
    for case in cases:
        reference = reference_run(case)
        initial = build(case).state_dict()
        names = [n for n, _ in build(case).named_parameters()]
        # The steps must move the parameters well above the tolerance's floor to tell anything.
        assert max((reference["state"][n] - initial[n]).abs().max() for n in names) > 1000 * ATOL
        compared = list(reference["state"]) if case.reference == "global" else names
        for rank, results in enumerate(spawned["ranks"]):
            got = results[case.name]
            assert isinstance(got, dict), f"{case.name} failed on rank {rank}: {got}"
            for key in compared:
                assert_close_to_reference(got["state"][key], reference["state"][key], initial[key],
                                          f"{case.name}, rank {rank}: {key}")
        if case.reference == "global":  # the mean of the processes' losses is the global loss
            mean_losses = torch.tensor([r[case.name]["losses"] for r in spawned["ranks"]]).mean(0)
            torch.testing.assert_close(mean_losses, torch.tensor(reference["losses"]),
                                       rtol=1e-5, atol=1e-6, msg=case.name)


def assert_close_to_reference(actual: Any, expected: Any, initial: Any, what: str) -> None:
    if not isinstance(expected, torch.Tensor):  # e.g. DINO's step counter (extra state)
        assert actual == expected, what
        return
    if not expected.is_floating_point():
        assert torch.equal(actual, expected), what
        return
    change = (expected - initial).abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL + RELATIVE_TO_CHANGE * change,
                               msg=lambda detail: f"{what} (change over the steps {change:.3g}): "
                                                  f"{detail}")


def test_the_comparison_catches_a_gradient_off_by_one_over_world_size(spawned):
    """Every update scaled by 1/world_size (what DDP's average gives when each process's loss
    only covers its share but is not summed back, or the reverse mistake halved) must fail."""
    for name in ("simclr-sync-bn", "barlow-twins-sync-bn", "byol-own-bn"):
        case = spawned["cases"][name]
        wrong, initial = reference_run(case, lr_scale=1 / WORLD)["state"], build(case).state_dict()
        got = spawned["ranks"][0][name]["state"]
        mismatches = 0
        for key, _ in build(case).named_parameters():
            try:
                assert_close_to_reference(got[key], wrong[key], initial[key], key)
            except AssertionError:
                mismatches += 1
        assert mismatches > 0, name


@pytest.mark.parametrize("name", list(TOKEN_LOSS_SHARDS))
def test_masked_token_loss_averaged_by_ddp_is_the_global_mean(spawned, name):
    """DDP's average of the processes' gradients is the gradient of one mean over the chosen tokens
    of both shards, every process's loss value is that mean, and without a graph each process
    keeps its own shard's mean (no collective)."""
    chosen = TOKEN_LOSS_SHARDS[name]
    shards = [token_loss_shard(chosen, rank) for rank in range(WORLD)]
    weight = token_loss_weight()
    features, labels = (torch.cat(parts) for parts in zip(*shards))
    logits = (features @ weight.T).double()
    picked = labels != IGNORE_LABEL
    # independent formula: −log softmax at the label, averaged over the chosen positions
    terms = torch.logsumexp(logits[picked], 1) - logits[picked, labels[picked]]
    expected = terms.mean() if picked.any() else logits.sum() * 0
    expected.backward()
    runs = [results["token_loss"][name] for results in spawned["ranks"]]
    for rank, run in enumerate(runs):
        assert run["attached"], f"rank {rank}: the loss must stay in the graph"
        torch.testing.assert_close(run["loss"].double(), expected.detach(), msg=f"rank {rank}")
        own_shard = masked_token_cross_entropy(shards[rank][0] @ weight.detach().T, shards[rank][1])
        torch.testing.assert_close(run["evaluation"], own_shard, msg=f"rank {rank}")
    mean_grad = torch.stack([run["grad"] for run in runs]).mean(0).double()
    torch.testing.assert_close(mean_grad, weight.grad.double(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["mlm", "next-token"])
def test_token_shards_hold_different_numbers_of_chosen_tokens(name):
    """The premise of the token cases: with equal counts, a per-process mean would pass too."""
    method = build(Case(name, name, {"name": name}, token_backbone(name), False, "global"))
    for step in range(STEPS):
        counts = []
        for rank in range(WORLD):
            views = local_views(method, step, rank)
            targets = (views[1] if name == "mlm"
                       else next_token_targets(views[0], views[0] != method.encoder.pad_id))
            counts.append(int((targets != IGNORE_LABEL).sum()))
        assert len(set(counts)) == WORLD, f"step {step}: {counts}"


def test_sync_batchnorm_is_the_default_exactly_for_losses_that_couple_samples():
    def default(name: str) -> bool:
        section = {"name": name, **SMALL_OPTIONS.get(name, {})}
        return sync_batchnorm_default(build(Case(name, name, section, SMALL_CNN, False, "global")))

    for name in ("simclr", "mocov2", "mocov3", "dino", "barlow-twins", "vicreg", "equivariance"):
        assert default(name), name
    for name in ("byol", "simsiam", "rotation", "ae"):
        assert not default(name), name


# ------------------------------------------------------------------------------------------------
# the Trainer under torchrun's environment


def test_ranks_end_with_identical_parameters_and_rank_0_alone_writes(spawned):
    straight = spawned["runs"]["straight"]
    rank0, rank1 = (r["trainer"]["straight"] for r in spawned["ranks"])
    assert rank0.keys() == rank1.keys()
    for key in rank0:  # DDP's averaged gradients are bitwise the same on every process
        assert torch.equal(rank0[key], rank1[key]), key
    encoder = load_file(str(Path(straight.out) / "encoder.safetensors"))
    for key, value in encoder.items():
        assert torch.equal(value, rank0[f"encoder.{key}"]), key
    records = read_metrics(Path(straight.out) / "metrics.jsonl")
    starts = [r for r in records if r.get("event") == "start"]
    assert len(starts) == 1 and starts[0]["processes"] == WORLD
    steps = [r["step"] for r in records if r["kind"] == "step"]
    assert steps == sorted(set(steps))  # one writer: no record twice
    assert [r["step"] for r in records if r["kind"] == "epoch"] == [2, 4]


def test_batch_size_is_global_and_sets_the_learning_rate(spawned):
    config = spawned["runs"]["straight"]
    trainer = spawned["ranks"][1]["trainer"]
    assert trainer["micro_batch"] * WORLD == config.train.batch_size
    assert trainer["base_lrs"][0] == pytest.approx(scaled_lr(config.optim, config.train.batch_size))


def test_resume_under_ddp_gives_the_uninterrupted_parameters(spawned):
    for rank, results in enumerate(spawned["ranks"]):
        straight, resumed = results["trainer"]["straight"], results["trainer"]["resumed"]
        for key in straight:
            assert torch.equal(straight[key], resumed[key]), f"rank {rank}: {key}"
    records = read_metrics(Path(spawned["runs"]["resumed"].out) / "metrics.jsonl")
    assert [r["step"] for r in records if r["kind"] == "epoch"] == [2, 4]


# ------------------------------------------------------------------------------------------------
# pieces that need no second process


class IndexedImages(ImageSource):
    """Image i is filled with the value i; not TensorImages, so it streams through a DataLoader."""

    name = "indexed"

    def __init__(self, count: int) -> None:
        self.labels = torch.arange(count)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (1, 2, 2)

    def get(self, indices: torch.Tensor) -> torch.Tensor:
        return indices.to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()


@pytest.mark.parametrize("kind", ["held on the device", "streamed"])
def test_each_process_takes_its_own_slice_of_every_global_batch(kind):
    source: ImageSource = IndexedImages(20)
    if kind == "held on the device":
        source = TensorImages(source.get(torch.arange(20)), source.labels, name="indexed")

    def batches(**shard) -> list[torch.Tensor]:
        stream = BatchStream(source, 8, CPU, seed=3, num_workers=0, **shard)
        assert stream.on_device == (kind == "held on the device")
        return [images[:, 0, 0, 0].long() for images, _ in stream.epoch(1)]

    whole = batches()
    shards = [batches(rank=rank, world_size=2) for rank in range(2)]
    assert len(whole) == len(shards[0]) == len(shards[1]) == 2
    assert not torch.equal(whole[0], torch.arange(8))  # shuffled: the slices follow the permutation
    for batch, first, second in zip(whole, *shards):
        assert len(first) == len(second) == 4
        assert torch.equal(torch.cat([first, second]), batch)  # rank order, nothing lost or doubled


def test_a_global_batch_that_does_not_split_evenly_is_a_named_error():
    source = TensorImages(torch.zeros(20, 1, 2, 2, dtype=torch.uint8), None, name="zeros")
    with pytest.raises(ConfigError, match="multiple of the number of processes"):
        BatchStream(source, 9, CPU, seed=0, rank=0, world_size=2)


def test_process_info_reads_torchrun_variables_and_names_bad_ones(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert process_info() == ProcessInfo(rank=3, world_size=4, local_rank=1)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ConfigError, match="RANK=4"):
        process_info()
    monkeypatch.setenv("WORLD_SIZE", "four")
    with pytest.raises(ConfigError, match="WORLD_SIZE"):
        process_info()


def test_converted_batchnorm_keeps_parameters_statistics_and_outputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(48, 4),
                          nn.BatchNorm1d(4, affine=False))
    model(torch.randn(5, 1, 6, 6))  # non-trivial running statistics
    plain = copy.deepcopy(model)
    weight, running_mean = model[1].weight, model[1].running_mean
    convert_sync_batchnorm(model, CPU)
    assert isinstance(model[1], CPUSyncBatchNorm) and isinstance(model[4], CPUSyncBatchNorm)
    assert model[1].weight is weight and model[1].running_mean is running_mean
    x = torch.randn(6, 1, 6, 6)
    for mode in ("train", "eval"):  # one process: the module is BatchNorm
        getattr(model, mode)(), getattr(plain, mode)()
        torch.testing.assert_close(model(x), plain(x))


@pytest.mark.slow
def test_selfsup_pretrain_runs_unchanged_under_torchrun(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
               str(WORLD), "-m", "selfsup", "pretrain", "--out", str(out),
               *(f"--set={item}" for item in TINY)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    records = read_metrics(out / "metrics.jsonl")
    starts = [r for r in records if r.get("event") == "start"]
    assert len(starts) == 1 and starts[0]["processes"] == WORLD and starts[0]["micro_batch"] == 32
    assert [r["step"] for r in records if r["kind"] == "epoch"] == [3, 6]
    assert (out / "encoder.safetensors").is_file() and (out / "health_verdict.json").is_file()


def test_a_budget_under_ddp_takes_one_step_count_though_the_clocks_disagree(spawned):
    steps = [results["trainer"]["budget_steps"] for results in spawned["ranks"]]
    assert steps[0] == steps[1] >= 1
