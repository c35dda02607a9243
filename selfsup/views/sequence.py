"""Batched views of token sequences, made on the device the token ids live on.

Every operation takes a (B, L) int64 batch laid out as the tokenisers make it — ``<cls>``, the
sequence's tokens, ``<eos>``, then ``<pad>`` up to L — and returns a batch in the same layout, on
the same device. The sequence's own tokens (everything but ``<cls>``, ``<eos>`` and ``<pad>``;
``content_mask``) must be contiguous, which every view keeps true. Random operations take a
``torch.Generator`` on that device and draw all their numbers in a few calls; nothing loops over
samples in Python, and nothing waits for the device.

* ``reverse_complement``: the other strand of DNA (reverse the tokens, swap A↔T and C↔G).
* ``random_crop`` / ``random_shift``: a random window of the sequence (jitter).
* ``substitute``: substitution noise, like sequencing errors.
* ``random_mask``: hide a share of the tokens behind ``<mask>``.
* ``bert_mask``: BERT's masked-modelling corruption, returning (inputs, labels).

For overlapping k-mer tokens, masking grows into spans of k tokens so masked k-mers cannot be read
off their neighbours (see ``selfsup.tokenize.dna``); substitution noise changes letters, not tokens:
the k-mers are read back into their letter string, the letters changed, and the string k-merised
again, so one changed letter changes the k tokens that hold it, as a real sequencing error does.
"""

from __future__ import annotations

from typing import NamedTuple, Union

import torch

from selfsup.errors import ConfigError, DataError
from selfsup.tokenize.base import IGNORE_LABEL, Tokenizer
from selfsup.tokenize.dna import expand_kmer_mask
from selfsup.views.image import same_device

__all__ = [
    "MaskedTokens", "attention_mask", "bert_mask", "content_mask", "maskable_mask",
    "random_crop", "random_mask", "random_shift", "reverse_complement", "substitute",
]

Length = Union[int, torch.Tensor]  # one for the batch, or a (B,) tensor, one per sequence


class MaskedTokens(NamedTuple):
    """A masked-modelling batch: corrupted ``inputs`` (B, L) and ``labels`` (B, L), the original
    id at chosen positions and ``IGNORE_LABEL`` (-100) everywhere else."""

    inputs: torch.Tensor
    labels: torch.Tensor


# ----------------------------------------------------------------------------------------------
# which positions are what


def attention_mask(ids: torch.Tensor, tokenizer: Tokenizer) -> torch.Tensor:
    """(B, L) bool, True on every token but ``<pad>``."""
    return ids != tokenizer.pad_id


def content_mask(ids: torch.Tensor, tokenizer: Tokenizer) -> torch.Tensor:
    """(B, L) bool, True on the sequence's own tokens (not ``<cls>``, ``<eos>`` or ``<pad>``)."""
    return (ids != tokenizer.cls_id) & (ids != tokenizer.eos_id) & (ids != tokenizer.pad_id)


def maskable_mask(ids: torch.Tensor, tokenizer: Tokenizer) -> torch.Tensor:
    """(B, L) bool, True on ordinary tokens: the ones masking may choose (no special, no pad)."""
    return ~tokenizer.table("special", ids.device)[ids]


# ----------------------------------------------------------------------------------------------
# strand and window


def reverse_complement(ids: torch.Tensor, tokenizer: Tokenizer) -> torch.Tensor:
    """The reverse complement of each sequence: its tokens reversed and complemented (A↔T, C↔G,
    N stays N; for k-mers, each k-mer's reverse complement), ``<cls>``, ``<eos>`` and padding
    where they were. Applying it twice gives the input back."""
    _check_ids(ids)
    complement = tokenizer.table("complement", ids.device)
    content = content_mask(ids, tokenizer)
    first = content.int().argmax(dim=1, keepdim=True)  # content starts here (0 if none)
    last = first + content.sum(dim=1, keepdim=True) - 1
    positions = torch.arange(ids.shape[1], device=ids.device)
    source = torch.where(content, first + last - positions, positions)
    return complement[ids.gather(1, source)]


