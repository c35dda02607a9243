"""A Transformer encoder for token sequences (proteins, DNA, text), shaped like ESM-2.

Token ids go in, one feature vector per sequence comes out (``forward``), or one per token
(``forward_tokens``) for the masked / next-token heads. The blocks are pre-LayerNorm (x + attn(LN x),
x + FFN(LN x)), attention runs through ``torch.nn.functional.scaled_dot_product_attention`` so fused
(flash / memory-efficient) kernels run on GPUs, and a final LayerNorm closes the stack.

Padding. Batches are right-padded with ``<pad>`` (the tokenisers' layout): the attention mask is
True on real tokens. Padded keys are masked out of every attention row and pooling averages real
tokens only, so appending padding never changes a sequence's features (up to float rounding in the
longer reductions). Rows of padding positions still compute something; nothing reads them.

Causal attention (next-token prediction) uses SDPA's ``is_causal`` alone: with right padding, the
keys at or before a real token are all real, so the causal mask already hides every padded key from
every real query, and the flash kernel stays usable.

Positions. Rotary embeddings (Su et al. 2021, as in ESM-2) by default: queries and keys are rotated
by an angle proportional to their position, so attention scores depend on relative position only
and any length works. ``positions="learned"`` adds a learned absolute embedding instead (BERT),
limited to ``max_positions`` tokens.

Pooling, the input checks and reverse-complement invariance (DNA) are the token encoders' common
part (``selfsup.backbones.token_encoder``). The two strands run as two forward passes of the same
shape, so even the float rounding matches: the features of x and rc(x) are bitwise equal on
deterministic kernels. Token-level outputs (``forward_tokens``) stay per strand.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from selfsup.backbones.token_encoder import (  # noqa: F401  (as_token_encoder: re-exported)
    INIT_STD, TokenEncoder, TokenEncoderOptions, TokenInput, as_token_encoder, init_token_weights,
    register_preset,
)
from selfsup.errors import ConfigError, DataError

POOLS = ("mean", "cls")
ESM_MASK_RATIO = 0.15 * 0.8  # the share of tokens ESM-2 replaced by <mask> in training
POSITIONS = ("rotary", "learned")


# ----------------------------------------------------------------------------------------------
# rotary position embeddings


class RotaryEmbedding(nn.Module):
    """Rotary position embedding of queries and keys (Su et al. 2021; GPT-NeoX/ESM layout).

    Channel pairs (i, i + d/2) of a head of width d rotate by the angle position × base^(−2i/d).
    The dot product of a query rotated to position m and a key rotated to position n then depends
    on m − n only.
    """

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ConfigError(f"rotary positions need an even head width, got {head_dim}; "
                              "choose dim / num_heads even")
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        # Not saved: it is a function of the options, and checkpoints stay the same across bases.
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def angles(self, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of the rotation angles, each (length, head_dim), in float32."""
        positions = torch.arange(length, device=device, dtype=torch.float32)
        half = torch.outer(positions, self.inv_freq.to(device))
        angles = torch.cat([half, half], dim=-1)
        return angles.cos(), angles.sin()

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """``x`` (..., L, head_dim) rotated by the angles of its positions."""
        first, second = x.chunk(2, dim=-1)
        rotated_half = torch.cat([-second, first], dim=-1)
        return (x.float() * cos + rotated_half.float() * sin).to(x.dtype)


