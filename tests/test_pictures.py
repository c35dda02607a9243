"""Pictures of a run: reloading the whole method, the tensors each picture draws (against the
methods' own definitions and formulas), and which PNGs a run gets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.backbones import build_backbone
from selfsup.data import load_split
from selfsup.errors import DataError
from selfsup.masking import random_masking
from selfsup.methods import BuildContext, build_method
from selfsup.methods.autoencoder import add_noise
from selfsup.methods.mae import MAE, MAEOptions
from selfsup.report import pictures
from selfsup.report.pictures import (
    attention_maps,
    autoencoder_panels,
    load_trained_method,
    mae_panels,
    upsample_maps,
    vae_interpolation_images,
    vae_sample_images,
    write_pictures,
)
from selfsup.report.plots import DPI
from selfsup.train import Trainer
from selfsup.train.checkpoint import load_checkpoint
from selfsup.views.image import MEAN, STD

TINY_VIT = ["backbone.name=vit-tiny", "backbone.depth=1", "backbone.embed_dim=32",
            "backbone.num_heads=2", "backbone.patch_size=2"]
CELL_PX = round(pictures.CELL_INCHES * DPI)


def digits(count: int = 4, start: int = 0) -> torch.Tensor:
    """Normalised digits (B, 1, 8, 8), as the encoders see them."""
    images = load_split("digits", "test").get(torch.arange(start, start + count))
    return (images.float() / 255 - MEAN) / STD


def display(x: torch.Tensor) -> torch.Tensor:
    """The pictures' pixel scale, written out independently of the module."""
    return (x * STD + MEAN).clamp(0, 1)


def tiny_vit(pool: str = "cls", depth: int = 1, sharpen: float = 1.0):
    """A ViT on 8×8 digits with 2×2 patches (a 4×4 grid). ``sharpen`` scales the attention
    projections so the untrained attention is far from uniform."""
    torch.manual_seed(0)
    encoder = build_backbone({"name": "vit-tiny", "depth": depth, "embed_dim": 32, "num_heads": 2,
                              "patch_size": 2, "pool": pool}, 1, 8)
    with torch.no_grad():
        for block in encoder.blocks:
            block.attn.qkv.weight.mul_(sharpen)
    return encoder.eval()


def tiny_autoencoder(name: str, **options):
    torch.manual_seed(0)
    encoder = build_backbone({"name": "small-cnn", "widths": [8, 16]}, 1, 8)
    return build_method({"name": name, "decoder_width": 16, **options}, encoder,
                        BuildContext(in_shape=(1, 8, 8)))


# ---------------------------------------------------------------------------------- loading


def test_load_trained_method_holds_exactly_the_checkpointed_state(tiny_config):
    run = Trainer(tiny_config("method.name=vae", "method.decoder_width=16", "train.epochs=1")).fit()
    checkpoint = load_checkpoint(run / "checkpoints/last.pt")["method"]
    for finished in (True, False):  # with encoder.json, then shaped from the data as mid-run
        if not finished:
            (run / "encoder.json").unlink()
        method, config, in_shape = load_trained_method(run)
        assert in_shape == (1, 8, 8) and config.method["name"] == "vae" and not method.training
        state = method.state_dict()
        assert state.keys() == checkpoint.keys()
        for key, value in checkpoint.items():
            assert torch.equal(state[key], value), key


def test_a_run_without_a_checkpoint_is_a_data_error_naming_it(tiny_config, tmp_path):
    config = tiny_config("method.name=vae")
    (tmp_path / "run").mkdir()
    config.save(tmp_path / "run" / "config.yaml")
    with pytest.raises(DataError, match="no checkpoint"):
        load_trained_method(tmp_path / "run")


