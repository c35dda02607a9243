"""A codebook of visual words learnt online by mini-batch k-means: BEiT's tokenizer, made cheap.

BEiT (Bao et al. 2022) turns every image patch into a discrete *visual token* with the encoder of
a discrete VAE trained beforehand on ImageNet (DALL·E's), and trains the ViT to predict the tokens
of masked patches. We have no such tokenizer for 28×28 gray images and do not want a second
training stage, so ``PatchCodebook`` clusters the (per-patch normalised) pixel patches themselves:
a patch's token is the index of its nearest codeword, and the codewords are learnt online by
mini-batch k-means with exponential moving averages, the update VQ-VAE uses for its codebook
(van den Oord et al. 2017, appendix; Razavi et al. 2019):

    n_k ← d·n_k + (1 − d)·|{i : z_i = k}|          (EMA count of patches assigned to code k)
    m_k ← d·m_k + (1 − d)·Σ_{i : z_i = k} x_i       (EMA sum of those patches)
    c_k ← m_k / ñ_k,   ñ_k = (n_k + ε) / (n + K·ε) · n,   n = Σ_k n_k   (Laplace-smoothed counts)

Why this rather than a learnt VQ tokenizer: it costs one distance matrix per step and no extra
training stage, it is deterministic (see below), and it runs on two CPU cores. What it loses:
a dVAE trained on ImageNet gives tokens that carry some semantics (parts, textures across many
pixels); k-means words over single 4×4 patches only describe local shape (edges, corners, flat
areas at a given contrast), so the prediction task is closer to "inpaint the local structure".

Codes that stop winning patches would waste the vocabulary, so after every update a code whose EMA
count fell below ``dead_threshold`` is *re-seeded* (Dhariwal et al. 2020, Jukebox) with a random
patch of the current batch, starting again at count ``dead_threshold``: it survives exactly while
it keeps winning at least that many patches per batch. An empty codebook is seeded with distinct
random patches of the first batch it sees, every code starting at the count an even split of that
batch would give. These draws come from a generator seeded by the number of updates so far, not
from the global random numbers: processes of a distributed run, whose random numbers differ,
update their codebooks from the same gathered patches and so keep identical codebooks without
exchanging them, and a resumed run draws what an uninterrupted one would.

The codewords and the EMA statistics are registered buffers; the flags ``initialized`` and
``frozen`` and the update count are plain Python values saved with them as the module's extra
state, so reading them never synchronises with the GPU and a checkpoint restores the codebook
exactly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from selfsup.errors import ConfigError, DataError

SEED = 0  # the codebook's draws use generators seeded SEED + (updates so far): the same everywhere


class PatchCodebook(nn.Module):
    """``num_codes`` codewords of size ``dim``, learnt by EMA k-means (see the module docstring).

    ``assign(patches)`` maps (..., dim) vectors to their nearest code's index; ``update(patches)``
    assigns and then moves the codebook one EMA k-means step towards the batch, unless ``frozen``.
    """

    def __init__(self, num_codes: int, dim: int, decay: float = 0.99, dead_threshold: float = 1.0,
                 eps: float = 1e-5) -> None:
        super().__init__()
        if num_codes < 2 or dim < 1:
            raise ConfigError(f"a codebook needs at least 2 codes of dimension ≥ 1, got "
                              f"{num_codes} codes of dimension {dim} (method.num_codes)")
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"method.codebook_decay must be in [0, 1), got {decay}")
        if dead_threshold < 0:
            raise ConfigError(f"method.dead_code_threshold must be ≥ 0, got {dead_threshold}")
        self.num_codes, self.dim = num_codes, dim
        self.decay, self.dead_threshold, self.eps = decay, dead_threshold, eps
        self.register_buffer("codes", torch.zeros(num_codes, dim))
        self.register_buffer("cluster_size", torch.zeros(num_codes))  # EMA counts n_k
        self.register_buffer("code_sum", torch.zeros(num_codes, dim))  # EMA sums m_k
        self.initialized = False
        self.frozen = False
        self.updates = 0  # EMA steps taken

    # ------------------------------------------------------------------ state
    def get_extra_state(self) -> dict[str, Any]:
        return {"initialized": self.initialized, "frozen": self.frozen, "updates": self.updates}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.initialized, self.frozen = bool(state["initialized"]), bool(state["frozen"])
        self.updates = int(state["updates"])

    # ------------------------------------------------------------------ use
    @torch.no_grad()
    def assign(self, patches: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code (squared Euclidean distance) of every vector: (..., dim) → (...)."""
        self._check(patches)
        return self._nearest(patches.reshape(-1, self.dim)).reshape(patches.shape[:-1])

    @torch.no_grad()
    def update(self, patches: torch.Tensor) -> torch.Tensor:
        """Assign ``patches`` (..., dim) to their nearest codes and return those indices (...), taken
        *before* the update; then, unless ``frozen``, take one EMA k-means step on them and re-seed
        dead codes. An empty codebook is first seeded from ``patches`` (even when frozen: it could
        not assign anything otherwise)."""
        self._check(patches)
        flat = patches.reshape(-1, self.dim).float()
        if not self.initialized:
            self._seed(flat)
        ids = self._nearest(flat)
        if not self.frozen:
            self._ema_step(flat, ids)
            self.updates += 1  # first, so re-seeding draws differently from the seeding
            self._reseed_dead_codes(flat)
        return ids.reshape(patches.shape[:-1])

    # ------------------------------------------------------------------ internals
    def _check(self, patches: torch.Tensor) -> None:
        if patches.shape[-1] != self.dim or patches.numel() == 0:
            raise DataError(f"the codebook holds {self.dim}-value codes but got patches of shape "
                            f"{tuple(patches.shape)}; pass (..., {self.dim}) vectors")

    def _nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """(M, dim) → the index of each row's nearest code, (M,).

        ‖x − c_k‖² = ‖x‖² − 2·x·c_k + ‖c_k‖², and ‖x‖² does not depend on k, so the argmin is taken
        over ‖c_k‖² − 2·x·c_k; always in float32, also inside an autocast region, since half
        precision would blur near-equal distances.
        """
        if not self.initialized:
            raise DataError("the codebook is still empty: it is seeded from the first training batch, "
                            "so run a training step (method.train(), then a forward) before assigning")
        with torch.autocast(flat.device.type, enabled=False):
            flat = flat.float()
            scores = self.codes.square().sum(dim=1) - 2.0 * flat @ self.codes.t()
            return scores.argmin(dim=1)

    def _random_patches(self, flat: torch.Tensor) -> torch.Tensor:
        """``num_codes`` random rows of ``flat``, distinct when there are enough (else repeats,
        which die and are re-seeded later), drawn by this update's own generator: a function of
        the update count, it needs no state of its own in checkpoints."""
        generator = torch.Generator(device=flat.device).manual_seed(SEED + self.updates)
        if flat.shape[0] >= self.num_codes:
            rows = torch.randperm(flat.shape[0], generator=generator, device=flat.device)[: self.num_codes]
        else:
            rows = torch.randint(flat.shape[0], (self.num_codes,), generator=generator, device=flat.device)
        return flat[rows]

    def _seed(self, flat: torch.Tensor) -> None:
        self.codes.copy_(self._random_patches(flat))
        self.cluster_size.fill_(flat.shape[0] / self.num_codes)
        self.code_sum.copy_(self.codes * self.cluster_size.unsqueeze(1))
        self.initialized = True

    def _ema_step(self, flat: torch.Tensor, ids: torch.Tensor) -> None:
        counts = code_counts(ids, self.num_codes, flat.dtype)
        sums = torch.zeros_like(self.code_sum).index_add_(0, ids, flat)
        self.cluster_size.lerp_(counts, 1.0 - self.decay)
        self.code_sum.lerp_(sums, 1.0 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.num_codes * self.eps) * total
        self.codes.copy_(self.code_sum / smoothed.unsqueeze(1))

    def _reseed_dead_codes(self, flat: torch.Tensor) -> None:
        dead = self.cluster_size < self.dead_threshold
        fresh = self._random_patches(flat)
        # Branch-free (no .any() test), so the update never waits for the GPU.
        self.codes.copy_(torch.where(dead.unsqueeze(1), fresh, self.codes))
        self.cluster_size.copy_(torch.where(dead, self.dead_threshold, self.cluster_size))
        self.code_sum.copy_(torch.where(dead.unsqueeze(1), fresh * self.dead_threshold, self.code_sum))


def code_perplexity(ids: torch.Tensor, num_codes: int) -> torch.Tensor:
    """exp(entropy) of the codes' frequencies in ``ids``: the number of equally used codes that
    would give the same entropy (1 when one code takes everything, ``num_codes`` at a uniform use)."""
    counts = code_counts(ids, num_codes, torch.float32)
    p = counts / counts.sum()
    return torch.exp(-torch.special.xlogy(p, p).sum())


def code_counts(ids: torch.Tensor, num_codes: int, dtype: torch.dtype) -> torch.Tensor:
    """How often each of ``num_codes`` codes occurs in ``ids``, as a (num_codes,) tensor.

    A scatter-add rather than ``torch.bincount``, which on CUDA reads the ids' min and max back to
    the host: a sync in every training step.
    """
    flat = ids.reshape(-1)
    return torch.zeros(num_codes, dtype=dtype, device=ids.device).index_add_(
        0, flat, torch.ones_like(flat, dtype=dtype))
