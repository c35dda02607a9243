"""MAE: random masking, patch layout, the masked-patch loss against its formula, the encoder seeing
only the visible tokens, learning on digits, and a whole run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from method_helpers import assert_health_watches_the_encoder_only, digit_step_losses

from selfsup.backbones import build_backbone
from selfsup.data import load_split
from selfsup.errors import ConfigError, DataError
from selfsup.masking import normalize_patches, patchify, random_masking, unpatchify
from selfsup.methods.mae import MAE, MAEOptions, mae_loss, sincos_position_embedding
from selfsup.train import Trainer
from selfsup.train.metrics_log import read_metrics

TINY_VIT = {"name": "vit-tiny", "depth": 1, "embed_dim": 32, "num_heads": 2, "patch_size": 2}


def tiny_mae(depth: int = 1, **options) -> MAE:
    """MAE on 8×8 gray images with 2×2 patches: a 4×4 grid of 16 patches, 4 visible."""
    torch.manual_seed(0)
    encoder = build_backbone({**TINY_VIT, "depth": depth}, 1, 8)
    return MAE(encoder, MAEOptions(decoder_dim=16, decoder_depth=1, decoder_heads=2, **options))


def digits(count: int = 8) -> torch.Tensor:
    """Normalised float digits (B, 1, 8, 8), as a view recipe would hand them over."""
    images = load_split("digits", "train").get(torch.arange(count))
    return (images.float() / 255 - 0.5) / 0.25


# ---------------------------------------------------------------------------------- masking


def test_masking_keeps_the_requested_number_of_patches_and_masks_the_rest():
    keep, restore, mask = random_masking(6, 16, 0.75, torch.Generator().manual_seed(0))
    assert keep.shape == (6, 4) and restore.shape == (6, 16) and mask.dtype == torch.bool
    assert mask.sum(dim=1).tolist() == [12] * 6
    for row_keep, row_mask in zip(keep, mask):
        assert len(set(row_keep.tolist())) == 4
        assert set(row_keep.tolist()) == set(torch.nonzero(~row_mask).flatten().tolist())
    # round(N·(1 − ratio)), and never fewer than one visible patch
    assert random_masking(2, 10, 0.66).keep.shape[1] == round(10 * 0.34)
    assert random_masking(2, 4, 0.99).keep.shape[1] == 1


def test_different_samples_get_different_masks_and_a_seed_repeats_them():
    first = random_masking(8, 16, 0.75, torch.Generator().manual_seed(3))
    again = random_masking(8, 16, 0.75, torch.Generator().manual_seed(3))
    assert torch.equal(first.keep, again.keep) and torch.equal(first.mask, again.mask)
    assert len({tuple(row.tolist()) for row in first.mask}) > 1


def test_restore_inverts_the_shuffle_and_puts_kept_tokens_back_in_place():
    batch, n, dim = 4, 9, 3
    keep, restore, mask = random_masking(batch, n, 2 / 3, torch.Generator().manual_seed(1))
    tokens = torch.randn(batch, n, dim)
    shuffle = restore.argsort(dim=1)
    assert torch.equal(shuffle[:, :3], keep)

    def index(ids: torch.Tensor) -> torch.Tensor:  # token indices → gather index over D
        return ids.unsqueeze(-1).expand(-1, -1, dim)

    shuffled = tokens.gather(1, index(shuffle))
    torch.testing.assert_close(shuffled.gather(1, index(restore)), tokens, rtol=0, atol=0)
    # What the decoder relies on: [kept tokens, fillers] unshuffled → kept tokens at their own
    # grid positions, fillers exactly on the masked ones.
    visible = tokens.gather(1, index(keep))
    filled = torch.cat([visible, torch.full((batch, n - 3, dim), 7.0)], dim=1).gather(1, index(restore))
    expected = torch.where(mask.unsqueeze(-1), torch.tensor(7.0), tokens)
    torch.testing.assert_close(filled, expected, rtol=0, atol=0)


def test_mask_ratio_outside_zero_to_one_is_a_config_error():
    with pytest.raises(ConfigError, match="mask_ratio"):
        random_masking(2, 16, 1.0)
    with pytest.raises(ConfigError, match="mask_ratio"):
        MAE(build_backbone(TINY_VIT, 1, 8), MAEOptions(mask_ratio=-0.1))


# ---------------------------------------------------------------------------------- patches


def test_patchify_layout_matches_an_explicit_loop_and_unpatchify_inverts_it():
    p, channels, height, width = 2, 3, 4, 6
    images = torch.randn(2, channels, height, width)
    patches = patchify(images, p)
    h, w = height // p, width // p
    assert patches.shape == (2, h * w, p * p * channels)
    for b in range(2):
        for r in range(h):
            for c in range(w):
                for i in range(p):
                    for j in range(p):
                        for ch in range(channels):
                            value = patches[b, r * w + c, (i * p + j) * channels + ch]
                            assert value == images[b, ch, r * p + i, c * p + j]
    torch.testing.assert_close(unpatchify(patches, p, (h, w)), images, rtol=0, atol=0)
    square = torch.randn(1, 1, 6, 6)
    torch.testing.assert_close(unpatchify(patchify(square, 3), 3), square, rtol=0, atol=0)


def test_patchify_names_a_size_that_is_not_a_multiple_of_the_patch():
    with pytest.raises(DataError, match="multiple of patch_size=3"):
        patchify(torch.zeros(1, 1, 8, 8), 3)
    with pytest.raises(DataError, match="grid"):
        unpatchify(torch.zeros(1, 6, 4), 2)


def test_normalize_patches_is_the_per_patch_standardisation():
    patches = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0]]])
    values = patches.numpy()[0]
    expected = (values - values.mean(axis=1, keepdims=True)) / np.sqrt(
        values.var(axis=1, ddof=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(normalize_patches(patches)[0].numpy(), expected, rtol=1e-5)
    # a flat patch maps to zeros rather than dividing by zero
    assert torch.equal(normalize_patches(patches)[0, 1], torch.zeros(4))


# ---------------------------------------------------------------------------------- loss


def test_mae_loss_on_a_tiny_fixed_example():
    # 1 sample, 3 patches of 2 values; patches 0 and 2 masked.
    pred = torch.tensor([[[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]]])
    target = torch.tensor([[[0.0, 0.0], [9.0, 9.0], [1.0, 1.0]]])
    mask = torch.tensor([[True, False, True]])
    # patch 0: (1 + 4) / 2 = 2.5; patch 2: (4 + 4) / 2 = 4; mean over the 2 masked patches
    assert mae_loss(pred, target, mask).item() == pytest.approx((2.5 + 4.0) / 2)


def test_mae_loss_with_nothing_masked_covers_every_patch():
    # mask_ratio 0 (the masking-speed benchmark's baseline): a finite loss over all patches, not 0/0
    pred = torch.tensor([[[1.0, 2.0], [0.0, 0.0]]])
    target = torch.tensor([[[0.0, 0.0], [2.0, 2.0]]])
    nothing = torch.zeros(1, 2, dtype=torch.bool)
    assert mae_loss(pred, target, nothing).item() == pytest.approx((2.5 + 4.0) / 2)


def test_mae_loss_ignores_visible_patches_only():
    generator = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 8, 5, generator=generator), torch.randn(3, 8, 5, generator=generator)
    mask = random_masking(3, 8, 0.5, generator).mask
    base = mae_loss(pred, target, mask)
    visible = ~mask.unsqueeze(-1)
    assert mae_loss(torch.where(visible, pred + 5.0, pred), target, mask) == base
    assert mae_loss(pred, torch.where(visible, -target, target), mask) == base
    masked_one = torch.zeros_like(mask)
    masked_one[0, int(mask[0].nonzero()[0])] = True
    assert mae_loss(torch.where(masked_one.unsqueeze(-1), pred + 1.0, pred), target, mask) != base


def test_method_loss_is_the_masked_mse_against_per_patch_normalised_pixels():
    method = tiny_mae()
    x = digits(4)
    torch.manual_seed(7)
    out = method([x])
    torch.manual_seed(7)  # the same masking again
    keep, restore, mask = random_masking(4, 16, 0.75)
    pred = method.decode(method.encoder.forward_tokens(x, keep), restore, (4, 4)).detach().numpy()
    # Independent target: loop over the 2×2 patches of the 8×8 images.
    total, count = 0.0, 0
    for b in range(4):
        for patch in range(16):
            if not mask[b, patch]:
                continue
            r, c = divmod(patch, 4)
            pixels = x[b, 0, 2 * r:2 * r + 2, 2 * c:2 * c + 2].reshape(-1).numpy().astype(np.float64)
            target = (pixels - pixels.mean()) / math.sqrt(pixels.var(ddof=1) + 1e-6)
            total += np.mean((pred[b, patch] - target) ** 2)
            count += 1
    assert count == 4 * 12
    assert out.loss.item() == pytest.approx(total / count, rel=1e-5)
    assert out.logs["mask_ratio"] == pytest.approx(0.75)


def test_without_norm_pix_the_target_is_the_raw_pixels():
    method = tiny_mae(norm_pix_loss=False)
    patches = torch.randn(2, 16, 4)
    assert torch.equal(method.target(patches), patches)
    assert torch.equal(tiny_mae().target(patches), normalize_patches(patches))


def test_decoder_positions_are_2d_sine_cosine():
    # dim 8: a quarter of 2 frequencies, ω = 1 and 1/100; row channels first, then column channels
    table = sincos_position_embedding(8, (2, 3))
    for r in range(2):
        for c in range(3):
            expected = [math.sin(r), math.sin(r / 100), math.cos(r), math.cos(r / 100),
                        math.sin(c), math.sin(c / 100), math.cos(c), math.cos(c / 100)]
            torch.testing.assert_close(table[r * 3 + c], torch.tensor(expected))


# ---------------------------------------------------------------------------------- encoder


def test_encoder_blocks_see_only_the_visible_tokens_and_the_class_token():
    method = tiny_mae()
    seen = []
    method.encoder.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    method([digits(3)])
    assert seen == [torch.Size([3, 4 + 1, 32])]


def test_a_cnn_encoder_is_a_config_error_naming_the_backbone_option():
    encoder = build_backbone({"name": "small-cnn", "widths": [8, 16]}, 1, 8)
    with pytest.raises(ConfigError, match="backbone.name"):
        MAE(encoder)


def test_health_watches_unmasked_encoder_features_only():
    assert_health_watches_the_encoder_only(tiny_mae(), digits(4))


def test_reconstruction_keeps_visible_pixels_and_marks_the_masked_ones():
    method = tiny_mae()
    x = digits(3)
    pred, mask = method.reconstruct(x, torch.Generator().manual_seed(0))
    assert pred.shape == x.shape and mask.shape == (3, 1, 8, 8)
    assert mask.mean().item() == pytest.approx(0.75)
    visible = mask == 0
    torch.testing.assert_close(pred[visible.expand_as(pred)], x[visible.expand_as(x)])
    assert not torch.allclose(pred[~visible], x[~visible])


# ---------------------------------------------------------------------------------- learning


def test_loss_falls_over_a_few_steps_on_digits():
    method = tiny_mae(depth=2)
    optimizer = torch.optim.Adam(method.parameters(), lr=3e-3)
    pool = load_split("digits", "train").get(torch.arange(256))
    losses = digit_step_losses(method, pool, optimizer, steps=15)
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3])


def test_a_whole_mae_run_logs_finite_losses_and_health(tiny_config):
    config = tiny_config("method.name=mae", "backbone.name=vit-tiny", "backbone.depth=1",
                         "backbone.embed_dim=32", "backbone.num_heads=2", "backbone.patch_size=2")
    run = Trainer(config).fit()
    records = read_metrics(run / "metrics.jsonl")
    losses = [r["loss"] for r in records if r["kind"] in ("step", "epoch")]
    assert losses and all(isinstance(v, float) and math.isfinite(v) for v in losses)
    assert {r["embedding"] for r in records if r["kind"] == "health"} == {"encoder"}
