"""A dilated residual 1-D CNN for token sequences, shaped like CARP's ByteNet encoder.

CARP (Yang, Lu & Fusi, "Convolutions are competitive with transformers for protein sequence
pretraining", 2022/2024) pretrains ByteNet (Kalchbrenner et al. 2016) encoders with ESM's masked
language modelling and matches Transformers of the same size while costing time linear in the
length. This module is our own implementation of that encoder; the block layout and the dilation
schedule follow CARP's ``sequence_models/convolutional.py``.

Blocks. Each block is a pre-norm residual bottleneck around one dilated convolution:

    x + W_out(GELU(LN(conv_r(GELU(LN(W_in(GELU(LN(x)))))))))

W_in projects the d channels down to d/2, the convolution (kernel k, dilation r, zero "same"
padding) mixes neighbouring positions on those d/2 channels, and W_out projects back up to d. The
dilation doubles from block to block, 1, 2, 4, … up to ``max_dilation``, and then starts again at 1
(CARP: up to 128), so a few blocks see far while every cycle returns to fine detail. A final
LayerNorm closes the stack. Tokens are embedded directly at width d; there are no position
embeddings: convolutions are translation-equivariant, so a token's features depend on its
neighbours' relative offsets only, and any length works at a cost linear in it.

Receptive field. A convolution of kernel k and dilation r reaches (k − 1)·r / 2 positions to each
side, and the blocks' reaches add up: one output position sees ``receptive_field`` =
1 + (k − 1)·Σ r tokens, centred on it, and nothing outside it.

Padding. Batches are right-padded with ``<pad>`` (the attention mask is True on real tokens). The
LayerNorms, GELUs and the 1×1 projections work on each position alone; only the convolutions mix
positions. So the conv input is zeroed on padded positions right before every convolution: a real
token near the end of its sequence then reads zeros past the end, exactly what the convolution's
own zero padding gives the same sequence alone, and appending padding never changes a real token's
features (up to float rounding). Padded rows still compute something; nothing reads them.

Pooling (the mean over real tokens), the input checks and reverse-complement invariance (DNA) come
from the token encoders' common part (``selfsup.backbones.token_encoder``).

Layout (measured, see ``ByteNetBlock``): activations stay (B, L, D) with ``nn.Linear`` and
``nn.LayerNorm`` on the channel axis, transposed around ``nn.Conv1d`` only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.backbones.token_encoder import (
    TokenEncoder, TokenEncoderOptions, TokenInput, init_token_weights, register_preset,
)
from selfsup.errors import ConfigError

def dilation_schedule(depth: int, max_dilation: int) -> tuple[int, ...]:
    """CARP's dilations: 1, 2, 4, … doubling per block up to ``max_dilation`` (a power of two),
    then from 1 again; ``depth`` of them.

    >>> dilation_schedule(7, 4)
    (1, 2, 4, 1, 2, 4, 1)
    """
    cycle = max_dilation.bit_length()  # 1, 2, …, max_dilation: log2(max_dilation) + 1 values
    return tuple(2 ** (layer % cycle) for layer in range(depth))


# ----------------------------------------------------------------------------------------------
# the block


class ByteNetBlock(nn.Module):
    """x + W_out(GELU(LN(conv(GELU(LN(W_in(GELU(LN(x))))))))) on (B, L, dim) activations, with a
    dilated convolution on ``dim // 2`` channels (CARP's "slim" bottleneck).

    Layout. Forward + backward on CPU (2 threads), batch 64 × 256 tokens, bytenet-small (dim 128,
    8 blocks), best of 5–6 steps each (the machine was shared, so medians were noisy):
    (B, L, D) with Linear/LayerNorm and a transpose around nn.Conv1d: 1.30–1.49 s/step,
    11–12.6k tokens/s; the same with a contiguous copy before the conv: 1.39–1.45 s; (B, L, D) with
    the dilated conv as one GEMM over k shifted copies (im2col): 1.52–1.70 s; (B, D, L) with 1×1
    Conv1d and a channel LayerNorm (transposes around F.layer_norm): 2.60–2.74 s, ~6k tokens/s;
    (B, D, L) with a hand-written channel LayerNorm: 3.1 s. The time goes mostly to the
    element-wise ops (LayerNorm, GELU and their gradients) and the convolution's backward, so
    keeping the channel axis last, where LayerNorm's kernel wants it, wins, and the simplest such
    layout (the first) is used. Measured with a throwaway script (not in the repository) that
    builds each layout's 8-block stack and times ``loss.backward()`` of a mean-square loss.
    """

    def __init__(self, dim: int, kernel_size: int, dilation: int, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = dim // 2
        self.dropout = dropout
        self.in_norm = nn.LayerNorm(dim)
        self.w_in = nn.Linear(dim, hidden)
        self.conv_norm = nn.LayerNorm(hidden)
        # "same" padding: (k − 1)·r / 2 zeros each side (k odd), so the length is kept.
        self.conv = nn.Conv1d(hidden, hidden, kernel_size, dilation=dilation,
                              padding=dilation * (kernel_size - 1) // 2)
        self.out_norm = nn.LayerNorm(hidden)
        self.w_out = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """x (B, L, dim); padding (B, L, 1) bool, True on padded positions."""
        h = F.gelu(self.conv_norm(self.w_in(F.gelu(self.in_norm(x)))))
        # Padded positions must read as the zeros past a sequence's end (module docstring).
        # masked_fill, not a multiply: it zeroes even a non-finite value on a padded row.
        h = h.masked_fill(padding, 0.0)
        h = self.conv(h.transpose(1, 2)).transpose(1, 2)
        h = self.w_out(F.gelu(self.out_norm(h)))
        return x + F.dropout(h, self.dropout, self.training)


# ----------------------------------------------------------------------------------------------
# the encoder


@dataclass
class ByteNetOptions(TokenEncoderOptions):
    """ByteNet options (the ``backbone`` config section); defaults: ``bytenet-tiny``.

    vocab_size, pad_id and tokenizer come from the tokeniser (``TokenEncoderOptions``).
    """

    dim: int = 32  # the residual width d (even: the convolutions run on d / 2 channels)
    depth: int = 2  # blocks
    kernel_size: int = 5  # odd, ≥ 3 (k = 1 would see no neighbours)
    max_dilation: int = 8  # a power of two; dilations double per block up to it, then restart
    dropout: float = 0.0  # on each block's residual branch


class ByteNetEncoder(TokenEncoder):
    """Token ids (B, L) → pooled features (B, ``out_dim``); see the module docstring."""

    def __init__(self, options: Optional[ByteNetOptions] = None) -> None:
        o = dataclasses.replace(options or ByteNetOptions())
        super().__init__(o)
        _check_options(o)
        self.out_dim = o.dim
        self.dilations = dilation_schedule(o.depth, o.max_dilation)
        self.token_embedding = nn.Embedding(o.vocab_size, o.dim, padding_idx=o.pad_id)
        self.blocks = nn.ModuleList(ByteNetBlock(o.dim, o.kernel_size, dilation, o.dropout)
                                    for dilation in self.dilations)
        self.final_norm = nn.LayerNorm(o.dim)
        self.preset = "bytenet-tiny"
        self._init_weights()
        self._finish_init()

    def _init_weights(self) -> None:
        """Truncated normal, std 0.02, for the embedding, projections and convolutions; zero
        biases; LayerNorms at (1, 0); the ``<pad>`` embedding row zero.

        Not CARP's (PyTorch's defaults: embedding N(0, 1), convolutions Kaiming-uniform): the
        masked-LM head ties its output matrix to the token embedding, and an N(0, 1) embedding
        would start the logits of LayerNorm'd features at a spread of about √d (≈ 11 at d = 128),
        far from the uniform guess. The Transformer's init starts them near uniform and keeps the
        token encoders alike; the pre-norm blocks re-normalise their inputs, so the small residual
        stream is no obstacle.
        """
        init_token_weights(self, self.pad_id)

    @property
    def receptive_field(self) -> int:
        """How many tokens one output position sees, centred on it: 1 + (k − 1)·Σ dilations."""
        return 1 + (self.options.kernel_size - 1) * sum(self.dilations)

    def forward_tokens(self, ids: TokenInput, attention_mask: Optional[torch.Tensor] = None
                       ) -> torch.Tensor:
        """Per-token features (B, L, dim) after the final LayerNorm.

        ids: (B, L) int64, or a ``TokenBatch`` (ids and mask). attention_mask: (B, L) bool, True on
        real tokens; None: ``ids != pad_id``. Rows of padded positions compute something that no
        real position reads.
        """
        ids, attention_mask = self._inputs(ids, attention_mask)
        # One (B, L, 1) mask for every block. Applied even when nothing is padding: checking that
        # would cost a host-device sync per forward on GPUs, and the masked_fill is cheap.
        padding = ~attention_mask.unsqueeze(-1)
        x = self.token_embedding(ids)
        for block in self.blocks:
            x = block(x, padding)
        return self.final_norm(x)


# ----------------------------------------------------------------------------------------------
# checks and presets


def _check_options(o: ByteNetOptions) -> None:
    if min(o.dim, o.depth) < 1:
        raise ConfigError(f"backbone.dim ({o.dim}) and depth ({o.depth}) must be positive")
    if o.dim % 2:
        raise ConfigError(f"backbone.dim={o.dim} must be even: the convolutions run on dim / 2 "
                          "channels")
    if o.kernel_size < 3 or o.kernel_size % 2 == 0:
        raise ConfigError(
            f"backbone.kernel_size must be odd and at least 3, got {o.kernel_size}: an even kernel "
            "has no centre (the output would shift), and 1 sees no neighbours"
        )
    if o.max_dilation < 1 or o.max_dilation & (o.max_dilation - 1):
        raise ConfigError(f"backbone.max_dilation must be a power of two (1, 2, 4, …, CARP: 128), "
                          f"got {o.max_dilation}")
    if not 0.0 <= o.dropout < 1.0:
        raise ConfigError(f"backbone.dropout must be in [0, 1), got {o.dropout}")


@dataclass
class ByteNetSmallOptions(ByteNetOptions):
    """The CPU budget model: ~0.3M parameters in the blocks, dilations 1 2 4 8 1 2 4 8 (receptive
    field 121 tokens), ~11–12k tokens/s forward + backward on 2 CPU cores (ByteNetBlock), so about
    10M tokens in a 20-minute budget.

    The dilation costs nothing (the same 8 blocks with dilations up to 128: 1.52 s/step against
    1.44 s, within the noise), so max_dilation is a modelling choice: up to 8, the 8 blocks make two
    full passes over the scales, each token sees ±60 neighbours, and little of the reach falls
    into the padding of short crops; raise it for long sequences.
    """

    dim: int = 128
    depth: int = 8
    kernel_size: int = 5
    max_dilation: int = 8


@dataclass
class Carp600kOptions(ByteNetOptions):
    """CARP-600k's shape: d_model 128, convolutions on d_h = 64 channels (CARP's slim=True), 16
    blocks, kernel 5, dilations up to r = 128 (receptive field 1 + 4·2·255 = 2041 tokens).

    The blocks match CARP's parameter for parameter (602k). CARP embeds tokens at a separate
    width d_embedding and projects them up to d_model with a 1×1 convolution, and its LM decoder
    is untied; here tokens are embedded at d_model directly, and the masked-LM head ties to that
    embedding."""

    dim: int = 128
    depth: int = 16
    kernel_size: int = 5
    max_dilation: int = 128


bytenet_tiny = register_preset(
    "bytenet-tiny", ByteNetEncoder, ByteNetOptions,
    "dilated residual CNN (ByteNet/CARP), 32-d, 2 blocks, kernel 5 (tests); needs vocab_size")
bytenet_small = register_preset(
    "bytenet-small", ByteNetEncoder, ByteNetSmallOptions,
    "dilated residual CNN (ByteNet/CARP), 128-d, 8 blocks, kernel 5, dilations to 8 (CPU "
    "pretraining); needs vocab_size")
carp_600k = register_preset(
    "carp-600k", ByteNetEncoder, Carp600kOptions,
    "dilated residual CNN shaped like CARP-600k: 128-d, 16 blocks, kernel 5, dilations to 128; "
    "needs vocab_size")