# ----------------------------------------------------------------------------------------------
# blocks


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: x + Dropout(Attention(LN x)), then x + Dropout(FFN(LN x))."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float = 0.0,
                 norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.attn_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_out = nn.Linear(dim, dim)
        self.ffn_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, dim))

    def forward(self, x: torch.Tensor, key_mask: Optional[torch.Tensor], causal: bool,
                rotary: Optional[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """x (B, L, D); key_mask (B, 1, 1, L) bool (True: attend) or None; rotary (cos, sin)."""
        batch, length, dim = x.shape
        qkv = self.qkv(self.attn_norm(x)).view(batch, length, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, L, head_dim)
        if rotary is not None:
            q, k = RotaryEmbedding.rotate(q, *rotary), RotaryEmbedding.rotate(k, *rotary)
        p = self.dropout if self.training else 0.0
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=p,
                                                  is_causal=causal)
        attended = attended.transpose(1, 2).reshape(batch, length, dim)
        x = x + F.dropout(self.attn_out(attended), p, self.training)
        return x + F.dropout(self.ffn(self.ffn_norm(x)), p, self.training)


# ----------------------------------------------------------------------------------------------
# the encoder


@dataclass
class TransformerOptions(TokenEncoderOptions):
    """Transformer options (the ``backbone`` config section); defaults: ``transformer-tiny``.

    vocab_size, pad_id and tokenizer come from the tokeniser (``TokenEncoderOptions``).
    """

    dim: int = 64
    depth: int = 2
    num_heads: int = 4
    ffn_dim: int = 256
    positions: str = "rotary"  # rotary | learned
    max_positions: int = 1026  # longest input with learned positions (ESM: 1024 + <cls> + <eos>)
    rotary_base: float = 10000.0
    dropout: float = 0.0  # on attention weights and both residual branches
    pool: str = "mean"  # mean (over real tokens) | cls (the first token)
    causal: bool = False  # forward() attends only to earlier tokens (next-token encoders)
    grad_checkpointing: bool = False  # recompute block activations in the backward pass
    norm_eps: float = 1e-5  # every LayerNorm's epsilon (ESM-2's checkpoints: 1e-12)
    # ESM-2's "token dropout": <mask> tokens' embeddings are zeroed and the others scaled by
    # (1 − 0.15·0.8) / (1 − the sequence's share of <mask>), at training and inference alike;
    # on for weights converted from ESM-2 (selfsup.backbones.hf_esm), which were trained so
    mask_id: int = -1  # the <mask> id token_dropout looks for
    token_dropout: bool = False


class TransformerEncoder(TokenEncoder):
    """Token ids (B, L) → pooled features (B, ``out_dim``); see the module docstring."""

    def __init__(self, options: Optional[TransformerOptions] = None) -> None:
        o = dataclasses.replace(options or TransformerOptions())
        super().__init__(o)
        _check_options(o)
        self.pool, self.causal = o.pool, o.causal
        self.grad_checkpointing = o.grad_checkpointing
        self.out_dim = o.dim
        self.token_embedding = nn.Embedding(o.vocab_size, o.dim, padding_idx=o.pad_id)
        self.position_embedding = (nn.Embedding(o.max_positions, o.dim)
                                   if o.positions == "learned" else None)
        self.rotary = (RotaryEmbedding(o.dim // o.num_heads, o.rotary_base)
                       if o.positions == "rotary" else None)
        self.blocks = nn.ModuleList(TransformerBlock(o.dim, o.num_heads, o.ffn_dim, o.dropout,
                                                     o.norm_eps) for _ in range(o.depth))
        self.final_norm = nn.LayerNorm(o.dim, eps=o.norm_eps)
        self.norm_eps = o.norm_eps
        self.preset = "transformer-tiny"
        self._init_weights()
        self._finish_init()

    def _init_weights(self) -> None:
        init_token_weights(self, self.pad_id)

    @property
    def max_tokens(self) -> Optional[int]:
        """The longest input with learned positions; None (any length) with rotary ones."""
        return self.options.max_positions if self.position_embedding is not None else None

    # ------------------------------------------------------------------ forward passes

    def forward_tokens(self, ids: TokenInput, attention_mask: Optional[torch.Tensor] = None,
                       causal: Optional[bool] = None, padded: bool = True) -> torch.Tensor:
        """Per-token features (B, L, D) after the final LayerNorm.

        ids: (B, L) int64, or a ``TokenBatch`` (ids and mask). attention_mask: (B, L) bool, True on
        real tokens; None: ``ids != pad_id``. causal: token t attends to tokens ≤ t only (default:
        the encoder's ``causal`` option). padded=False promises that no position is padding, so no
        mask is built and SDPA may pick its fastest (flash) kernel.
        """
        ids, attention_mask = self._inputs(ids, attention_mask)
        causal = self.causal if causal is None else causal
        x = self.token_embedding(ids)
        if self.options.token_dropout:
            x = self._token_dropout(x, ids, attention_mask)
        length = ids.shape[1]
        if self.position_embedding is not None:
            if length > self.options.max_positions:
                raise DataError(
                    f"a batch of {length} tokens is longer than backbone.max_positions="
                    f"{self.options.max_positions} (learned positions); crop the sequences "
                    "(data max_length) or use positions=rotary"
                )
            x = x + self.position_embedding.weight[:length]
        rotary = self.rotary.angles(length, ids.device) if self.rotary is not None else None
        # Causal attention of right-padded batches needs no key mask (see the module docstring).
        key_mask = None if causal or not padded else attention_mask[:, None, None, :]
        for block in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, key_mask, causal, rotary,
                                                      use_reentrant=False)
            else:
                x = block(x, key_mask, causal, rotary)
        return self.final_norm(x)

    def _token_dropout(self, x: torch.Tensor, ids: torch.Tensor,
                       attention_mask: torch.Tensor) -> torch.Tensor:
        """ESM-2's rescaling of the token embeddings (see ``TransformerOptions.token_dropout``),
        and its zeroing of padding."""
        masked = ids == self.options.mask_id
        x = x.masked_fill(masked.unsqueeze(-1), 0.0)
        observed = masked.sum(-1).float() / attention_mask.sum(-1).clamp(min=1)
        x = (x * ((1 - ESM_MASK_RATIO) / (1 - observed))[:, None, None]).to(x.dtype)
        return (x * attention_mask.unsqueeze(-1)).to(x.dtype)

    def pool_tokens(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L, D) token features → (B, D): the mean over real tokens, or the first token."""
        if self.pool == "cls":
            return tokens[:, 0]
        return super().pool_tokens(tokens, attention_mask)


# ----------------------------------------------------------------------------------------------
# the language-model head


class LanguageModelHead(nn.Module):
    """Token features → vocabulary logits, ESM's / RoBERTa's head: Linear → GELU → LayerNorm →
    Linear to the vocabulary, whose weight is the encoder's token embedding when ``tied``."""

    def __init__(self, encoder: TokenEncoder, tied: bool = True) -> None:
        super().__init__()
        dim = encoder.out_dim
        self.dense = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=getattr(encoder, "norm_eps", 1e-5))
        self.decoder = nn.Linear(dim, encoder.vocab_size)
        if tied:
            self.decoder.weight = encoder.token_embedding.weight
        else:
            nn.init.trunc_normal_(self.decoder.weight, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD)
        nn.init.trunc_normal_(self.dense.weight, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD)
        nn.init.zeros_(self.dense.bias)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(F.gelu(self.dense(tokens))))