# ---------------------------------------------------------------------------------- MAE


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_mae_panels_paste_visible_patches_and_unnormalise_predictions_per_patch(norm_pix_loss):
    torch.manual_seed(0)
    encoder = build_backbone({"name": "vit-tiny", "depth": 1, "embed_dim": 32, "num_heads": 2,
                              "patch_size": 2}, 1, 8)
    method = MAE(encoder, MAEOptions(decoder_dim=16, decoder_depth=1, decoder_heads=2,
                                     norm_pix_loss=norm_pix_loss))
    x = digits(3)
    panels = mae_panels(method, x, torch.Generator().manual_seed(5))
    # The same masking again, and the decoder's raw predictions for it.
    keep, restore, mask = random_masking(3, 16, 0.75, torch.Generator().manual_seed(5))
    with torch.no_grad():
        pred = method.decode(encoder.forward_tokens(x, keep), restore, (4, 4)).numpy().astype(np.float64)
    original = display(x)
    assert torch.equal(panels.original, original)
    for b in range(3):
        for patch in range(16):
            r, c = divmod(patch, 4)
            rows, cols = slice(2 * r, 2 * r + 2), slice(2 * c, 2 * c + 2)
            hidden = bool(mask[b, patch])
            assert torch.all(panels.mask[b, 0, rows, cols] == float(hidden))
            if not hidden:  # exactly the input, in the masked input and in the reconstruction
                assert torch.equal(panels.reconstruction[b, :, rows, cols], original[b, :, rows, cols])
                assert torch.equal(panels.masked[b, :, rows, cols], original[b, :, rows, cols])
                continue
            assert torch.all(panels.masked[b, :, rows, cols] == 0.5)
            pixels = x[b, 0, rows, cols].reshape(-1).numpy().astype(np.float64)
            guess = pred[b, patch]
            if norm_pix_loss:  # back to pixels with the true patch's mean and √(unbiased var + 1e-6)
                guess = guess * math.sqrt(pixels.var(ddof=1) + 1e-6) + pixels.mean()
            expected = np.clip(guess * STD + MEAN, 0, 1).reshape(2, 2)
            np.testing.assert_allclose(panels.reconstruction[b, 0, rows, cols].numpy(), expected,
                                       rtol=1e-5, atol=1e-6)
    assert panels.mask.mean().item() == pytest.approx(0.75)


def test_pictures_take_uint8_images_like_normalised_ones():
    torch.manual_seed(0)
    method = MAE(build_backbone({"name": "vit-tiny", "depth": 1, "embed_dim": 32, "num_heads": 2,
                                 "patch_size": 2}, 1, 8),
                 MAEOptions(decoder_dim=16, decoder_depth=1, decoder_heads=2))
    raw = load_split("digits", "test").get(torch.arange(2))
    from_uint8 = mae_panels(method, raw, torch.Generator().manual_seed(1))
    from_float = mae_panels(method, digits(2), torch.Generator().manual_seed(1))
    for a, b in zip(from_uint8, from_float):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------- autoencoders


def test_vae_interpolation_is_linear_between_the_decoded_posterior_means():
    method = tiny_autoencoder("vae", latent_dim=6).eval()
    a, b = digits(2), digits(2, start=2)
    path = vae_interpolation_images(method, a, b, steps=5)
    assert path.shape == (2, 5, 1, 8, 8)
    with torch.no_grad():
        mu_a = method.posterior(method.encoder(a)).chunk(2, dim=1)[0]
        mu_b = method.posterior(method.encoder(b)).chunk(2, dim=1)[0]
        for step, t in [(0, 0.0), (2, 0.5), (4, 1.0)]:
            expected = display(method.decoder((1 - t) * mu_a + t * mu_b))
            torch.testing.assert_close(path[:, step], expected, rtol=1e-5, atol=1e-6)


