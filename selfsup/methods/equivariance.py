"""Invariance versus equivariance to a group of image transformations, contrastively.

SimCLR-style training with one change: a random group element g (a 90° rotation by default) is
applied to the first view, and the positive of f(g·x₁) is

* f(x₂) in ``mode: invariant`` — the embedding must not change under g (g acts as one more
  augmentation);
* ρ(g)·f(x₂) in ``mode: equivariant`` — the embedding must change *predictably*: by ρ(g), a fixed
  representation of the group on the embedding space,

with InfoNCE (NT-Xent) over in-batch negatives on the projector outputs.

ρ is fixed, not learnt: the embedding is split into pairs of dimensions and each pair is rotated by
2πk/n for the k-th element of the cyclic group C_n (90° steps for rotations, a sign flip for
mirroring). This representation is orthogonal (it keeps norms and cosines, so InfoNCE's
normalisation commutes with it) and fixes no vector but 0: ρ(g)z = z for g ≠ e forces z = 0. So an
invariant embedding cannot satisfy the equivariant objective; the network has to encode the
transformation. The regular representation (the embedding cut into n blocks that g permutes
cyclically) was not chosen because it fixes every embedding whose n blocks are equal: the
equivariant objective would then also be met by an invariant network that copies one block n times.

The default views are SimCLR's without the horizontal flip (recipe ``simclr-no-flip``): a flip
inside the positive pair would demand f(flip·x) ≈ f(x), and with rotations
flip·r = r⁻¹·flip, so f(flip·r·x) would have to equal both ρ(r)f(x) and ρ(r⁻¹)f(x): ρ(r²)f(x) = f(x),
which this ρ allows only for f(x) = 0.

``equivariance_error`` measures how far any encoder is from invariance and from equivariance.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from selfsup.errors import ConfigError, DataError
from selfsup.heads import MLPHead
from selfsup.losses import Gather, nt_xent
from selfsup.methods.base import BuildContext, Method, NO_CONTEXT, StepOutput
from selfsup.pretext import Elements, hflip, rotate90
from selfsup.registry import METHODS
from selfsup.views.image import to_input

MODES = ("invariant", "equivariant")

ImageAction = Callable[[torch.Tensor, Elements], torch.Tensor]  # (images, k) -> g_k · images
Representation = Callable[[torch.Tensor, Elements], torch.Tensor]  # (z, k) -> ρ(g_k) z


@functools.lru_cache(maxsize=32)
def _unit_circle(order: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of 2πk/order for k = 0..order−1, with the zeros exact (cos 90° is 0, not
    6e-17), so ρ of a 90° step is an exact signed permutation."""
    angles = [2 * math.pi * k / order for k in range(order)]
    cos = torch.tensor([round(math.cos(a), 12) for a in angles], device=device)
    sin = torch.tensor([round(math.sin(a), 12) for a in angles], device=device)
    return cos, sin


def rotate_pairs(z: torch.Tensor, k: Elements, order: int) -> torch.Tensor:
    """ρ(g_k)·z for the cyclic group C_order: each consecutive pair of dimensions (z₀, z₁),
    (z₂, z₃), … of sample i rotated by 2π·k[i]/order. z is (B, D) with D even."""
    if z.ndim != 2 or z.shape[1] % 2:
        raise DataError(f"the group representation acts on (B, D) embeddings with D even, got shape "
                        f"{tuple(z.shape)}; use an even method.proj_dim")
    k = torch.as_tensor(k, device=z.device).expand(len(z)) % order
    cos, sin = (t[k, None].to(z.dtype) for t in _unit_circle(order, z.device))
    a, b = z[:, 0::2], z[:, 1::2]
    return torch.stack([cos * a - sin * b, sin * a + cos * b], dim=2).flatten(1)


@dataclass(frozen=True)
class CyclicGroup:
    """A cyclic group C_order acting on images (``act``) and on embeddings through the fixed
    orthogonal representation ``rho`` (2-d rotations of pairs of dimensions)."""

    name: str
    order: int
    act: ImageAction

    def rho(self, z: torch.Tensor, k: Elements) -> torch.Tensor:
        """ρ(g_k)·z for each sample of a (B, D) batch."""
        return rotate_pairs(z, k, self.order)

    def rho_matrix(self, k: int, dim: int) -> torch.Tensor:
        """ρ(g_k) as an explicit (dim, dim) matrix: ``rho(z, k) == z @ rho_matrix(k, dim).T``."""
        return self.rho(torch.eye(dim), k).T


GROUPS: dict[str, CyclicGroup] = {
    "rotation": CyclicGroup("rotation", 4, rotate90),  # C4: turns by 0, 90, 180, 270°
    "flip": CyclicGroup("flip", 2, hflip),  # C2: identity and left-right mirroring
}


