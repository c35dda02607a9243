"""The autoencoder family (ae, dae, vae, sparse-ae): the VAE's KL and reparameterisation, the DAE's
noise models and clean target, the sparse penalties, the decoder's shapes, learning on digits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from selfsup.backbones import build_backbone
from selfsup.data import load_split
from selfsup.decoders import ConvDecoder
from selfsup.errors import ConfigError
from selfsup.methods import build_method
from selfsup.losses import gaussian_kl, kl_sparsity, l1_sparsity, reconstruction_error
from selfsup.methods.autoencoder import add_noise, reparameterize
from selfsup.train import Trainer
from selfsup.train.metrics_log import read_metrics
from selfsup.views.image import MEAN, STD
from method_helpers import digit_step_losses

FAMILY = ("ae", "dae", "vae", "sparse-ae")
BLACK, WHITE = (0 - MEAN) / STD, (1 - MEAN) / STD


def tiny(name: str, **options):
    torch.manual_seed(0)
    encoder = build_backbone({"name": "small-cnn", "widths": [8, 16]}, 1, 8)
    return build_method({"name": name, "decoder_size": 8, "decoder_width": 16, **options}, encoder)


def digit_batch(count: int = 16) -> torch.Tensor:
    images = load_split("digits", "train").get(torch.arange(count))
    return (images.float() / 255 - MEAN) / STD


# ---------------------------------------------------------------------------------------------
# VAE


def numpy_kl(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    out = np.zeros(len(mu))
    for i in range(len(mu)):
        for j in range(mu.shape[1]):
            var = math.exp(logvar[i, j])
            # KL(N(m, v) ‖ N(0, 1)) = ½ (v + m² − 1 − log v), one dimension at a time
            out[i] += 0.5 * (var + mu[i, j] ** 2 - 1 - logvar[i, j])
    return out


def test_gaussian_kl_matches_its_closed_form_computed_in_numpy():
    rng = np.random.default_rng(0)
    mu, logvar = rng.normal(size=(5, 4)), rng.normal(scale=0.7, size=(5, 4))
    got = gaussian_kl(torch.tensor(mu), torch.tensor(logvar)).numpy()
    np.testing.assert_allclose(got, numpy_kl(mu, logvar), rtol=1e-6)
    assert (got > 0).all()


def test_gaussian_kl_matches_a_monte_carlo_estimate():
    mu, logvar = np.array([0.8, -1.5, 0.1]), np.log(np.array([0.3, 2.0, 1.0]))
    rng = np.random.default_rng(1)
    std = np.exp(0.5 * logvar)
    z = mu + std * rng.normal(size=(400_000, 3))
    # E_q[log q(z) − log p(z)]; the 2π terms cancel
    log_q = (-0.5 * ((z - mu) / std) ** 2 - np.log(std)).sum(1)
    log_p = (-0.5 * z**2).sum(1)
    estimate = (log_q - log_p).mean()
    exact = gaussian_kl(torch.tensor(mu[None]), torch.tensor(logvar[None])).item()
    assert estimate == pytest.approx(exact, rel=0.02)


def test_gaussian_kl_is_exactly_zero_at_the_prior():
    assert torch.equal(gaussian_kl(torch.zeros(3, 6), torch.zeros(3, 6)), torch.zeros(3))


def test_reparameterisation_has_the_posterior_mean_and_std_and_passes_gradients():
    mu = torch.tensor([[1.0, -2.0]], requires_grad=True)
    logvar = torch.log(torch.tensor([[0.25, 4.0]])).requires_grad_()
    z = reparameterize(mu.expand(200_000, 2), logvar.expand(200_000, 2), torch.Generator().manual_seed(0))
    torch.testing.assert_close(z.mean(0), torch.tensor([1.0, -2.0]), atol=0.02, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([0.5, 2.0]), atol=0, rtol=0.01)
    z.sum().backward()
    assert torch.equal(mu.grad, torch.full((1, 2), 200_000.0))  # ∂z/∂μ = 1 for every draw


def test_vae_loss_is_reconstruction_plus_beta_times_the_kl_of_its_posterior():
    method = tiny("vae", latent_dim=5, beta=3.0)
    x = digit_batch()
    out = method([x])
    mu, logvar = method.posterior(method.encoder(x)).chunk(2, dim=1)
    kl = numpy_kl(mu.detach().double().numpy(), logvar.detach().double().numpy()).mean()
    assert out.logs["kl"].item() == pytest.approx(kl, rel=1e-5)
    pixels = 64  # the loss is the per-image objective over C·H·W = 1·8·8 pixel values
    assert out.loss.item() == pytest.approx((out.logs["reconstruction"].item() + 3.0 * kl) / pixels, rel=1e-5)
    torch.testing.assert_close(out.embeddings, mu)  # the evaluated code is μ, not a sample


def test_vae_samples_and_interpolations_have_image_shapes_and_the_right_endpoints():
    method = tiny("vae", latent_dim=5).eval()
    assert method.sample(3).shape == (3, 1, 8, 8)
    x = digit_batch(4)
    path = method.interpolate(x[:2], x[2:], steps=5)
    assert path.shape == (2, 5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(path[:, 0], method.reconstruct(x[:2]))
        torch.testing.assert_close(path[:, -1], method.reconstruct(x[2:]))


# ---------------------------------------------------------------------------------------------
# DAE


def test_masking_noise_blackens_the_given_share_of_whole_pixels_and_keeps_the_rest():
    x = torch.zeros(64, 3, 16, 16)  # mid-gray: no pixel is black before the noise
    noisy = add_noise(x, "masking", 0.3, torch.Generator().manual_seed(0))
    hit = noisy == BLACK
    assert torch.equal(hit.all(1), hit.any(1))  # a pixel's channels are masked together
    n = hit[:, 0].numel()
    assert abs(hit[:, 0].float().mean().item() - 0.3) < 5 * math.sqrt(0.3 * 0.7 / n)
    assert torch.equal(noisy[~hit], x[~hit])


def test_gaussian_noise_has_the_given_std_in_pixel_units():
    x = torch.randn(32, 1, 32, 32)
    noise = add_noise(x, "gaussian", 0.1, torch.Generator().manual_seed(0)) - x
    assert noise.std().item() == pytest.approx(0.1 / STD, rel=0.02)
    assert abs(noise.mean().item()) < 0.01


def test_salt_and_pepper_noise_sets_the_given_share_to_black_or_white_equally():
    x = torch.zeros(64, 1, 16, 16)
    noisy = add_noise(x, "salt_pepper", 0.2, torch.Generator().manual_seed(0))
    black, white = (noisy == BLACK).float().mean().item(), (noisy == WHITE).float().mean().item()
    assert black + white == pytest.approx(0.2, abs=0.01)
    assert black == pytest.approx(white, abs=0.01)
    assert torch.equal(noisy[(noisy != BLACK) & (noisy != WHITE)], x[(noisy != BLACK) & (noisy != WHITE)])


@pytest.mark.parametrize("noise", ["gaussian", "masking", "salt_pepper"])
def test_dae_reconstructs_the_noisy_input_but_is_scored_against_the_clean_one(noise):
    method = tiny("dae", noise=noise, noise_level=0.3)
    clean = digit_batch()
    torch.manual_seed(5)
    loss = method([clean]).loss
    torch.manual_seed(5)  # the same noise draw again
    noisy = add_noise(clean, noise, 0.3)
    reconstruction = method.decoder(method.encode(noisy).code, (8, 8))
    assert not torch.equal(noisy, clean)
    assert loss.item() * 64 == pytest.approx(reconstruction_error(reconstruction, clean).item(), rel=1e-6)
    assert loss.item() * 64 != pytest.approx(reconstruction_error(reconstruction, noisy).item(), rel=1e-3)


def test_bad_noise_options_raise_config_errors_naming_the_value():
    with pytest.raises(ConfigError, match="speckle"):
        tiny("dae", noise="speckle")
    with pytest.raises(ConfigError, match="1.5"):
        tiny("dae", noise="masking", noise_level=1.5)


# ---------------------------------------------------------------------------------------------
# sparse AE and the shared reconstruction error


def test_reconstruction_error_sums_over_pixels_and_averages_over_the_batch():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 2, 4, 5)), rng.normal(size=(3, 2, 4, 5))
    per_image = [sum((a[i] - b[i]).ravel() ** 2) for i in range(3)]
    got = reconstruction_error(torch.tensor(a), torch.tensor(b)).item()
    assert got == pytest.approx(sum(per_image) / 3, rel=1e-6)


def test_sparse_penalties_match_their_formulas():
    rng = np.random.default_rng(0)
    code = rng.uniform(0.01, 0.99, size=(6, 4))
    l1 = sum(abs(code[i, j]) for i in range(6) for j in range(4)) / 6
    assert l1_sparsity(torch.tensor(code - 0.5)).item() == pytest.approx(
        sum(abs(code[i, j] - 0.5) for i in range(6) for j in range(4)) / 6, rel=1e-6)
    assert l1_sparsity(torch.tensor(code)).item() == pytest.approx(l1, rel=1e-6)
    rho, kl = 0.05, 0.0
    for j in range(4):
        rate = code[:, j].mean()
        kl += rho * math.log(rho / rate) + (1 - rho) * math.log((1 - rho) / (1 - rate))
    assert kl_sparsity(torch.tensor(code), rho).item() == pytest.approx(kl, rel=1e-6)
    assert kl_sparsity(torch.full((6, 4), rho, dtype=torch.float64), rho).item() == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("sparsity", ["l1", "kl"])
def test_sparse_ae_adds_the_weighted_penalty_of_its_code(sparsity):
    method = tiny("sparse-ae", sparsity=sparsity, sparsity_weight=0.5, target_rate=0.1, code_dim=12)
    x = digit_batch()
    out = method([x])
    code = method.encode(x).code
    assert code.shape == (16, 12)
    if sparsity == "kl":
        assert ((code > 0) & (code < 1)).all()  # sigmoid activations
    penalty = l1_sparsity(code) if sparsity == "l1" else kl_sparsity(code, 0.1)
    assert out.logs[f"sparsity_{sparsity}"].item() == pytest.approx(penalty.item(), rel=1e-5)
    expected = (out.logs["reconstruction"].item() + 0.5 * penalty.item()) / 64  # 64 pixel values
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)


def test_plain_ae_loss_is_the_reconstruction_error_of_its_bottleneck_code():
    method = tiny("ae", code_dim=7)
    x = digit_batch()
    out = method([x])
    assert out.embeddings.shape == (16, 7)
    error = reconstruction_error(method.reconstruct(x), x).item()
    assert out.logs["reconstruction"].item() == pytest.approx(error, rel=1e-6)
    assert out.loss.item() == pytest.approx(error / 64, rel=1e-6)  # per pixel value of 1×8×8 images


# ---------------------------------------------------------------------------------------------
# decoder and learning


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 8, 8), (1, 28, 28), (3, 28, 28), (1, 32, 32),
                                   (3, 32, 32), (1, 28, 32), (1, 3, 3)])
def test_decoder_output_has_exactly_the_image_shape(shape):
    decoder = ConvDecoder(10, shape, width=16)
    assert decoder(torch.randn(2, 10)).shape == (2, *shape)


def test_decoder_resizes_to_a_requested_size_and_the_method_to_its_input():
    decoder = ConvDecoder(10, (1, 28, 28), width=16)
    assert decoder(torch.randn(2, 10), (8, 8)).shape == (2, 1, 8, 8)
    method = tiny("ae", decoder_size=28)  # built for 28 px, fed 8 px digits
    assert method.reconstruct(digit_batch(2)).shape == (2, 1, 8, 8)


def test_health_watches_the_encoder_features_only():
    method = tiny("vae")
    x = digit_batch(4)
    watched = method.health_embeddings(x)
    assert set(watched) == {"encoder"}
    torch.testing.assert_close(watched["encoder"], method.encoder(x))


@pytest.mark.parametrize("name", FAMILY)
def test_loss_falls_on_digits(name):
    method = tiny(name)
    pool = load_split("digits", "train").get(torch.arange(256))
    optimizer = torch.optim.Adam(method.parameters(), lr=3e-3)
    losses = digit_step_losses(method, pool, optimizer, steps=15)
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])


@pytest.mark.parametrize("name", FAMILY)
def test_a_whole_run_logs_finite_losses_and_health(tiny_config, name):
    # no decoder_size: the trainer tells the method the data are 1×8×8
    run = Trainer(tiny_config(f"method.name={name}", "method.decoder_width=16")).fit()
    records = read_metrics(run / "metrics.jsonl")
    losses = [r["loss"] for r in records if r["kind"] in ("step", "epoch")]
    assert losses and all(isinstance(v, float) and math.isfinite(v) for v in losses)
    assert "reconstruction" in next(r for r in records if r["kind"] == "step")
    assert {r["embedding"] for r in records if r["kind"] == "health"} == {"encoder"}


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_build_method_fits_the_decoder_to_the_data_shape(shape):
    from selfsup.backbones import build_backbone
    from selfsup.methods import BuildContext, build_method

    encoder = build_backbone({"name": "small-cnn", "widths": [8, 16]}, shape[0], shape[1])
    method = build_method({"name": "vae", "decoder_width": 16}, encoder, BuildContext(in_shape=shape))
    method.eval()
    x = torch.randn(2, *shape)
    assert method.reconstruct(x).shape == x.shape
    assert method.decoder(torch.zeros(1, method.options.latent_dim)).shape[1:] == shape  # no resize
