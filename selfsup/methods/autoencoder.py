"""The autoencoder family: plain, denoising, variational and sparse autoencoders.

All four share one implementation, ``Autoencoder``: encoder features → code → ``ConvDecoder`` →
reconstruction of the view, plus a penalty on the code. The variants change only a hook each:

- ``ae``: code = encoder features (optionally through a linear bottleneck ``code_dim``); no penalty.
- ``dae`` (Vincent et al. 2008/2010): the encoder sees a corrupted view (``corrupt``) and the loss
  compares the reconstruction with the *clean* view, so copying the input is no solution.
- ``vae`` (Kingma & Welling 2014): a linear head gives (μ, log σ²) of a Gaussian latent; the
  decoder sees z = μ + σ·ε and the penalty is β·KL(q(z|x) ‖ N(0, I)) (Higgins et al. 2017 for β).
- ``sparse-ae`` (Ng 2011, "Sparse autoencoder" notes): an L1 penalty on the code, or the KL between
  a target activation rate ρ and each unit's mean activation with sigmoid codes.

Conventions. The reconstruction target is the normalised view the method receives; the default
recipe is ``none`` (the un-augmented image, first view only) as in the papers: augmentation is not
what teaches an autoencoder, the DAE's corruption is its own augmentation, and samples and
interpolations should look like the data rather than like zoomed-in crops. The reconstruction
error is the squared error summed over pixels and channels and averaged over the batch: with that
scale MSE is the negative log-likelihood of a Gaussian decoder (variance ½) up to a constant, so
for the VAE β = 1 is exactly the negative ELBO per image, and β keeps its meaning whatever the
image size (a per-pixel mean would silently weight the KL by H·W·C). The training loss is that
per-image objective divided by the constant C·H·W: the optimum and β's meaning are unchanged, but
the gradients have the scale of a per-pixel MSE, so learning rates transfer between image sizes and
optimisers (LARS/SGD step biases by the raw gradient, and a 784-term sum made them diverge). The
logs hold the per-image terms (``reconstruction``, ``kl``, ``sparsity_*``). Every variant uses the
same convention so their losses compare. Losses are computed in float32 whatever the autocast region.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple, Optional

import torch
from torch import nn

from selfsup.decoders import ConvDecoder
from selfsup.errors import ConfigError
from selfsup.losses import gaussian_kl, kl_sparsity, l1_sparsity, reconstruction_error
from selfsup.methods.base import BuildContext, Method, NO_CONTEXT, StepOutput
from selfsup.registry import METHODS
from selfsup.views.image import MEAN, STD

NOISE_MODELS = ("gaussian", "masking", "salt_pepper")
SPARSITY_PENALTIES = ("l1", "kl")


# ----------------------------------------------------------------------------------------------
# losses and noise models (plain functions, so tests and other methods can use them)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """z = μ + σ·ε with ε ~ N(0, I): a sample of N(μ, σ²) that gradients flow through to μ and σ."""
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + (0.5 * logvar).exp() * eps


def add_noise(x: torch.Tensor, noise: str, level: float,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """A corrupted copy of normalised images ``x`` (B, C, H, W); ``level`` is in pixel units.

    gaussian: adds N(0, level²) noise on the [0, 1] pixel scale (std ``level / STD`` once
    normalised). masking: each pixel (all its channels) turns black with probability ``level``
    (Vincent et al.'s masking noise). salt_pepper: each pixel turns black or white, equally
    likely, with probability ``level``.
    """
    if noise == "gaussian":
        return x + (level / STD) * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if noise not in NOISE_MODELS:
        raise ConfigError(f"method.noise must be one of {', '.join(NOISE_MODELS)}, got {noise!r}")
    black, white = (0.0 - MEAN) / STD, (1.0 - MEAN) / STD
    pixels = (x.shape[0], 1, *x.shape[2:])  # one draw per pixel, shared by its channels
    hit = torch.rand(pixels, generator=generator, device=x.device) < level
    if noise == "masking":
        return x.masked_fill(hit, black)
    salt = torch.rand(pixels, generator=generator, device=x.device) < 0.5
    values = torch.where(salt, white, black).to(x.dtype)
    return torch.where(hit, values, x)


# ----------------------------------------------------------------------------------------------
# options


@dataclass
class DecoderOptions:
    decoder_width: int = 64  # channels of the decoder's first map; they halve per upsampling stage
    # Side the decoder is built for; 0: the data's own (the trainer passes the input shape), else 28.
    # Reconstructions are resized (bilinear) to the input's side when it differs.
    decoder_size: int = 0
    image_channels: int = 0  # 0: the data's channels (else the encoder's first convolution's)


@dataclass
class AutoencoderOptions(DecoderOptions):
    code_dim: int = 0  # 0: the code is the encoder's features; else a linear bottleneck to this width


@dataclass
class DenoisingOptions(AutoencoderOptions):
    # Vincent et al. 2010 found masking noise of 10–40% best on MNIST-like digits; 25% sits there.
    noise: str = "masking"  # gaussian | masking | salt_pepper
    noise_level: float = 0.25  # gaussian: std in [0, 1] pixel units; else the share of pixels hit


@dataclass
class VAEOptions(DecoderOptions):
    latent_dim: int = 32  # Kingma & Welling used 2–200 on MNIST; 32 keeps Fashion-MNIST detail
    beta: float = 1.0  # 1: the ELBO; > 1: β-VAE (Higgins et al. 2017), more disentangled, blurrier


@dataclass
class SparseOptions(AutoencoderOptions):
    sparsity: str = "l1"  # l1 on the code | kl between target_rate and each sigmoid unit's mean
    # Not from a paper (Ng's β = 3 is for ½·squared error on [0, 1] 8×8 patches); chosen so the
    # penalty starts near a tenth of the summed reconstruction error of normalised 28×28 images.
    sparsity_weight: float = 0.1
    target_rate: float = 0.05  # ρ for the kl penalty (Ng 2011 uses 0.05)


class Encoding(NamedTuple):
    code: torch.Tensor  # what the decoder sees during training (a sample for the VAE)
    mean_code: torch.Tensor  # the deterministic code (μ for the VAE): interpolation, embeddings
    penalty: torch.Tensor  # the weighted regulariser added to the loss (0-dim)
    terms: dict[str, torch.Tensor]  # unweighted penalty terms to log


# ----------------------------------------------------------------------------------------------
# methods


@METHODS.register("ae", "autoencoder: reconstruct the image from the encoder's features (MSE)")
class Autoencoder(Method):
    """The shared autoencoder; subclasses override ``_build_code``, ``encode`` or ``corrupt``.

    The health monitor watches the encoder's features (the inherited ``health_embeddings``).
    """

    Options = AutoencoderOptions
    view_recipe = "none"
    corrupts = False  # whether ``corrupt`` changes the input (the DAE)
    kind: ClassVar[str] = "autoencoder"  # what the report's figure calls it
    # Adam at 1e-3 is the usual autoencoder optimiser (Kingma & Welling used Adagrad; Adam is
    # today's default for both AEs and VAEs).
    config_defaults = {"optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4}}

    def __init__(self, encoder: nn.Module, options: DecoderOptions | None = None,
                 context: BuildContext = NO_CONTEXT) -> None:
        """The decoder's image shape is the data's (``context.in_shape``) unless options set it."""
        super().__init__(encoder, context)
        self.options = o = options or self.Options()
        self._check_options()
        if o.decoder_width < 1 or o.decoder_size < 0 or o.image_channels < 0:
            raise ConfigError(f"method.decoder_width must be ≥ 1 and method.decoder_size and "
                              f"method.image_channels ≥ 0, got {o.decoder_width}, {o.decoder_size}, "
                              f"{o.image_channels}")
        code_dim = self._build_code(encoder.out_dim)
        in_shape = context.in_shape
        side = o.decoder_size or (in_shape[1] if in_shape else 28)
        channels = o.image_channels or (in_shape[0] if in_shape else _input_channels(encoder))
        self.decoder = ConvDecoder(code_dim, (channels, side, side), o.decoder_width)

    # -- hooks ---------------------------------------------------------------------------------

    def _check_options(self) -> None:
        if self.options.code_dim < 0:
            raise ConfigError(f"method.code_dim must be ≥ 0 (0: the encoder's width), got {self.options.code_dim}")

    def _build_code(self, width: int) -> int:
        """Build the layers from encoder features to the code; return the code's width."""
        code_dim = self.options.code_dim
        self.bottleneck = nn.Linear(width, code_dim) if code_dim else nn.Identity()
        return code_dim or width

    def corrupt(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """What the encoder sees of the view ``x`` (the DAE's noise; the plain AE: ``x`` itself).
        ``generator`` (on ``x``'s device) makes the noise repeatable, e.g. for pictures."""
        return x

    def encode(self, x: torch.Tensor) -> Encoding:
        """Encode images ``x`` to their code and the code's penalty."""
        code = self.bottleneck(self.encoder(x))
        return Encoding(code, code, code.new_zeros((), dtype=torch.float32), {})

    # -- shared --------------------------------------------------------------------------------

    def forward(self, views: list[torch.Tensor]) -> StepOutput:
        clean = views[0]
        encoding = self.encode(self.corrupt(clean))
        reconstruction = self.decoder(encoding.code, clean.shape[-2:])
        error = reconstruction_error(reconstruction, clean)  # always against the clean view
        loss = (error + encoding.penalty) / clean[0].numel()  # per pixel value: see the module docstring
        logs = {"reconstruction": error.detach(), **{k: v.detach() for k, v in encoding.terms.items()}}
        return StepOutput(loss=loss, embeddings=encoding.mean_code, logs=logs)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's image of the deterministic code of ``x``, at ``x``'s size."""
        return self.decoder(self.encode(x).mean_code, x.shape[-2:])

    @torch.no_grad()
    def reconstruction_panels(self, x: torch.Tensor, generator: torch.Generator | None = None
                              ) -> dict[str, torch.Tensor]:
        """The :class:`~selfsup.methods.base.Reconstructs` columns: the input, what the encoder
        sees of it where that differs (``corrupts``: the DAE's noise, drawn with ``generator``)
        and the reconstruction of that."""
        columns = {"original": x}
        seen = x
        if self.corrupts:
            seen = columns["corrupted input"] = self.corrupt(x, generator)
        columns["reconstruction"] = self.reconstruct(seen)
        return columns

    def reconstruction_title(self, hidden: Optional[float] = None) -> str:
        return f"Reconstructions ({self.kind})"

    @torch.no_grad()
    def interpolate(self, x1: torch.Tensor, x2: torch.Tensor, steps: int = 8) -> torch.Tensor:
        """Decode ``steps`` evenly spaced points on the line between the codes of ``x1`` and ``x2``.

        ``x1`` and ``x2`` are (B, C, H, W) batches of normalised images (pairs are matched by
        index); the result is (B, steps, C, H, W), starting at x1's code and ending at x2's. Put
        the method in ``eval()`` first so BatchNorm uses its running statistics.
        """
        if steps < 2 or x1.shape != x2.shape:
            raise ValueError(f"interpolate needs steps ≥ 2 and two batches of the same shape, got "
                             f"steps={steps}, {tuple(x1.shape)} and {tuple(x2.shape)}")
        start, end = self.encode(x1).mean_code, self.encode(x2).mean_code
        t = torch.linspace(0, 1, steps, device=start.device, dtype=start.dtype).view(1, steps, 1)
        codes = torch.lerp(start.unsqueeze(1), end.unsqueeze(1), t)  # (B, steps, D)
        images = self.decoder(codes.flatten(0, 1), x1.shape[-2:])
        return images.reshape(len(x1), steps, *images.shape[1:])


@METHODS.register("dae", "denoising autoencoder: reconstruct the clean image from a corrupted one; "
                         "options noise (gaussian|masking|salt_pepper), noise_level")
class DenoisingAutoencoder(Autoencoder):
    kind = "denoising autoencoder"
    Options = DenoisingOptions
    corrupts = True

    def _check_options(self) -> None:
        super()._check_options()
        o = self.options
        if o.noise not in NOISE_MODELS:
            raise ConfigError(f"method.noise must be one of {', '.join(NOISE_MODELS)}, got {o.noise!r}")
        high = float("inf") if o.noise == "gaussian" else 1.0
        if not 0 <= o.noise_level <= high:
            raise ConfigError(f"method.noise_level for {o.noise} noise must lie in [0, {high}], got {o.noise_level}")

    def corrupt(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return add_noise(x, self.options.noise, self.options.noise_level, generator)


@METHODS.register("vae", "variational autoencoder: Gaussian latent, reconstruction + β·KL to N(0, I); "
                         "options latent_dim, beta")
class VariationalAutoencoder(Autoencoder):
    kind = "variational autoencoder"
    Options = VAEOptions

    def _check_options(self) -> None:
        o = self.options
        if o.latent_dim < 1 or o.beta < 0:
            raise ConfigError(f"method.latent_dim must be ≥ 1 and method.beta ≥ 0, got {o.latent_dim} and {o.beta}")

    def _build_code(self, width: int) -> int:
        self.posterior = nn.Linear(width, 2 * self.options.latent_dim)  # → (μ, log σ²)
        return self.options.latent_dim

    def encode(self, x: torch.Tensor) -> Encoding:
        mu, logvar = self.posterior(self.encoder(x)).float().chunk(2, dim=1)
        kl = gaussian_kl(mu, logvar).mean()
        return Encoding(reparameterize(mu, logvar), mu, self.options.beta * kl, {"kl": kl})

    @torch.no_grad()
    def sample(self, n: int, size: tuple[int, int] | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode ``n`` latents drawn from the prior N(0, I): (n, C, H, W) normalised images, at the
        decoder's size or ``size``; ``generator`` (on the method's device) makes the draw
        repeatable. Put the method in ``eval()`` first."""
        weight = self.posterior.weight
        z = torch.randn(n, self.options.latent_dim, generator=generator, device=weight.device,
                        dtype=weight.dtype)
        return self.decoder(z, size)

    def samples_title(self) -> str:
        return f"VAE samples: decoded z ~ N(0, I), {self.options.latent_dim}-d latent"


@METHODS.register("sparse-ae", "sparse autoencoder: reconstruction + L1 on the code or KL to a target "
                               "activation rate; options sparsity (l1|kl), sparsity_weight, target_rate")
class SparseAutoencoder(Autoencoder):
    """With ``sparsity: kl`` the code is sigmoid(linear(features)): the KL needs activations in
    (0, 1), and a linear layer first, because sigmoid of non-negative (ReLU-pooled) features could
    never go below ½ and so never reach a small target rate."""

    kind = "sparse autoencoder"
    Options = SparseOptions

    def _check_options(self) -> None:
        super()._check_options()
        o = self.options
        if o.sparsity not in SPARSITY_PENALTIES:
            raise ConfigError(f"method.sparsity must be one of {', '.join(SPARSITY_PENALTIES)}, got {o.sparsity!r}")
        if o.sparsity_weight < 0 or not 0 < o.target_rate < 1:
            raise ConfigError(f"method.sparsity_weight must be ≥ 0 and method.target_rate in (0, 1), got "
                              f"{o.sparsity_weight} and {o.target_rate}")

    def _build_code(self, width: int) -> int:
        o = self.options
        if o.sparsity == "l1":
            return super()._build_code(width)
        code_dim = o.code_dim or width
        self.bottleneck = nn.Sequential(nn.Linear(width, code_dim), nn.Sigmoid())
        return code_dim

    def encode(self, x: torch.Tensor) -> Encoding:
        code = self.bottleneck(self.encoder(x))
        o = self.options
        penalty = l1_sparsity(code) if o.sparsity == "l1" else kl_sparsity(code, o.target_rate)
        return Encoding(code, code, o.sparsity_weight * penalty, {f"sparsity_{o.sparsity}": penalty})


def _input_channels(encoder: nn.Module) -> int:
    """The in-channels of the encoder's first convolution: the image channels it expects."""
    for module in encoder.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    raise ConfigError(f"cannot tell how many image channels {type(encoder).__name__} expects (it has no "
                      "Conv2d); set method.image_channels")
