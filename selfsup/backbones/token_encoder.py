"""What every token backbone shares: ids in, one feature vector per sequence out.

A token encoder (the Transformer, the dilated CNN, the bag of n-grams) takes right-padded token ids
(B, L) — or a ``TokenBatch`` — and returns pooled features (B, ``out_dim``) from ``forward``, or
per-token features (B, L, ``out_dim``) from ``forward_tokens`` for the masked-token head. The
subclasses write ``forward_tokens``; this class holds the rest, once:

* the inputs' checks and the default mask (``ids != pad_id``: True on real tokens);
* pooling: the mean over real tokens, so padding never reaches a sequence's features;
* reverse-complement invariance for DNA (``make_rc_invariant``): ``forward`` becomes the strand
  average ½·(pool f(x) + pool f(rc x)); since rc(rc x) = x, a read and its reverse complement get
  identical features by construction. The average keeps a one-strand encoder's scale and sends
  gradient through both strands;
* the config a checkpoint stores (``config``) and the registered presets (``register_preset``).

``contextual`` says whether a token's features depend on the tokens around it. Masked-token
modelling needs that (a context-free token feature can only learn the tokens' frequencies), so
``as_token_encoder(..., contextual=True)`` refuses the others with the reason.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from selfsup.errors import ConfigError, DataError
from selfsup.registry import BACKBONES
from selfsup.tokenize import make_tokenizer
from selfsup.tokenize.base import TokenBatch, Tokenizer
from selfsup.views.sequence import reverse_complement

TokenInput = Union[torch.Tensor, TokenBatch]


@dataclass
class TokenEncoderOptions:
    """Options every token backbone has; vocab_size, pad_id and tokenizer come from the data's
    tokeniser (``build_backbone`` sets them from the modality's tokeniser; vocab_size 0 is an
    error until it is set)."""

    vocab_size: int = 0  # the tokeniser's vocabulary size (tokenizer.vocab_size)
    pad_id: int = 1  # the tokeniser's <pad> id (1 in every selfsup tokeniser, ESM's layout)
    rc_invariant: bool = False  # strand-averaged features (DNA); needs tokenizer
    tokenizer: Any = None  # the data tokeniser's config(), e.g. {"name": "dna", "k": 1}


class TokenEncoder(nn.Module):
    """Token ids (B, L) → pooled features (B, ``out_dim``); see the module docstring.

    Subclasses set ``out_dim`` and ``token_embedding`` (the LM head may tie to it), write
    ``forward_tokens``, and call ``_finish_init()`` last in ``__init__``."""

    contextual: bool = True  # a token's features see its neighbours (masked modelling needs it)
    preset: str = ""
    out_dim: int
    token_embedding: nn.Embedding

    def __init__(self, options: TokenEncoderOptions) -> None:
        super().__init__()
        self.options = options
        check_token_options(options)
        self.pad_id, self.vocab_size = options.pad_id, options.vocab_size
        self.strand_tokenizer: Optional[Tokenizer] = None  # set by make_rc_invariant

    def _finish_init(self) -> None:
        o = self.options
        if o.rc_invariant:
            if not isinstance(o.tokenizer, dict):
                raise ConfigError(
                    "backbone.rc_invariant needs backbone.tokenizer, the DNA tokeniser's config "
                    f"(e.g. {{name: dna, k: 1}}), got {o.tokenizer!r}"
                )
            self.make_rc_invariant(make_tokenizer(**o.tokenizer))

    # ------------------------------------------------------------------ configuration

    @property
    def max_tokens(self) -> Optional[int]:
        """The longest input (tokens, specials included) the encoder takes; None: any."""
        return None

    @property
    def rc_invariant(self) -> bool:
        return self.strand_tokenizer is not None

    def make_rc_invariant(self, tokenizer: Tokenizer) -> None:
        """Make ``forward`` reverse-complement invariant (see the module docstring), with the
        reverse complement of ``tokenizer``, the DNA tokeniser of the data."""
        if tokenizer.complement_ids is None or tokenizer.vocab_size != self.vocab_size:
            raise ConfigError(
                f"a reverse-complement-invariant encoder needs the DNA tokeniser of its "
                f"{self.vocab_size}-token vocabulary; got the {tokenizer.name} tokeniser with "
                f"{tokenizer.vocab_size} tokens"
                + ("" if tokenizer.complement_ids is not None else " and no reverse complement")
            )
        self.strand_tokenizer = tokenizer
        self.options.rc_invariant, self.options.tokenizer = True, tokenizer.config()

    def config(self) -> dict[str, Any]:
        """A ``backbone`` config section that rebuilds this encoder: the preset's name and every
        option spelled out, including reverse-complement invariance set after construction."""
        return {"name": self.preset, **dataclasses.asdict(self.options)}

    # ------------------------------------------------------------------ forward passes

    def forward_tokens(self, ids: TokenInput, attention_mask: Optional[torch.Tensor] = None
                       ) -> torch.Tensor:
        """Per-token features (B, L, out_dim); padded rows compute something nobody reads."""
        raise NotImplementedError

    def pool_tokens(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L, D) token features → (B, D): the mean over real tokens."""
        weights = attention_mask.unsqueeze(-1).to(tokens.dtype)
        return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)

    def forward(self, ids: TokenInput, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Pooled features (B, D) of ``ids`` (or a ``TokenBatch``); the mask defaults to
        ``ids != pad_id``. Strand-averaged when the encoder is reverse-complement invariant."""
        ids, attention_mask = self._inputs(ids, attention_mask)
        pooled = self.pool_tokens(self.forward_tokens(ids, attention_mask), attention_mask)
        if not self.rc_invariant:
            return pooled
        other = reverse_complement(ids, self.strand_tokenizer)
        other_pooled = self.pool_tokens(self.forward_tokens(other, attention_mask), attention_mask)
        return (pooled + other_pooled) / 2

    def _inputs(self, ids: TokenInput, attention_mask: Optional[torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask) from ids or a TokenBatch, checked; the mask defaults to ids != pad_id."""
        if isinstance(ids, TokenBatch):
            ids, attention_mask = ids.ids, ids.attention_mask
        if ids.ndim != 2 or ids.dtype != torch.int64:
            raise DataError(f"a token encoder takes (B, L) int64 token ids, got {ids.dtype} "
                            f"{tuple(ids.shape)}; make them with tokenizer.encode_batch")
        if attention_mask is None:
            attention_mask = ids != self.pad_id
        elif attention_mask.shape != ids.shape or attention_mask.dtype != torch.bool:
            raise DataError(f"attention_mask must be (B, L) bool like the ids {tuple(ids.shape)}, "
                            f"got {attention_mask.dtype} {tuple(attention_mask.shape)}")
        return ids, attention_mask


# the token encoders' weight scale (BERT's, ESM's): a tied LM head's logits start near uniform
INIT_STD = 0.02


def init_token_weights(module: nn.Module, pad_id: Optional[int] = None) -> None:
    """The token encoders' init: every Linear, Conv1d and Embedding weight from a normal of std
    ``INIT_STD`` truncated at ±2 std, zero biases, and the ``pad_id`` embedding row zero."""
    for part in module.modules():
        if isinstance(part, (nn.Linear, nn.Conv1d, nn.Embedding)):
            nn.init.trunc_normal_(part.weight, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD)
        if isinstance(part, (nn.Linear, nn.Conv1d)) and part.bias is not None:
            nn.init.zeros_(part.bias)
    embedding = getattr(module, "token_embedding", None)
    if pad_id is not None and embedding is not None:
        with torch.no_grad():
            embedding.weight[pad_id].zero_()


def check_token_options(o: TokenEncoderOptions) -> None:
    """ConfigError for an unset vocabulary or a padding id outside it."""
    if o.vocab_size < 1:
        raise ConfigError(
            "backbone.vocab_size is not set: token backbones need the tokeniser's vocabulary size "
            "(tokenizer.vocab_size; build_backbone sets it from the data's tokeniser)"
        )
    if not 0 <= o.pad_id < o.vocab_size:
        raise ConfigError(f"backbone.pad_id={o.pad_id} is not an id of a {o.vocab_size}-token vocabulary")


def token_backbone_names() -> list[str]:
    """The registered backbones that read token ids."""
    return [name for name in BACKBONES.names()
            if issubclass(getattr(BACKBONES.get(name), "options", object), TokenEncoderOptions)]


def as_token_encoder(encoder: nn.Module, method: str, contextual: bool = False) -> TokenEncoder:
    """``encoder`` itself when it is a token encoder (and, with ``contextual``, one whose token
    features see their neighbours); else a ConfigError naming ``method`` and the choices."""
    if not isinstance(encoder, TokenEncoder):
        raise ConfigError(f"{method} needs a token backbone ({', '.join(token_backbone_names())}), "
                          f"got {type(encoder).__name__}")
    if contextual and not encoder.contextual:
        contextual_names = [name for name in token_backbone_names()
                            if getattr(BACKBONES.get(name), "encoder_class", TokenEncoder).contextual]
        raise ConfigError(
            f"{method} predicts hidden tokens from their context, but the {encoder.preset} "
            "backbone is not contextual (a bag of n-grams: no position's features carry the "
            "sequence around it to a hidden token); use a "
            f"contextual backbone ({', '.join(contextual_names)}) or a contrastive method "
            "(seq-contrastive)"
        )
    return encoder


def register_preset(name: str, encoder_class: type[TokenEncoder], options_class: type,
                    help: str) -> Callable[..., TokenEncoder]:
    """Register a backbone factory ``name`` building ``encoder_class`` whose option defaults are
    ``options_class``'s (a preset: the same encoder at one size)."""

    def factory(in_channels: int = 0, options: Optional[TokenEncoderOptions] = None) -> TokenEncoder:
        # in_channels is part of the image backbones' factory signature; tokens have none.
        encoder = encoder_class(dataclasses.replace(options or options_class()))
        encoder.preset = name
        return encoder

    factory.options = options_class  # type: ignore[attr-defined]
    factory.encoder_class = encoder_class  # type: ignore[attr-defined]
    factory.__name__ = name.replace("-", "_")
    return BACKBONES.register(name, help)(factory)
