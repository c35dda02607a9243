"""View recipes for token sequences, registered in ``VIEW_RECIPES`` next to the image recipes.

The image recipes' contract carries over with token ids in place of pixels. A sequence recipe is a
factory ``(tokenizer, options) -> SequenceViewMaker`` (``options``: the ``views`` config section,
validated by the recipe's dataclass) marked ``modality = "tokens"``; ``make_sequence_views``
builds one. A ``SequenceViewMaker`` takes a right-padded batch on the training device — a
``TokenBatch`` or its (B, L) int64 ids — and a ``torch.Generator`` on that device, and returns a
list of (B, L) int64 tensors in the tokenisers' layout, row i of each from row i of the batch.
Attention masks are not passed along: every view keeps ``<pad>`` exactly on the padding, so a mask
is always ``ids != tokenizer.pad_id``. The views are plain tensors, so whatever slices image views
into micro-batches (``tensor_split`` along the batch) slices these too.

* ``mlm``: [inputs, labels], BERT's masking (``selfsup.views.sequence.bert_mask``).
* ``tokens``: the ids unchanged (next-token prediction needs no augmentation).
* ``dna-contrastive``, ``protein-contrastive``, ``text-contrastive``: two views of each sequence
  by crop, jitter, reverse complement (DNA), substitution noise and masking, each applied to a
  sample with its own probability; one view maker, with each modality's defaults
  (``CONTRASTIVE_VIEW_DEFAULTS``). A new alphabet adds its own with
  ``register_contrastive_recipe(name, defaults, help)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Union

import torch

from selfsup.config import build_options, check_number
from selfsup.errors import ConfigError, DataError
from selfsup.registry import VIEW_RECIPES
from selfsup.tokenize.base import TokenBatch, Tokenizer
from selfsup.views.sequence import (
    bert_mask, content_mask, random_crop, random_mask, random_shift, reverse_complement, substitute,
)

TOKENS = "tokens"  # the ``modality`` of sequence recipes

TokenInput = Union[torch.Tensor, TokenBatch]


class SequenceViewMaker:
    """Turns a batch of token ids into ``num_views`` (B, L) int64 tensors (see the module
    docstring). The same generator state gives the same views."""

    num_views: int = 1

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, batch: TokenInput, generator: torch.Generator) -> list[torch.Tensor]:
        raise NotImplementedError

    def _ids(self, batch: TokenInput) -> torch.Tensor:
        ids = batch.ids if isinstance(batch, TokenBatch) else batch
        if not torch.is_tensor(ids) or ids.ndim != 2 or ids.dtype != torch.int64:
            shape = tuple(ids.shape) if torch.is_tensor(ids) else type(ids).__name__
            raise DataError(f"{type(self).__name__} takes a TokenBatch or (B, L) int64 token ids, "
                            f"got {getattr(ids, 'dtype', '')} {shape}")
        return ids


def sequence_recipe(name: str, help: str) -> Callable:
    """Decorator: register a sequence recipe factory under ``name``, marked as one."""

    def add(factory: Callable) -> Callable:
        factory.modality = TOKENS  # type: ignore[attr-defined]
        return VIEW_RECIPES.register(name, help)(factory)

    return add


def is_sequence_recipe(name: str) -> bool:
    """Whether the registered recipe ``name`` makes views of token ids."""
    return getattr(VIEW_RECIPES.get(name), "modality", None) == TOKENS


def make_sequence_views(recipe_name: str, tokenizer: Tokenizer,
                        options: dict[str, Any] | None = None) -> SequenceViewMaker:
    """Build the registered sequence recipe ``recipe_name`` for ``tokenizer``'s ids with
    ``options`` (the ``views`` config section; unknown keys raise ConfigError naming the key)."""
    if not is_sequence_recipe(recipe_name):
        raise ConfigError(f"view recipe {recipe_name!r} makes image views, not token views; "
                          f"sequence recipes: {', '.join(sequence_recipe_names())}")
    return VIEW_RECIPES.get(recipe_name)(tokenizer, dict(options or {}))


def sequence_recipe_names() -> list[str]:
    return [name for name in VIEW_RECIPES.names() if is_sequence_recipe(name)]


def _where_drawn(p: float, changed: torch.Tensor, unchanged: torch.Tensor,
                 generator: torch.Generator) -> torch.Tensor:
    """Per sample (row): ``changed`` with probability ``p``, else ``unchanged``."""
    chosen = torch.rand(len(changed), 1, generator=generator, device=changed.device) < p
    return torch.where(chosen, changed, unchanged)


# ----------------------------------------------------------------------------------------------
# masked modelling


@dataclass
class MaskedTokenOptions:
    """BERT's rule (Devlin et al. 2019), kept by ESM: 15% of ordinary tokens chosen; of those
    80% → <mask>, 10% → a random ordinary token, 10% unchanged."""

    rate: float = 0.15
    mask_fraction: float = 0.8
    random_fraction: float = 0.1


class MaskedTokenViews(SequenceViewMaker):
    """[inputs, labels]: BERT-masked ids and the original ids at chosen positions (-100 elsewhere)."""

    num_views = 2

    def __init__(self, tokenizer: Tokenizer, options: MaskedTokenOptions) -> None:
        super().__init__(tokenizer)
        self.options = options

    def __call__(self, batch: TokenInput, generator: torch.Generator) -> list[torch.Tensor]:
        o = self.options
        masked = bert_mask(self._ids(batch), self.tokenizer, generator, o.rate, o.mask_fraction,
                           o.random_fraction)
        return [masked.inputs, masked.labels]


@sequence_recipe("mlm", "tokens: [inputs, labels] by BERT's 15% / 80-10-10 masking; options rate, "
                        "mask_fraction, random_fraction")
def masked_token_views(tokenizer: Tokenizer, options: dict[str, Any]) -> SequenceViewMaker:
    opts = build_options(MaskedTokenOptions, options, "views")
    check_number(opts.rate, "views.rate", 0, 1)
    check_number(opts.mask_fraction, "views.mask_fraction", 0, 1)
    check_number(opts.random_fraction, "views.random_fraction", 0, 1)
    return MaskedTokenViews(tokenizer, opts)


# ----------------------------------------------------------------------------------------------
# plain tokens


@dataclass
class PlainTokenOptions:
    num_views: int = 1


class PlainTokenViews(SequenceViewMaker):
    """``num_views`` copies of the ids as they are."""

    def __init__(self, tokenizer: Tokenizer, num_views: int) -> None:
        super().__init__(tokenizer)
        self.num_views = num_views

    def __call__(self, batch: TokenInput, generator: torch.Generator) -> list[torch.Tensor]:
        ids = self._ids(batch)
        return [ids] + [ids.clone() for _ in range(self.num_views - 1)]


@sequence_recipe("tokens", "tokens: the ids unchanged (next-token prediction); option num_views")
def plain_token_views(tokenizer: Tokenizer, options: dict[str, Any]) -> SequenceViewMaker:
    opts = build_options(PlainTokenOptions, options, "views")
    if isinstance(opts.num_views, bool) or not isinstance(opts.num_views, int) or opts.num_views < 1:
        raise ConfigError(f"views.num_views must be an integer ≥ 1, got {opts.num_views!r}")
    return PlainTokenViews(tokenizer, opts.num_views)


# ----------------------------------------------------------------------------------------------
# contrastive views: one view maker, defaults per modality


@dataclass
class ContrastiveViewOptions:
    """Each view of a sequence, in this order: a random window (crop), jitter (shift), the reverse
    complement (DNA only), substitution noise, masking; each applied to a sample with its
    ``*_prob``. The defaults here are DNA's (``dna-contrastive``), for 150-bp reads: a crop keeps
    ≥ 60% of the read (≥ 90 bp, still unique within a 16S gene); a shift drops up to 10 bases from
    the ends; half the views are the other strand, so a pair is on opposite strands half the time
    and the encoder must learn strand symmetry; 1% substitutions (on top of the reads' own)
    resemble short-read sequencer errors; masking hides 10% of the bases of half the views.
    Proteins and text change some of them (``CONTRASTIVE_VIEW_DEFAULTS``).
    """

    crop_prob: float = 0.5
    crop_min_fraction: float = 0.6  # shortest window, as a share of the sequence
    shift_prob: float = 0.5
    max_shift: int = 10  # tokens dropped from the two ends together
    rc_prob: float = 0.5
    substitution_prob: float = 1.0
    substitution_rate: float = 0.01  # per letter, among the views that get noise
    mask_prob: float = 0.5
    mask_rate: float = 0.1


# Each modality's changes to ContrastiveViewOptions' (DNA) defaults, and why:
CONTRASTIVE_VIEW_DEFAULTS: dict[str, dict[str, Any]] = {
    "dna": {},
    # Proteins: two windows of at least half the chain each (domains recur within a family, and a
    # window of half a protein still carries its composition and most of its motifs); 5 %
    # substitutions, about the rate between close homologues; 15 % masking as in ESM's MLM. No
    # strands, no jitter (a crop already moves the ends).
    "protein": {"crop_prob": 1.0, "crop_min_fraction": 0.5, "shift_prob": 0.0, "rc_prob": 0.0,
                "substitution_rate": 0.05, "mask_prob": 1.0, "mask_rate": 0.15},
    # Text: two spans of at least a third of the post (a topic shows in any part of it), 5 %
    # random-token substitutions and 10 % masking, word dropout in all but name.
    "text": {"crop_prob": 1.0, "crop_min_fraction": 0.3, "shift_prob": 0.0, "rc_prob": 0.0,
             "substitution_rate": 0.05, "mask_prob": 1.0, "mask_rate": 0.1},
}


class ContrastiveViews(SequenceViewMaker):
    """Two independently augmented views of every sequence (see ``ContrastiveViewOptions``)."""

    num_views = 2

    def __init__(self, tokenizer: Tokenizer, options: ContrastiveViewOptions) -> None:
        super().__init__(tokenizer)
        self.options = options

    def __call__(self, batch: TokenInput, generator: torch.Generator) -> list[torch.Tensor]:
        ids = self._ids(batch)
        both = self.augment(torch.cat([ids, ids]), generator)  # both views as one batch
        return list(both.chunk(2))

    def augment(self, ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One augmented view of each row of ``ids``; the width stays the same."""
        o, tok = self.options, self.tokenizer
        if o.crop_prob > 0:
            available = content_mask(ids, tok).sum(dim=1)
            share = o.crop_min_fraction + (1 - o.crop_min_fraction) * torch.rand(
                len(ids), generator=generator, device=ids.device)
            window = (available * share).ceil().long().clamp(min=1)
            keep = torch.rand(len(ids), generator=generator, device=ids.device) >= o.crop_prob
            ids = random_crop(ids, tok, torch.where(keep, available, window), generator)
        if o.shift_prob > 0 and o.max_shift > 0:
            ids = _where_drawn(o.shift_prob, random_shift(ids, tok, o.max_shift, generator), ids,
                               generator)
        if o.rc_prob > 0:
            ids = _where_drawn(o.rc_prob, reverse_complement(ids, tok), ids, generator)
        if o.substitution_prob > 0 and o.substitution_rate > 0:
            noisy = substitute(ids, tok, o.substitution_rate, generator)
            ids = _where_drawn(o.substitution_prob, noisy, ids, generator)
        if o.mask_prob > 0 and o.mask_rate > 0:
            masked, _ = random_mask(ids, tok, o.mask_rate, generator)
            ids = _where_drawn(o.mask_prob, masked, ids, generator)
        return ids


def contrastive_views(defaults: dict[str, Any], tokenizer: Tokenizer, options: dict[str, Any]
                      ) -> SequenceViewMaker:
    """Contrastive views of ``tokenizer``'s ids: ``ContrastiveViewOptions`` with an alphabet's
    ``defaults`` changed, then the user's ``options`` over them."""
    opts = build_options(ContrastiveViewOptions, {**defaults, **options}, "views")
    for key in ("crop_prob", "crop_min_fraction", "shift_prob", "rc_prob", "substitution_prob",
                "substitution_rate", "mask_prob", "mask_rate"):
        check_number(getattr(opts, key), f"views.{key}", 0, 1)
    if opts.crop_min_fraction == 0:
        raise ConfigError("views.crop_min_fraction must be above 0 (a window keeps at least one token)")
    if isinstance(opts.max_shift, bool) or not isinstance(opts.max_shift, int) or opts.max_shift < 0:
        raise ConfigError(f"views.max_shift must be an integer ≥ 0, got {opts.max_shift!r}")
    if opts.rc_prob > 0 and tokenizer.complement_ids is None:
        raise ConfigError(f"views.rc_prob={opts.rc_prob}: the {tokenizer.name} tokeniser has no "
                          "reverse complement; set views.rc_prob=0 for non-DNA data")
    return ContrastiveViews(tokenizer, opts)


def contrastive_recipe_name(modality: str) -> str:
    """The name of ``modality``'s contrastive recipe (what ``seq-contrastive`` uses by default)."""
    return f"{modality}-contrastive"


def register_contrastive_recipe(modality: str, defaults: dict[str, Any], help: str) -> None:
    """Register ``modality``'s contrastive recipe: ``ContrastiveViews`` with ``defaults`` (a new
    alphabet calls this from its own file)."""
    sequence_recipe(contrastive_recipe_name(modality), help)(
        lambda tokenizer, options: contrastive_views(defaults, tokenizer, options))


for _modality, _help in (
        ("dna", "tokens: two views of each DNA read by crop, shift, reverse complement, "
                "substitutions, masking (each with a probability)"),
        ("protein", "tokens: two views of each protein: windows of ≥ half the chain, "
                    "5% substitutions, 15% masking"),
        ("text", "tokens: two views of each text: spans of ≥ a third, 5% random tokens, "
                 "10% masking")):
    register_contrastive_recipe(_modality, CONTRASTIVE_VIEW_DEFAULTS[_modality], _help)