# ----------------------------------------------------------------------------------------------
# checks and presets


def _check_options(o: TransformerOptions) -> None:
    if min(o.dim, o.depth, o.num_heads, o.ffn_dim) < 1:
        raise ConfigError(f"backbone.dim ({o.dim}), depth ({o.depth}), num_heads ({o.num_heads}) "
                          f"and ffn_dim ({o.ffn_dim}) must be positive")
    if o.dim % o.num_heads:
        raise ConfigError(f"backbone.dim={o.dim} must be a multiple of backbone.num_heads={o.num_heads}")
    if o.positions not in POSITIONS:
        raise ConfigError(f"backbone.positions must be one of {', '.join(POSITIONS)}, got {o.positions!r}")
    if o.pool not in POOLS:
        raise ConfigError(f"backbone.pool must be one of {', '.join(POOLS)}, got {o.pool!r}")
    if o.causal and o.pool == "cls":
        # <cls> sits first: under a causal mask it attends only to itself, so every sequence
        # would get the same features.
        raise ConfigError("backbone.pool=cls with backbone.causal=true gives every sequence the same "
                          "features (<cls> comes first and sees only itself); use backbone.pool=mean")
    if not 0.0 <= o.dropout < 1.0:
        raise ConfigError(f"backbone.dropout must be in [0, 1), got {o.dropout}")
    if o.max_positions < 1:
        raise ConfigError(f"backbone.max_positions must be positive, got {o.max_positions}")
    if not 0 < o.norm_eps < 1:
        raise ConfigError(f"backbone.norm_eps must be in (0, 1), got {o.norm_eps}")
    if o.token_dropout and not 0 <= o.mask_id < o.vocab_size:
        raise ConfigError(f"backbone.token_dropout needs backbone.mask_id, the <mask> token's id "
                          f"(0 … {o.vocab_size - 1}), got {o.mask_id}")


@dataclass
class TransformerSmallOptions(TransformerOptions):
    dim: int = 256
    depth: int = 4
    num_heads: int = 8
    ffn_dim: int = 1024


@dataclass
class ESM2Options(TransformerOptions):
    """ESM-2 8M's shape (Lin et al. 2023, esm2_t6_8M_UR50D): 6 layers, 320 wide, 20 heads."""

    dim: int = 320
    depth: int = 6
    num_heads: int = 20
    ffn_dim: int = 1280


transformer_tiny = register_preset(
    "transformer-tiny", TransformerEncoder, TransformerOptions,
    "token Transformer, 64-d, 2 blocks, 4 heads (tests, CPU); needs vocab_size")
transformer_small = register_preset(
    "transformer-small", TransformerEncoder, TransformerSmallOptions,
    "token Transformer, 256-d, 4 blocks, 8 heads (CPU/GPU demos); needs vocab_size")
esm2_8m = register_preset(
    "esm2-8m", TransformerEncoder, ESM2Options,
    "token Transformer shaped like ESM-2 8M: 320-d, 6 blocks, 20 heads, FFN 1280; needs vocab_size")