def test_vae_samples_decode_standard_normal_draws_of_the_generator():
    method = tiny_autoencoder("vae", latent_dim=6).eval()
    samples = vae_sample_images(method, 5, torch.Generator().manual_seed(3))
    z = torch.randn(5, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(samples, display(method.decoder(z)))
    assert not torch.equal(samples, vae_sample_images(method, 5, torch.Generator().manual_seed(4)))


def test_pictures_use_running_statistics_and_leave_the_mode_and_statistics_alone():
    method = tiny_autoencoder("ae", code_dim=7).train()
    statistics = {k: v.clone() for k, v in method.state_dict().items() if "running" in k}
    x = digits(4)
    panels = autoencoder_panels(method, x)
    assert list(panels) == ["original", "reconstruction"] and method.training
    assert all(torch.equal(method.state_dict()[k], v) for k, v in statistics.items())
    method.eval()
    with torch.no_grad():
        expected = display(method.decoder(method.bottleneck(method.encoder(x))))
    torch.testing.assert_close(panels["reconstruction"], expected)
    assert torch.equal(panels["original"], display(x))


def test_denoising_panels_show_the_corrupted_input_and_its_reconstruction():
    method = tiny_autoencoder("dae", noise="masking", noise_level=0.3).eval()
    x = digits(4)
    panels = autoencoder_panels(method, x, torch.Generator().manual_seed(2))
    assert list(panels) == ["original", "corrupted input", "reconstruction"]
    noisy = add_noise(x, "masking", 0.3, torch.Generator().manual_seed(2))
    assert torch.equal(panels["corrupted input"], display(noisy))
    with torch.no_grad():
        torch.testing.assert_close(panels["reconstruction"], display(method.reconstruct(noisy)))


# ---------------------------------------------------------------------------------- attention


def test_class_token_maps_are_distributions_over_patches_from_the_last_block():
    encoder = tiny_vit(depth=2, sharpen=30.0)
    x = digits(3)
    result = attention_maps(encoder, x)
    assert result.query == "class token" and result.maps.shape == (3, 2, 4, 4)
    maps = result.maps.flatten(2)
    assert (maps >= 0).all()
    torch.testing.assert_close(maps.sum(-1), torch.ones(3, 2))
    assert maps.max() > 2 / 16  # far from uniform, so the check below means something
    with torch.no_grad():  # the ViT's own class-token attention, with the class-token key dropped
        rows = encoder.attention_maps(x, layer=-1, include_cls=True)[..., 1:]
    torch.testing.assert_close(maps, rows / rows.sum(-1, keepdim=True))


def test_mean_pooled_vit_maps_average_every_patch_query():
    encoder = tiny_vit(pool="mean", sharpen=30.0)
    x = digits(2)
    result = attention_maps(encoder, x)
    assert result.query == "mean patch query"
    # The attention matrix written out for the single block: softmax(q kᵀ / √d) per head.
    with torch.no_grad():
        block = encoder.blocks[0]
        tokens = block.norm1(encoder.embed(x))
        q, k, _ = (tokens @ block.attn.qkv.weight.T + block.attn.qkv.bias).chunk(3, dim=-1)
    heads, d = 2, 16
    expected = torch.zeros(2, heads, 16)
    for b in range(2):
        for h in range(heads):
            qh, kh = q[b, :, h * d:(h + 1) * d], k[b, :, h * d:(h + 1) * d]
            weights = torch.softmax(qh @ kh.T / math.sqrt(d), dim=-1)  # (17, 17), class token first
            row = weights[1:].mean(dim=0)[1:]  # mean over patch queries, patch keys only
            expected[b, h] = row / row.sum()
    torch.testing.assert_close(result.maps.flatten(2), expected, rtol=1e-4, atol=1e-6)
    assert (result.maps >= 0).all()


def test_upsampling_spreads_each_patch_value_over_its_pixels():
    maps = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    expected = torch.tensor([[1.0, 1, 1, 2, 2, 2]] * 3 + [[3.0, 3, 3, 4, 4, 4]] * 3)
    assert torch.equal(upsample_maps(maps, 3), expected)


# ---------------------------------------------------------------------------------- runs


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


def test_an_mae_run_gets_reconstructions_and_attention_maps(tiny_config):
    run = Trainer(tiny_config("method.name=mae", *TINY_VIT, "train.epochs=1")).fit()
    written = write_pictures(run, num_images=3)
    assert written == [run / "mae_reconstructions.png", run / "attention_maps.png"]
    width, height = png_size(written[0])
    assert width == 3 * CELL_PX and height > 3 * CELL_PX  # 3 columns, 3 rows plus titles
    width, height = png_size(written[1])
    assert width == 4 * CELL_PX and height > 3 * CELL_PX  # image, mean, 2 heads


def test_a_vae_run_gets_reconstructions_samples_and_interpolations(tiny_config):
    run = Trainer(tiny_config("method.name=vae", "method.decoder_width=16", "train.epochs=1")).fit()
    written = write_pictures(run, num_images=2)
    assert [p.name for p in written] == ["reconstructions.png", "vae_samples.png", "vae_interpolations.png"]
    sizes = [png_size(p) for p in written]
    assert sizes[0][0] == 2 * CELL_PX  # original, reconstruction
    assert sizes[1][0] == pictures.SAMPLE_COLUMNS * CELL_PX  # 8 samples: one full row
    assert sizes[1][1] < 2 * CELL_PX
    steps = pictures.INTERPOLATION_STEPS
    assert sizes[2][0] == (steps + 2) * CELL_PX and 2 * CELL_PX < sizes[2][1] < 3 * CELL_PX


def test_a_simclr_cnn_run_has_no_pictures_and_needs_no_checkpoint(tiny_config):
    run = Trainer(tiny_config("train.epochs=1")).fit()
    (run / "checkpoints/last.pt").unlink()
    assert write_pictures(run) == []
    assert not list(run.glob("*.png"))


# ---------------------------------------------------------------------------------- trained runs

TRAINED = ["train.epochs=40", "train.steps_per_epoch=0", "optim.name=adamw", "optim.lr=2e-3",
           "optim.weight_decay=0.05", "optim.warmup_epochs=2"]


@pytest.mark.slow
def test_a_trained_mae_fills_hidden_patches_better_than_their_own_means(tiny_config):
    # ~45 s on 2 CPU cores. Measured once: hidden-pixel MSE 0.040 against 0.049 for the baseline.
    run = Trainer(tiny_config("method.name=mae", "method.decoder_dim=64", "method.decoder_heads=4",
                              "backbone.name=vit-tiny", "backbone.depth=2", "backbone.embed_dim=64",
                              "backbone.num_heads=4", "backbone.patch_size=2", *TRAINED)).fit()
    method, _, _ = load_trained_method(run)
    panels = mae_panels(method, load_split("digits", "test").get(torch.arange(200)),
                        torch.Generator().manual_seed(0))
    hidden = panels.mask.bool().expand_as(panels.original)
    # The baseline knows what the picture's un-normalisation knows: each hidden patch's own mean.
    patch_means = torch.nn.functional.avg_pool2d(panels.original, 2)
    baseline = patch_means.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    error = (panels.reconstruction - panels.original)[hidden].pow(2).mean().item()
    baseline_error = (baseline - panels.original)[hidden].pow(2).mean().item()
    assert error < 0.9 * baseline_error


@pytest.mark.slow
def test_a_trained_vae_reconstructs_better_than_the_mean_image(tiny_config):
    # ~25 s on 2 CPU cores. Measured once: MSE 0.039 against 0.074 for the mean image.
    run = Trainer(tiny_config("method.name=vae", "method.decoder_width=32", "method.latent_dim=8",
                              "backbone.name=small-cnn", "backbone.widths=[16, 32]", *TRAINED)).fit()
    method, _, _ = load_trained_method(run)
    panels = autoencoder_panels(method, load_split("digits", "test").get(torch.arange(200)))
    original = panels["original"]
    error = (panels["reconstruction"] - original).pow(2).mean().item()
    assert error < 0.7 * (original.mean(dim=0) - original).pow(2).mean().item()
    assert len(write_pictures(run)) == 3
