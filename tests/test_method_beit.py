"""BEiT: block masking, the k-means patch codebook (assignment, EMA update, re-seeding, freezing,
state), the masked-token loss against its formula, the method's wiring, learning on digits, and a
whole run with exact resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from method_helpers import (
    assert_health_watches_the_encoder_only,
    assert_loss_falls,
    digit_step_losses,
    interrupt_then_resume,
)

from selfsup.backbones import build_backbone
from selfsup.codebook import PatchCodebook, code_perplexity
from selfsup.run_config import load_config
from selfsup.data import load_split
from selfsup.errors import ConfigError, DataError
from selfsup.masking import random_masking
from selfsup.methods.base import Collectives
from selfsup.methods.beit import (
    BEiT,
    BEiTOptions,
    block_masking,
    num_masked,
)
from selfsup.train import Trainer
from selfsup.train.checkpoint import load_checkpoint
from selfsup.train.metrics_log import read_metrics
from selfsup.views import make_views

TINY_VIT = {"name": "vit-tiny", "depth": 1, "embed_dim": 32, "num_heads": 2, "patch_size": 2}
TINY_RUN = ["method.name=beit", "backbone.name=vit-tiny", "backbone.depth=1", "backbone.embed_dim=32",
            "backbone.num_heads=2", "backbone.patch_size=2", "method.num_codes=16",
            "method.min_block_patches=2", "method.codebook_warmup_steps=4",
            "optim.name=adamw", "optim.lr=1e-3"]


def tiny_beit(depth: int = 1, **options) -> BEiT:
    """BEiT on 8×8 gray images with 2×2 patches: a 4×4 grid of 16 patches, 6 masked."""
    torch.manual_seed(0)
    encoder = build_backbone({**TINY_VIT, "depth": depth}, 1, 8)
    return BEiT(encoder, BEiTOptions(**{"num_codes": 16, "min_block_patches": 2, **options}))


def digits(count: int = 8) -> torch.Tensor:
    """Normalised float digits (B, 1, 8, 8), as a view recipe would hand them over."""
    images = load_split("digits", "train").get(torch.arange(count))
    return (images.float() / 255 - 0.5) / 0.25


def seeded_codebook(codes: torch.Tensor, counts: torch.Tensor, **kwargs) -> PatchCodebook:
    """A codebook whose codes and EMA counts are given (sums consistent with them)."""
    book = PatchCodebook(codes.shape[0], codes.shape[1], **kwargs)
    book.codes.copy_(codes)
    book.cluster_size.copy_(counts)
    book.code_sum.copy_(codes * counts.unsqueeze(1))
    book.initialized = True
    return book


# ---------------------------------------------------------------------------------- masking


def test_the_number_of_masked_patches_is_what_random_masking_hides():
    # N − max(1, round(N·(1 − ratio))): 49 → 49 − round(29.4) = 20; 16 → 16 − round(9.6) = 6
    assert num_masked(49, 0.4) == 20 and num_masked(16, 0.4) == 6 and num_masked(196, 0.4) == 78
    assert num_masked(4, 0.99) == 3  # at least one patch stays visible
    assert num_masked(49, 0.4) == int(random_masking(1, 49, 0.4).mask.sum())


@pytest.mark.parametrize("grid, count, min_block", [((7, 7), 20, 4), ((4, 4), 6, 2), ((5, 3), 7, 4),
                                                   ((7, 7), 20, 20), ((14, 14), 78, 16), ((2, 2), 3, 1)])
def test_block_masking_masks_exactly_the_requested_number_per_sample(grid, count, min_block):
    mask = block_masking(64, grid, count, min_block, torch.Generator().manual_seed(0))
    assert mask.shape == (64, grid[0] * grid[1]) and mask.dtype == torch.bool
    assert mask.sum(dim=1).tolist() == [count] * 64


def test_block_masks_are_blocky_and_a_seed_repeats_them():
    generator = torch.Generator().manual_seed(1)
    blocks = block_masking(256, (7, 7), 20, 4, generator)
    scattered = random_masking(256, 49, 0.4, generator).mask

    def masked_neighbours(mask: torch.Tensor) -> float:
        """Mean number of masked 4-neighbours of a masked patch."""
        grid = mask.view(-1, 7, 7).float()
        padded = torch.nn.functional.pad(grid, (1, 1, 1, 1))
        around = padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]
        return float((around * grid).sum() / grid.sum())

    # uniform masking: 19/48 of each neighbour is masked, ≈ 1.3 of ~3.4 (edges); blocks ≈ 2.7
    assert masked_neighbours(blocks) > 1.5 * masked_neighbours(scattered)
    again = block_masking(256, (7, 7), 20, 4, torch.Generator().manual_seed(1))
    assert torch.equal(again, blocks)
    assert len({tuple(row.tolist()) for row in blocks}) > 200  # samples differ


def test_block_masking_rejects_counts_that_leave_nothing_to_predict_or_see():
    with pytest.raises(DataError, match="mask_ratio"):
        block_masking(2, (4, 4), 16)
    with pytest.raises(DataError, match="mask_ratio"):
        block_masking(2, (4, 4), 0)


# ---------------------------------------------------------------------------------- codebook


def test_assign_is_the_argmin_of_squared_distances():
    generator = torch.Generator().manual_seed(0)
    codes, patches = torch.randn(7, 5, generator=generator), torch.randn(3, 11, 5, generator=generator)
    book = seeded_codebook(codes, torch.ones(7))
    ids = book.assign(patches)
    assert ids.shape == (3, 11)
    for b in range(3):
        for i in range(11):
            distances = [sum((float(patches[b, i, d]) - float(codes[k, d])) ** 2 for d in range(5))
                         for k in range(7)]
            assert ids[b, i] == int(np.argmin(distances))


def test_ema_update_follows_the_vq_vae_formula():
    decay, eps = 0.9, 1e-5
    codes = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    counts = torch.tensor([4.0, 2.0, 3.0])
    patches = torch.tensor([[1.0, 0.0], [0.0, -1.0], [9.0, 1.0], [11.0, 1.0], [8.0, 0.0]])
    book = seeded_codebook(codes, counts, decay=decay, dead_threshold=0.0, eps=eps)
    ids = book.update(patches)
    assert ids.tolist() == [0, 0, 1, 1, 1]  # the assignment before the update
    # by hand: code 0 gets 2 patches summing to (1, −1), code 1 three summing to (28, 2), code 2 none
    n = np.array([4.0, 2.0, 3.0]) * decay + (1 - decay) * np.array([2.0, 3.0, 0.0])
    m = (np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 30.0]]) * decay
         + (1 - decay) * np.array([[1.0, -1.0], [28.0, 2.0], [0.0, 0.0]]))
    smoothed = (n + eps) / (n.sum() + 3 * eps) * n.sum()
    np.testing.assert_allclose(book.cluster_size.numpy(), n, rtol=1e-6)
    np.testing.assert_allclose(book.code_sum.numpy(), m, rtol=1e-6)
    np.testing.assert_allclose(book.codes.numpy(), m / smoothed[:, None], rtol=1e-5)


def test_dead_codes_are_reseeded_with_current_patches():
    # codes 1 and 2 are far from every patch, so both win nothing
    codes = torch.tensor([[0.0, 0.0], [100.0, 100.0], [-100.0, -100.0]])
    book = seeded_codebook(codes, torch.tensor([4.0, 1.5, 1.5]), decay=0.5, dead_threshold=1.0)
    patches = torch.tensor([[1.0, 2.0], [5.0, 6.0], [3.0, 4.0], [0.0, 1.0]])
    book.update(patches)
    # their counts fell to 0.5·1.5 = 0.75 < 1: each restarts as one of the patches, at count 1
    # with a consistent sum
    rows = {tuple(p.tolist()) for p in patches}
    assert tuple(book.codes[1].tolist()) in rows and tuple(book.codes[2].tolist()) in rows
    assert not torch.equal(book.codes[1], book.codes[2])  # distinct patches while there are enough
    assert book.cluster_size[1:].tolist() == [1.0, 1.0] and torch.equal(book.code_sum[1:], book.codes[1:])
    # code 0 (count 0.5·4 + 0.5·4 = 4) is alive: the EMA mean of its patches, (4·0 + 4·(9/4, 13/4)) / 8
    assert book.cluster_size[0] == pytest.approx(4.0)
    torch.testing.assert_close(book.codes[0], torch.tensor([9 / 8, 13 / 8]), rtol=1e-4, atol=0)


def test_an_empty_codebook_is_seeded_with_distinct_patches_whatever_the_global_random_state():
    patches = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    book = PatchCodebook(8, 3, dead_threshold=0.0)
    with pytest.raises(DataError, match="empty"):
        book.assign(patches)
    book.frozen = True  # seeding happens all the same, the EMA step does not
    torch.manual_seed(1)
    book.update(patches)
    rows = {tuple(p.tolist()) for p in patches}
    seeds = {tuple(c.tolist()) for c in book.codes}
    assert seeds <= rows and len(seeds) == 8
    assert torch.equal(book.cluster_size, torch.full((8,), 40 / 8))
    other = PatchCodebook(8, 3, dead_threshold=0.0)
    other.frozen = True
    torch.manual_seed(2)  # another process draws other random numbers, and seeds the same codes
    other.update(patches)
    assert torch.equal(other.codes, book.codes)


def test_a_frozen_codebook_assigns_but_never_changes():
    generator = torch.Generator().manual_seed(0)
    book = seeded_codebook(torch.randn(6, 4, generator=generator), torch.tensor([3.0, 0.1, 2, 2, 2, 2]))
    book.frozen = True
    before = {k: v.clone() for k, v in book.state_dict().items() if isinstance(v, torch.Tensor)}
    patches = torch.randn(50, 4, generator=generator)
    assert torch.equal(book.update(patches), book.assign(patches))
    for name, value in before.items():
        assert torch.equal(book.state_dict()[name], value), name


def test_codebook_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    book = PatchCodebook(5, 3)
    book.update(torch.randn(20, 3))
    book.frozen = True
    torch.save(book.state_dict(), tmp_path / "book.pt")
    copy = PatchCodebook(5, 3)
    copy.load_state_dict(torch.load(tmp_path / "book.pt", weights_only=True))
    assert copy.initialized and copy.frozen
    for name in ("codes", "cluster_size", "code_sum"):
        assert torch.equal(getattr(copy, name), getattr(book, name))


def test_code_perplexity_on_worked_examples():
    assert code_perplexity(torch.tensor([0, 1, 2, 3]), 8).item() == pytest.approx(4.0)
    assert code_perplexity(torch.tensor([5, 5, 5]), 8).item() == pytest.approx(1.0)
    # p = (1/2, 1/4, 1/4): entropy 1.5·ln 2, perplexity 2^1.5
    assert code_perplexity(torch.tensor([[0, 0], [1, 2]]), 3).item() == pytest.approx(2 ** 1.5)


# ---------------------------------------------------------------------------------- method


def test_method_loss_is_cross_entropy_against_nearest_codes_of_normalised_patches():
    method = tiny_beit()
    x = digits(4)
    method([x])  # a training step seeds and moves the codebook
    method.eval()  # now the codebook stays as it is
    torch.manual_seed(7)
    out = method([x])
    torch.manual_seed(7)  # the same masking again
    mask = method.mask_patches(4, (4, 4), x.device)
    assert mask.sum(dim=1).tolist() == [6] * 4
    tokens = method.encoder.forward_tokens(x, mask=mask, mask_token=method.mask_token)
    logits = method.head(tokens[:, 1:]).detach().double().numpy()
    codes = method.codebook.codes.double().numpy()
    total, hits, count = 0.0, 0, 0
    for b in range(4):
        for patch in range(16):
            if not mask[b, patch]:  # visible patches take no part in the loss or the accuracy
                continue
            r, c = divmod(patch, 4)
            pixels = x[b, 0, 2 * r:2 * r + 2, 2 * c:2 * c + 2].reshape(-1).double().numpy()
            normalised = (pixels - pixels.mean()) / math.sqrt(pixels.var(ddof=1) + 0.01)
            target = int(np.argmin(((codes - normalised) ** 2).sum(axis=1)))
            row = logits[b, patch]
            total += math.log(np.exp(row).sum()) - row[target]
            hits += int(np.argmax(row) == target)
            count += 1
    assert out.loss.item() == pytest.approx(total / count, rel=1e-5)
    assert float(out.logs["token_accuracy"]) == pytest.approx(hits / count)
    assert set(out.logs) == {"token_accuracy", "codebook_perplexity"}
    assert 1.0 <= float(out.logs["codebook_perplexity"]) <= 16.0


def test_training_steps_move_the_codebook_until_the_warmup_ends():
    method = tiny_beit(codebook_warmup_steps=2)
    x = digits(8)
    method([x])
    seeded = method.codebook.codes.clone()
    method.after_step(0, 10)
    assert not method.codebook.frozen
    method([digits(16)[8:]])
    assert not torch.equal(method.codebook.codes, seeded)  # step 2 still learns
    method.after_step(1, 10)  # two steps done: frozen from now on
    assert method.codebook.frozen
    learnt = method.codebook.codes.clone()
    method([x])
    assert torch.equal(method.codebook.codes, learnt)
    assert tiny_beit(codebook_warmup_steps=0).codebook.frozen  # seeded by the first batch only


def test_the_encoder_sees_every_position_with_the_mask_token_on_masked_ones():
    method = tiny_beit()
    seen = []
    method.encoder.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x = digits(3)
    torch.manual_seed(3)
    out = method([x])
    torch.manual_seed(3)
    mask = method.mask_patches(3, (4, 4), x.device)
    assert seen[0].shape == (3, 1 + 16, 32)
    pos = method.encoder.pos_embed[0, 1:]
    for b, index in mask.nonzero().tolist():
        torch.testing.assert_close(seen[0][b, 1 + index], method.mask_token + pos[index])
    out.loss.backward()
    assert method.mask_token.grad is not None and method.mask_token.grad.abs().sum() > 0


def two_processes() -> tuple[list[BEiT], list[torch.Tensor], list[torch.Tensor]]:
    """Two identical methods as on ranks 0 and 1, each with its own images, and a fake ``gather``
    that concatenates both processes' patches in rank order."""
    methods = [tiny_beit(), tiny_beit()]
    images = [digits(8)[:4], digits(8)[4:]]
    patches = [method.patches(x) for method, x in zip(methods, images)]
    for rank, method in enumerate(methods):
        gather = lambda local, rank=rank: torch.cat([local if r == rank else patches[r] for r in (0, 1)])  # noqa: E731
        method.collectives = Collectives(gather=gather, rank=rank, world_size=2)
    return methods, images, patches