def equivariance_loss(z_moved: torch.Tensor, z_still: torch.Tensor, k: torch.Tensor,
                      rho: Optional[Representation], temperature: float,
                      gather: Optional[Gather] = None, rank: int = 0) -> torch.Tensor:
    """NT-Xent whose positive pairs are (z_moved[i], ρ(g_k[i])·z_still[i]).

    ``z_moved`` are embeddings of transformed views g·x₁, ``z_still`` of untransformed views x₂.
    ``rho=None`` is the invariant objective: positives (z_moved[i], z_still[i]).
    """
    target = z_still if rho is None else rho(z_still, k)
    return nt_xent(z_moved, target, temperature, gather, rank)


@torch.no_grad()
def equivariance_error(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                       group_action: ImageAction = rotate90, rho: Optional[Representation] = None,
                       order: int = 4, batch_size: int = 1024) -> dict[str, float]:
    """How much an encoder's embeddings change under a group, averaged over images and g ≠ e.

    With f̂ = f/‖f‖ (normalised embeddings, so ‖f̂(x)‖ = 1 and the ratios below are distances
    on the unit sphere, in [0, 2]):

    * invariance error   = mean ‖f̂(g·x) − f̂(x)‖ / ‖f̂(x)‖: 0 for an invariant encoder;
    * equivariance error = mean ‖f̂(g·x) − ρ(g)·f̂(x)‖ / ‖f̂(x)‖: 0 for one equivariant under ρ.

    ``fn`` maps (B, C, H, W) normalised images to (B, D); a module is evaluated in eval mode and
    put back in the mode it was in. ``images`` are uint8 or already normalised floats;
    ``group_action(x, k)`` applies g_k to images, ``rho(z, k)`` ρ(g_k) to embeddings (default: the
    pairwise rotations of C_order, as the equivariance method uses).
    """
    if order < 2:
        raise ConfigError(f"equivariance_error needs a group of order ≥ 2, got {order}")
    rho = rho or functools.partial(rotate_pairs, order=order)
    module = fn if isinstance(fn, nn.Module) else None
    was_training = module is not None and module.training
    if module is not None:
        module.eval()  # BatchNorm in train mode would make f(x) depend on the rest of the batch
    try:
        invariance, equivariance = [], []
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size]
            x = x if x.is_floating_point() else to_input(x)
            plain = nn.functional.normalize(fn(x).float(), dim=1)
            scale = plain.norm(dim=1)  # 1, but kept so the code reads as the formula
            for k in range(1, order):
                moved = nn.functional.normalize(fn(group_action(x, k)).float(), dim=1)
                invariance.append((moved - plain).norm(dim=1) / scale)
                equivariance.append((moved - rho(plain, k)).norm(dim=1) / scale)
    finally:
        if module is not None:
            module.train(was_training)
    return {"invariance_error": torch.cat(invariance).mean().item(),
            "equivariance_error": torch.cat(equivariance).mean().item()}


@dataclass
class EquivarianceOptions:
    mode: str = "equivariant"  # invariant | equivariant
    group: str = "rotation"  # rotation (C4, 90° turns) | flip (C2, left-right mirror)
    temperature: float = 0.2
    proj_hidden_dim: int = 0  # 0: the encoder's width
    proj_dim: int = 128  # even: ρ rotates pairs of dimensions
    proj_layers: int = 2


@METHODS.register("equivariance", "contrastive with a group (90° rotations): mode=invariant, "
                                  "f(gx)~f(x), or equivariant, f(gx)~rho(g)f(x)")
class Equivariance(Method):
    Options = EquivarianceOptions
    view_recipe = "simclr-no-flip"

    compares_samples = True

    def __init__(self, encoder: nn.Module, options: EquivarianceOptions | None = None,
                 context: BuildContext = NO_CONTEXT) -> None:
        super().__init__(encoder, context)
        self.options = o = options or EquivarianceOptions()
        if o.mode not in MODES:
            raise ConfigError(f"method.mode must be one of {', '.join(MODES)}, got {o.mode!r}")
        if o.group not in GROUPS:
            raise ConfigError(f"method.group must be one of {', '.join(GROUPS)}, got {o.group!r}")
        if o.proj_dim < 2 or o.proj_dim % 2:
            raise ConfigError(f"method.proj_dim must be even (ρ rotates pairs of dimensions), "
                              f"got {o.proj_dim}")
        self.group = GROUPS[o.group]
        width = encoder.out_dim
        self.projector = MLPHead(width, o.proj_hidden_dim or width, o.proj_dim, o.proj_layers)

    def forward(self, views: list[torch.Tensor]) -> StepOutput:
        x1, x2 = views[:2]
        k = torch.randint(0, self.group.order, (len(x1),), device=x1.device)
        # Both views in one forward pass, as in SimCLR.
        z = self.projector(self.encoder(torch.cat([self.group.act(x1, k), x2])))
        z_moved, z_still = z.chunk(2)
        rho = self.group.rho if self.options.mode == "equivariant" else None
        loss = equivariance_loss(z_moved, z_still, k, rho, self.options.temperature, self.gather,
                                 self.rank)
        return StepOutput(loss=loss, embeddings=z_still)
