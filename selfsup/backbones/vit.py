"""Vision Transformer (Dosovitskiy et al. 2021) sized for small images.

A strided convolution cuts the image into non-overlapping patches and embeds each one; a learned
class token and learned position embeddings are added, and pre-LayerNorm Transformer blocks mix
the tokens. On 28×28 / 32×32 images a patch of 2, 4 or 7 pixels gives a 14×14…4×4 grid; the
ImageNet patch of 16 would leave only four tokens. If the image side is not a multiple of the
patch size, the last partial row/column of pixels is ignored (as the strided convolution does).

``forward_tokens(x, keep)`` drops masked patch tokens *before* the blocks so that MAE's encoder
really skips them, and the position grid is resized on the fly (bicubic) when the input's grid
differs from the one the model was built for, e.g. when fine-tuning at another resolution.
``forward_tokens(x, mask=..., mask_token=...)`` keeps every position but replaces the embeddings
of masked patches by a [MASK] embedding, as BEiT's encoder does. The caller owns that embedding
(a parameter of the pretext task, not of the encoder): BEiT drops it after pretraining, and an
encoder parameter that only one method trains would change every exported ViT's weights and give
every other method a parameter without gradients (which DistributedDataParallel rejects).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from selfsup.errors import ConfigError, DataError
from selfsup.registry import BACKBONES

Grid = int | tuple[int, int]

INIT_STD = 0.02


def _pair(grid: Grid) -> tuple[int, int]:
    return (grid, grid) if isinstance(grid, int) else (int(grid[0]), int(grid[1]))


def interpolate_pos_embed(pos_embed: torch.Tensor, old_grid: Grid, new_grid: Grid) -> torch.Tensor:
    """Resize position embeddings ``(1, 1 + h*w, D)`` from an ``old_grid`` to a ``new_grid``.

    The patch embeddings are treated as a D-channel h×w image and resized bicubically; the class
    token's embedding (index 0) has no position and is kept as it is. Same-size grids return
    ``pos_embed`` itself, so this is exactly the identity there.
    """
    old, new = _pair(old_grid), _pair(new_grid)
    if pos_embed.shape[1] != 1 + old[0] * old[1]:
        raise DataError(
            f"position embeddings hold {pos_embed.shape[1]} tokens but a {old[0]}×{old[1]} grid "
            f"needs {1 + old[0] * old[1]} (class token + patches); pass the grid they were trained on"
        )
    if old == new:
        return pos_embed
    dim = pos_embed.shape[-1]
    cls_embed, patch_embed = pos_embed[:, :1], pos_embed[:, 1:]
    grid = patch_embed.reshape(1, old[0], old[1], dim).permute(0, 3, 1, 2)
    # Bicubic is not implemented for half precision on every device; resize in float32.
    grid = F.interpolate(grid.float(), size=new, mode="bicubic", align_corners=False)
    patch_embed = grid.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, new[0] * new[1], dim)
    return torch.cat([cls_embed, patch_embed], dim=1)


class SelfAttention(nn.Module):
    """Multi-head self-attention computed by ``scaled_dot_product_attention`` (fused kernels)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def _queries_keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, N, D) → q, k, v, each (B, heads, N, D / heads)."""
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._queries_keys_values(x)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(x.shape))

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Every query's attention weights over all N keys, (B, heads, N, N), computed explicitly
        because the fused kernel does not return them (for visualisation, not training)."""
        q, k, _ = self._queries_keys_values(x)
        return (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(dim=-1)


class Block(nn.Module):
    """Pre-LayerNorm Transformer block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


# parameters of the input embedding: layer 0 of layer-wise learning-rate decay
EMBEDDING_NAMES = ("patch_embed", "cls_token", "pos_embed")


class VisionTransformer(nn.Module):
    """ViT encoder; ``forward`` returns (B, embed_dim) features pooled by ``pool``.

    ``pool="cls"`` returns the class token, ``pool="mean"`` the mean of the patch tokens (both
    after the final LayerNorm).
    """

    def __init__(self, in_channels: int = 3, img_size: int = 32, patch_size: int = 4,
                 embed_dim: int = 192, depth: int = 12, num_heads: int = 3, mlp_ratio: float = 4.0,
                 pool: str = "cls", grad_checkpointing: bool = False) -> None:
        super().__init__()
        _check_options(img_size, patch_size, embed_dim, depth, num_heads, mlp_ratio, pool)
        self.patch_size = patch_size
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid[0] * self.grid[1]
        self.pool = pool
        self.grad_checkpointing = grad_checkpointing
        self.out_dim = embed_dim

        self.patch_embed = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.num_patches, embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self._init_weights()

    @property
    def num_layers(self) -> int:
        """Layers for layer-wise learning-rate decay: the Transformer blocks."""
        return len(self.blocks)

    def layer_id(self, name: str) -> int:
        """The BEiT/MAE layer of parameter ``name``: the input embedding (patch embedding, class
        token, position table) 0, block i → i + 1, the rest (the final norm) ``num_layers`` + 1,
        the layer of a head put on top."""
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        if name.split(".")[0] in EMBEDDING_NAMES:
            return 0
        return self.num_layers + 1

    def _init_weights(self) -> None:
        truncated_normal = _truncated_normal_init()
        truncated_normal(self.pos_embed)
        truncated_normal(self.cls_token)
        # The patch convolution is a linear map of each flattened patch; like MAE, give it the
        # Xavier init of that linear layer rather than the convolution default.
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.out_dim, -1))
        nn.init.zeros_(self.patch_embed.bias)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                truncated_normal(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def position_embedding(self, grid: Grid) -> torch.Tensor:
        """Position embeddings (1, 1 + h*w, D) for an h×w patch grid, interpolated if needed."""
        return interpolate_pos_embed(self.pos_embed, self.grid, grid)

    def embed(self, x: torch.Tensor, keep: torch.Tensor | None = None, mask: torch.Tensor | None = None,
              mask_token: torch.Tensor | None = None) -> torch.Tensor:
        """Patch tokens plus position embeddings, the kept ones only, behind the class token.

        With ``mask`` ((B, N) bool, True = masked) the embedding of every masked patch is replaced
        by ``mask_token`` (D values) *before* the position embedding is added, so a masked token
        still says where it sits but nothing of its pixels. ``keep`` then selects among them.
        """
        if x.ndim != 4 or min(x.shape[-2:]) < self.patch_size:
            raise DataError(
                f"the ViT expects (B, C, H, W) images of at least {self.patch_size}×"
                f"{self.patch_size} pixels (its patch size), got shape {tuple(x.shape)}"
            )
        patches = self.patch_embed(x)  # (B, D, h, w)
        pos = self.position_embedding(patches.shape[-2:])
        patches = patches.flatten(2).transpose(1, 2)
        if mask is not None:
            patches = self._replace_masked(patches, mask, mask_token)
        tokens = patches + pos[:, 1:]
        if keep is not None:
            if keep.ndim != 2 or keep.shape[0] != x.shape[0]:
                raise DataError(
                    f"keep must hold patch indices of shape (B={x.shape[0]}, n_keep), "
                    f"got {tuple(keep.shape)}"
                )
            tokens = tokens.gather(1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        cls = (self.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1)

    def _replace_masked(self, patches: torch.Tensor, mask: torch.Tensor,
                        mask_token: torch.Tensor | None) -> torch.Tensor:
        """(B, N, D) patch embeddings with ``mask_token`` wherever ``mask`` is True."""
        if mask.dtype != torch.bool or mask.shape != patches.shape[:2]:
            raise DataError(
                f"mask must be a bool tensor of shape (B, N) = {tuple(patches.shape[:2])} (True on "
                f"masked patches), got {mask.dtype} {tuple(mask.shape)}"
            )
        if mask_token is None or mask_token.numel() != self.out_dim:
            got = "none" if mask_token is None else f"shape {tuple(mask_token.shape)}"
            raise DataError(f"a mask needs a mask_token of {self.out_dim} values (the embedding "
                            f"width) to put on masked patches, got {got}")
        token = mask_token.reshape(1, 1, -1).to(patches.dtype)
        return torch.where(mask.unsqueeze(-1), token, patches)

    def _run_block(self, block: Block, tokens: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            # Recompute the block's activations in the backward pass instead of storing them.
            return torch.utils.checkpoint.checkpoint(block, tokens, use_reentrant=False)
        return block(tokens)

    def forward_tokens(self, x: torch.Tensor, keep: torch.Tensor | None = None,
                       mask: torch.Tensor | None = None,
                       mask_token: torch.Tensor | None = None) -> torch.Tensor:
        """All tokens after the final norm: (B, 1 + n, D), class token first.

        ``keep`` (LongTensor (B, n_keep)) lists, per sample, the indices (row-major in the patch
        grid) of the patches to keep; the others are dropped before the blocks, so the output is
        (B, 1 + n_keep, D) with the kept tokens in ``keep``'s order (MAE).
        ``mask`` ((B, N) bool) and ``mask_token`` (D values) hide the masked patches' pixels but
        keep their positions: their embeddings become the mask token (BEiT; see ``embed``).
        """
        tokens = self.embed(x, keep, mask, mask_token)
        for block in self.blocks:
            tokens = self._run_block(block, tokens)
        return self.norm(tokens)

    def pool_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 1 + n, D) tokens → (B, D) features by ``pool``: the class token, or the patches' mean."""
        return tokens[:, 0] if self.pool == "cls" else tokens[:, 1:].mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool_tokens(self.forward_tokens(x))

    def attention_weights(self, x: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """The full softmax attention of block ``layer``, (B, heads, 1 + n, 1 + n): query i's
        weights over every key, the class token first and the patches in row-major grid order."""
        depth = len(self.blocks)
        if not -depth <= layer < depth:
            raise ConfigError(f"attention layer {layer} does not exist; use -{depth} … {depth - 1}")
        index = layer % depth
        tokens = self.embed(x)
        for block in self.blocks[:index]:
            tokens = block(tokens)
        block = self.blocks[index]
        return block.attn.attention_weights(block.norm1(tokens))

    def attention_maps(self, x: torch.Tensor, layer: int = -1, include_cls: bool = False) -> torch.Tensor:
        """The class token's attention weights in block ``layer``, for visualisation.

        The softmax runs over all 1 + n keys (class token first). By default the class-token
        column is left out and the result is (B, heads, n), one value per patch in row-major grid
        order (reshape to (B, heads, h, w) to draw it); its rows then sum to 1 minus the weight
        the class token gives itself. ``include_cls=True`` returns the full softmax rows,
        (B, heads, 1 + n), which sum to 1.
        """
        weights = self.attention_weights(x, layer)[:, :, 0]
        return weights if include_cls else weights[..., 1:]


def _truncated_normal_init() -> Callable[[torch.Tensor], torch.Tensor]:
    # nn.init.trunc_normal_'s bounds are absolute (±2 by default), which truncates nothing at
    # std 0.02; cut at ±2 standard deviations as intended.
    return lambda t: nn.init.trunc_normal_(t, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD)


def _check_options(img_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int,
                   mlp_ratio: float, pool: str) -> None:
    if patch_size < 1 or img_size < patch_size:
        raise ConfigError(
            f"backbone.patch_size={patch_size} must be between 1 and backbone.img_size={img_size}"
        )
    if depth < 1 or num_heads < 1 or mlp_ratio <= 0:
        raise ConfigError(
            f"backbone.depth ({depth}), num_heads ({num_heads}) and mlp_ratio ({mlp_ratio}) "
            f"must be positive"
        )
    if embed_dim % num_heads:
        raise ConfigError(
            f"backbone.embed_dim={embed_dim} must be a multiple of backbone.num_heads={num_heads}"
        )
    if pool not in ("cls", "mean"):
        raise ConfigError(f"backbone.pool must be 'cls' or 'mean', got {pool!r}")


@dataclass
class ViTOptions:
    """ViT options; the defaults are ViT-Tiny with 4×4 patches on 32×32 images."""

    img_size: int = 32  # the grid the position embeddings are built for; other sizes interpolate
    patch_size: int = 4
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    pool: str = "cls"  # cls | mean
    grad_checkpointing: bool = False


@dataclass
class ViTSmallOptions(ViTOptions):
    embed_dim: int = 384
    num_heads: int = 6


@dataclass
class ViTBaseOptions(ViTOptions):
    embed_dim: int = 768
    num_heads: int = 12


def _register_preset(name: str, options_cls: type[ViTOptions], help: str) -> Callable[..., VisionTransformer]:
    """Register a backbone factory whose option defaults are the preset's sizes."""

    def factory(in_channels: int, options: ViTOptions | None = None) -> VisionTransformer:
        o = options or options_cls()
        return VisionTransformer(in_channels, o.img_size, o.patch_size, o.embed_dim, o.depth,
                                 o.num_heads, o.mlp_ratio, o.pool, o.grad_checkpointing)

    factory.options = options_cls  # type: ignore[attr-defined]
    factory.__name__ = name.replace("-", "_")
    return BACKBONES.register(name, help)(factory)


vit_tiny = _register_preset("vit-tiny", ViTOptions, "ViT-Tiny: 192-d, 12 blocks, 3 heads, patch 4")
vit_small = _register_preset("vit-small", ViTSmallOptions, "ViT-Small: 384-d, 12 blocks, 6 heads, patch 4")
vit_base = _register_preset("vit-base", ViTBaseOptions, "ViT-Base: 768-d, 12 blocks, 12 heads, patch 4")