def random_crop(ids: torch.Tensor, tokenizer: Tokenizer, length: Length,
                generator: torch.Generator) -> torch.Tensor:
    """A window of ``length`` consecutive tokens of each sequence at a uniformly random start.

    ``length`` is an int or a (B,) tensor; a sequence shorter than it is kept whole. Rows keep
    their ``<cls>`` and ``<eos>``; the result is ``length`` + specials wide (an int ``length``) or
    as wide as the input (a tensor), padded on the right.
    """
    _check_ids(ids, generator)
    batch, width = ids.shape
    content = content_mask(ids, tokenizer)
    available = content.sum(dim=1)
    first = content.int().argmax(dim=1)
    lengths = torch.minimum(torch.as_tensor(length, device=ids.device), available).clamp(min=0)
    room = available - lengths  # the last possible start
    start = (_rand(generator, batch) * (room + 1)).long().clamp(max=room)
    has_cls = (ids[:, 0] == tokenizer.cls_id).long()
    has_eos = (ids == tokenizer.eos_id).any(dim=1)
    if isinstance(length, int):
        width = min(width, length + tokenizer.num_special_tokens)
    positions = torch.arange(width, device=ids.device)
    offset = positions - has_cls[:, None]  # index within the window
    in_window = (offset >= 0) & (offset < lengths[:, None])
    source = (first + start)[:, None] + offset
    window = ids.gather(1, source.clamp(0, ids.shape[1] - 1))
    out = torch.where(in_window, window, tokenizer.pad_id)
    out = torch.where((positions == 0) & (has_cls[:, None] == 1), tokenizer.cls_id, out)
    eos_at = (positions == (has_cls + lengths)[:, None]) & has_eos[:, None]
    return torch.where(eos_at, tokenizer.eos_id, out)


def random_shift(ids: torch.Tensor, tokenizer: Tokenizer, max_shift: int,
                 generator: torch.Generator) -> torch.Tensor:
    """Jitter: drop ``max_shift`` tokens in all from the two ends of each sequence, a uniformly
    random number of them from the start, so the sequence shifts by 0 … ``max_shift`` positions.
    A sequence of ``max_shift`` tokens or fewer keeps one. The batch keeps its width."""
    if max_shift < 0:
        raise ConfigError(f"max_shift must be 0 or more, got {max_shift}")
    lengths = (content_mask(ids, tokenizer).sum(dim=1) - max_shift).clamp(min=1)
    return random_crop(ids, tokenizer, lengths, generator)


# ----------------------------------------------------------------------------------------------
# corruption


def substitute(ids: torch.Tensor, tokenizer: Tokenizer, rate: float,
               generator: torch.Generator) -> torch.Tensor:
    """Substitution noise: each unambiguous letter (A C G T; the 20 standard amino acids) turns,
    with probability ``rate``, into one of the others, uniformly; everything else stays.

    For overlapping k-mer tokens the noise is per letter too: every k-mer holding a changed letter
    changes (``_substitute_kmer_letters``), so the result is still the k-merisation of a letter
    string. ``<unk>`` k-mers (those holding an N) stay ``<unk>``.
    """
    _check_ids(ids, generator)
    _check_rate(rate, "substitution rate")
    if tokenizer.k > 1:
        return _substitute_kmer_letters(ids, tokenizer, rate, generator)
    replacement = tokenizer.table("replacement", ids.device)
    index = tokenizer.table("replacement_index", ids.device)[ids]
    hit = (index >= 0) & (_rand(generator, *ids.shape) < rate)
    # a shift of 1 … R-1 places along the replacement letters always lands on another letter
    shift = torch.randint(1, len(replacement), ids.shape, generator=generator, device=ids.device)
    changed = replacement[(index + shift) % len(replacement)]
    return torch.where(hit, changed, ids)