def test_processes_that_gather_their_patches_keep_the_same_codebook():
    methods, images, patches = two_processes()
    for rank, method in enumerate(methods):
        torch.manual_seed(10 + rank)  # processes draw different random numbers
        method([images[rank]])
    reference = PatchCodebook(16, 4, dead_threshold=methods[0].options.dead_code_threshold)
    reference.update(torch.cat(patches))  # one codebook that saw both batches
    for name in ("codes", "cluster_size", "code_sum"):
        assert torch.equal(getattr(methods[0].codebook, name), getattr(reference, name)), name
        assert torch.equal(getattr(methods[1].codebook, name), getattr(reference, name)), name
    alone = tiny_beit()  # without the gather, a process's codebook drifts from the others'
    alone([images[1]])
    assert not torch.equal(alone.codebook.codes, reference.codes)


def test_each_process_gets_the_tokens_of_its_own_patches():
    methods, _, patches = two_processes()
    reference = PatchCodebook(16, 4, dead_threshold=methods[0].options.dead_code_threshold)
    ids = reference.update(torch.cat(patches))  # the ids before the update, both batches
    assert torch.equal(methods[0].targets(patches[0]), ids[:4])
    assert torch.equal(methods[1].targets(patches[1]), ids[4:])


def test_random_masking_option_masks_the_same_number():
    method = tiny_beit(masking="random")
    assert method.mask_patches(5, (4, 4), torch.device("cpu")).sum(dim=1).tolist() == [6] * 5