def _substitute_kmer_letters(ids: torch.Tensor, tokenizer: Tokenizer, rate: float,
                             generator: torch.Generator) -> torch.Tensor:
    """``substitute`` for overlapping k-mers over A C G T (ids ``first_ordinary_id`` + the k-mer's
    base-4 number): letters out, noise, k-mers back in, all as whole-batch tensor operations.

    Token p spells letters p … p+k-1 of a (B, L + k - 1) letter grid, so the letters are read off
    whichever k-mer holds them (the k-mers of one string agree where they overlap). A letter that
    only non-k-mer tokens cover (``<unk>``, ``<mask>``, specials) is unknown and never changed, and
    only k-mer tokens are rebuilt, so those tokens stay as they are.
    """
    k, first = tokenizer.k, tokenizer.first_ordinary_id
    batch, width = ids.shape
    code = ids - first
    is_kmer = (code >= 0) & (code < 4 ** k)
    place_values = 4 ** torch.arange(k - 1, -1, -1, device=ids.device)  # first letter most significant
    digits = torch.where(is_kmer[..., None], code[..., None] // place_values % 4, -1)  # (B, L, k)
    letters = torch.full((batch, width + k - 1), -1, dtype=ids.dtype, device=ids.device)
    for offset in range(k):  # k ≤ MAX_K passes over the batch, not a loop over samples
        grid = letters[:, offset:offset + width]
        torch.maximum(grid, digits[..., offset], out=grid)
    hit = (letters >= 0) & (_rand(generator, *letters.shape) < rate)
    shift = torch.randint(1, 4, letters.shape, generator=generator, device=ids.device)
    letters = torch.where(hit, (letters + shift) % 4, letters)
    rebuilt = first + (letters.unfold(1, k, 1) * place_values).sum(dim=-1)  # (B, L)
    return torch.where(is_kmer, rebuilt, ids)


def random_mask(ids: torch.Tensor, tokenizer: Tokenizer, rate: float,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace about ``rate`` of each sequence's ordinary tokens with ``<mask>``.

    Returns (masked ids, (B, L) bool mask of the replaced positions). k-mer tokens are masked in
    spans of k, chosen so the expected share stays near ``rate``.
    """
    chosen = _choose(ids, tokenizer, rate, generator)
    return torch.where(chosen, tokenizer.mask_id, ids), chosen


def bert_mask(ids: torch.Tensor, tokenizer: Tokenizer, generator: torch.Generator,
              rate: float = 0.15, mask_fraction: float = 0.8,
              random_fraction: float = 0.1) -> MaskedTokens:
    """BERT's masking rule: each ordinary token (no special, no pad) is chosen with probability
    ``rate``; a chosen token becomes ``<mask>`` with probability ``mask_fraction``, a random
    ordinary token (uniform over ``tokenizer.replacement_ids``, so possibly itself) with probability
    ``random_fraction``, and stays as it is otherwise. Labels hold the original ids at chosen
    positions and ``IGNORE_LABEL`` elsewhere, so the loss counts chosen positions only.

    For k-mer tokens the choice grows into spans of k tokens (``expand_kmer_mask``); each token of
    a span then draws its own mask/random/keep outcome.
    """
    if not (0 <= mask_fraction and 0 <= random_fraction and mask_fraction + random_fraction <= 1):
        raise ConfigError(
            f"mask_fraction ({mask_fraction}) and random_fraction ({random_fraction}) must be "
            "0 or more and sum to at most 1"
        )
    chosen = _choose(ids, tokenizer, rate, generator)
    outcome = _rand(generator, *ids.shape)
    replacement = tokenizer.table("replacement", ids.device)
    random_tokens = replacement[
        torch.randint(len(replacement), ids.shape, generator=generator, device=ids.device)
    ]
    masked = chosen & (outcome < mask_fraction)
    randomized = chosen & (outcome >= mask_fraction) & (outcome < mask_fraction + random_fraction)
    inputs = torch.where(masked, tokenizer.mask_id, torch.where(randomized, random_tokens, ids))
    labels = torch.where(chosen, ids, IGNORE_LABEL)
    return MaskedTokens(inputs, labels)


# ----------------------------------------------------------------------------------------------
# helpers


def _choose(ids: torch.Tensor, tokenizer: Tokenizer, rate: float,
            generator: torch.Generator) -> torch.Tensor:
    """(B, L) bool: ordinary tokens chosen independently with probability ``rate`` (for k-mers,
    span centres at rate / k, grown into spans of k)."""
    _check_ids(ids, generator)
    _check_rate(rate, "masking rate")
    maskable = maskable_mask(ids, tokenizer)
    chosen = maskable & (_rand(generator, *ids.shape) < rate / tokenizer.k)
    return expand_kmer_mask(chosen, tokenizer.k) & maskable


def _rand(generator: torch.Generator, *shape: int) -> torch.Tensor:
    """float32 uniform draws in [0, 1) on the generator's device."""
    return torch.rand(shape, generator=generator, device=generator.device)


def _check_ids(ids: torch.Tensor, generator: torch.Generator | None = None) -> None:
    if ids.ndim != 2 or ids.dtype != torch.int64:
        raise DataError(
            f"expected a (B, L) int64 batch of token ids, got {ids.dtype} {tuple(ids.shape)}; "
            "make one with tokenizer.encode_batch"
        )
    if generator is not None and not same_device(generator.device, ids.device):
        raise DataError(
            f"the generator lives on {generator.device} but the token ids on {ids.device}; "
            "create it with torch.Generator(device=ids.device)"
        )


def _check_rate(rate: float, what: str) -> None:
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"{what} must be in [0, 1], got {rate}")