def test_a_cnn_encoder_and_bad_options_are_config_errors():
    encoder = build_backbone({"name": "small-cnn", "widths": [8, 16]}, 1, 8)
    with pytest.raises(ConfigError, match="backbone.name"):
        BEiT(encoder)
    with pytest.raises(ConfigError, match="method.masking"):
        tiny_beit(masking="grid")
    with pytest.raises(ConfigError, match="method.mask_ratio"):
        tiny_beit(mask_ratio=0.0)
    with pytest.raises(ConfigError, match="method.mask_ratio=0.01 masks no patch"):
        tiny_beit(mask_ratio=0.01)
    with pytest.raises(ConfigError, match="method.num_codes"):
        tiny_beit(num_codes=1)


def test_health_watches_unmasked_encoder_features_only():
    assert_health_watches_the_encoder_only(tiny_beit(), digits(4))


def test_checkpoints_hold_the_codebook_and_the_encoder_export_does_not_hold_the_mask_token():
    method = tiny_beit()
    state = method.state_dict()
    assert {"codebook.codes", "codebook.cluster_size", "codebook.code_sum", "codebook._extra_state",
            "mask_token"} <= set(state)
    assert not any("mask_token" in key or "codebook" in key for key in method.encoder.state_dict())


def test_config_defaults_pick_a_mean_pooled_vit_and_adamw():
    config = load_config(None, ["method.name=beit"])
    assert config.backbone == {"name": "vit-tiny", "pool": "mean"}
    assert config.optim.name == "adamw" and config.optim.weight_decay == 0.05
    assert load_config(None, ["method.name=beit", "backbone.name=vit-small"]).backbone["pool"] == "mean"


# ---------------------------------------------------------------------------------- learning


def test_loss_falls_over_a_few_steps_on_digits():
    method = tiny_beit(depth=2, num_codes=32, codebook_warmup_steps=0)
    optimizer = torch.optim.Adam(method.parameters(), lr=3e-3)
    pool = load_split("digits", "train").get(torch.arange(256))
    losses = digit_step_losses(method, pool, optimizer, steps=15)
    assert all(math.isfinite(v) for v in losses)
    assert_loss_falls(losses, margin=0.1)


@pytest.mark.parametrize("stop_after_epoch", [0, 1])
def test_a_whole_beit_run_logs_its_metrics_and_resumes_exactly(tiny_config, monkeypatch, stop_after_epoch):
    straight = Trainer(tiny_config(*TINY_RUN, "train.epochs=3", out="straight")).fit()
    records = read_metrics(straight / "metrics.jsonl")
    losses = [r["loss"] for r in records if r["kind"] in ("step", "epoch")]
    assert losses and all(isinstance(v, float) and math.isfinite(v) for v in losses)
    assert {r["embedding"] for r in records if r["kind"] == "health"} == {"encoder"}
    steps = [r for r in records if r["kind"] == "step"]
    assert all(0 <= r["token_accuracy"] <= 1 and 1 <= r["codebook_perplexity"] <= 16 for r in steps)

    # 3 steps an epoch, the codebook learns for 4: stopped while it learns (after 3 updates) or once
    # frozen (after 6 steps), a resumed run must restore the buffers, the flags and the update count
    # (it seeds the re-seeding draws), or it would re-seed, move or freeze the codebook differently
    config = tiny_config(*TINY_RUN, "train.epochs=3", out="resumed")
    resumed = interrupt_then_resume(config, stop_after_epoch, monkeypatch)
    ends = [load_checkpoint(run / "checkpoints/last.pt")["method"] for run in (straight, resumed)]
    assert ends[0]["codebook._extra_state"] == ends[1]["codebook._extra_state"] == {
        "initialized": True, "frozen": True, "updates": 4}
    for name, value in ends[0].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, ends[1][name]), name


@pytest.mark.slow
def test_predictions_use_the_context_not_only_the_token_frequencies():
    """After 200 steps on digits the masked-token loss is well below the entropy of the batch's
    token frequencies (ln of the codebook perplexity), the loss of the best guess without context."""
    method = tiny_beit(depth=2, codebook_warmup_steps=20)
    optimizer = torch.optim.Adam(method.parameters(), lr=3e-3)
    pool = load_split("digits", "train").get(torch.arange(1024))
    views, generator = make_views(method.view_recipe, (1, 8, 8), {}), torch.Generator().manual_seed(0)
    losses, entropies = [], []
    for step in range(200):
        out = method(views(pool[torch.randint(len(pool), (64,), generator=generator)], generator))
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        method.after_step(step, 200)
        losses.append(out.loss.item())
        entropies.append(math.log(float(out.logs["codebook_perplexity"])))
    assert np.mean(losses[-50:]) < np.mean(entropies[-50:]) - 0.1
