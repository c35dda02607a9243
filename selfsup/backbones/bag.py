"""A bag-of-n-grams token encoder, the fastText family (Joulin et al. 2017, "Bag of Tricks for
Efficient Text Classification"; hashed n-grams as in Bojanowski et al. 2017).

A sequence's features are learned embeddings of its token n-grams (n = ``min_n`` … ``max_n``, over
the tokeniser's ids: amino acids, nucleotides or DNA k-mer tokens, BPE tokens), averaged over the
sequence, then an optional MLP. There is no attention and no convolution: the cost is one table
lookup per n-gram, cheap enough for CPU pretraining (see "Presets" for the timings).
``contextual`` is False: a token's features see only the n − 1 tokens after it, and a masked
token's n-grams all hold the ``<mask>`` and are dropped, so masked and next-token modelling refuse
the encoder; pretrain it contrastively.

Which n-grams. The n-gram starting at position t spells tokens t … t+n−1. It counts when all n
are ordinary tokens of the sequence: an n-gram that touches a special (``<cls>``, ``<eos>``,
``<pad>``, ``<unk>``, ``<mask>``) or a position the attention mask marks as padding is left out.
So padding never reaches the features, the framing ``<cls>``/``<eos>`` (the same in every
sequence) carry no information worth a table row, a masked token (a view's augmentation) drops the
n-grams holding it — n-gram dropout — and DNA k-mers holding an N (``<unk>``) are skipped exactly
as the k-mer baselines skip them. Ambiguous letters that are ordinary tokens (protein X B U Z O,
DNA N with single-nucleotide tokens) do count, unlike in the baselines, which keep only the
standard letters: on sequences of standard letters the two count the same windows.

Indexing. With A ordinary tokens (the vocabulary less its five specials; every selfsup tokeniser
puts the specials at ids 0–3 and V−1), an n-gram's mixed-radix code Σᵢ cᵢ·A^(n−1−i) over the
ordinary codes cᵢ = id − 4 numbers the Aⁿ possible n-grams. Unigrams are looked up by token id in
``token_embedding`` (V rows, the specials' rows never read). Each order n ≥ 2 has its own block of
rows in ``ngram_embedding``: Aⁿ rows indexed by the code itself when Aⁿ ≤ ``buckets`` (exact: no
two n-grams share a row), else ``buckets`` rows indexed by a hash of the code. The code is
computed as a rolling polynomial modulo the prime p = 2³¹ − 1 (exact while Aⁿ < p; int64 never
overflows), and hashed with the universal family ((a·h + b) mod p) mod ``buckets`` for fixed a, b
(Carter & Wegman 1979): unlike h mod ``buckets``, which for a power-of-two table keeps only the
code's low bits, colliding n-grams are then spread evenly. Blocks per order, not fastText's one
shared bucket table, so that an exact order never collides with a hashed one. With 15,625
buckets, proteins (A = 25) get exact 1- to 3-grams, single-nucleotide DNA (A = 5) exact 1- to
6-mers; BPE text (A = 8,187) gets exact unigrams (always exact: they are the vocabulary) and hashed
longer n-grams.

Pooling. The features are Σₙ meanₙ: for each order, the mean of the embeddings of its n-grams
(``pool="mean"``: weights 1/countₙ), summed over the orders. With one-hot embeddings and no MLP the
pooled vector is exactly the concatenated n-gram frequency profiles: amino-acid composition and
dipeptide frequencies (``protein_composition``) for n = 1…2, ``kmer_profile`` for k-mer tokens and
n = 1; in general a learned linear map of those profiles. So the encoder contains the composition
and k-mer baselines, which it must at least match, and a TF-IDF-like model (a learned per-n-gram
weight along one direction). Per-order means, not one mean over all n-grams, make the one-hot case
exact and keep each order's weight independent of the length. The mean, not fastText's alternative
sum/√count: a crop of a sequence (a contrastive view) and the whole have the same expected
frequencies, while sum/√count grows a unigram profile with √length, so the features would encode
length; ``pool="sqrt"`` is there to compare. The cost of the mean: at random initialisation an
order with many distinct n-grams (trigrams: ~300 distinct in 300 residues) averages ~300 random
vectors and is ~4× smaller than the unigram part (20 amino acids); the MLP branch sees the sum
through a LayerNorm, and training grows the rows that matter.

The MLP. ``mlp_layers`` = 0 returns the pooled embedding itself (the linear special case above).
Otherwise a LayerNorm, then ``mlp_layers`` Linear layers with GELU between them (``BagHead``):
feature interactions that a linear probe on frequency profiles cannot express. When its output is
as wide as the bag (``out_dim`` 0 or ``dim``, the presets) the MLP is a residual branch,
bag + MLP(LN bag), whose last layer starts at zero: the untrained encoder *is* the linear bag (a
random projection of the n-gram profiles, which keeps their cosine geometry), and training can
only add to that model, never has to rediscover it. The LayerNorm makes the branch's input
scale-free (the pooled norm varies with how many distinct n-grams a sequence has) and works per
sequence, so a sequence's features never depend on its batch; BatchNorm would break that.

Reverse-complement invariance (DNA; ``make_rc_invariant``). ``forward`` averages the pooled bags of
both strands, ½·(bag(x) + bag(rc x)), and applies the MLP once, to that average. Floating-point
addition is commutative and rc(rc x) = x, so x and rc x get bitwise-equal features; and with
one-hot embeddings the average is the strand-merged profile (summed over each {w, rc w} class it
equals ``canonical_kmer_profile``). Averaging the MLP outputs of the two strands, the base class's way,
would be as exact but learns a function of each strand's profile rather than of the canonical one,
and costs two MLP passes.

Efficiency (CPU). The pooled path never builds the (B, L, D) token tensor: ``F.embedding_bag``
(mode ``sum`` with ``per_sample_weights`` 1/countₙ on valid n-grams and 0 elsewhere, over
fixed-width (B, orders·L) bags, so no data-dependent shapes and no device synchronisation) gathers
and sums in one kernel, and its backward scatters straight into the table gradient. Gradients are
dense. ``torch.optim.AdamW``, the sequence methods' optimiser, rejects sparse gradients, and sparse
ones do not pay here anyway: a batch of 128 proteins holds ~115,000 n-grams, which touch most rows
of a 32,000-row table, so a sparse gradient is as big as the table and coalescing it is the slow
part (measured, 128 × 300 tokens, 3 orders, 32,634 × 256 table, one thread: forward + backward
53 ms dense vs 92 ms sparse; optimiser step 113 ms AdamW vs 337 ms SparseAdam). A dense AdamW step
costs time in proportion to the table (11–14 ns per parameter on the 2-core CPU), so ``buckets``
× ``dim`` is the knob that sets the step time.

Presets. ``bag-tiny`` (tests): 1- and 2-grams, 32-d, a residual linear layer. ``bag-small`` (the
CPU budget: contrastive pretraining in ~20 minutes on 2 cores): 1- to 4-grams, 256-d, 2^14 rows per
hashed order, residual MLP with 512 hidden units. 1–4 because 4-mers are the DNA baseline and
1–2 the protein one (3-grams are still exact for proteins; text gets hashed BPE 2- to 4-grams, as
fastText's word n-grams); 256-d to hold the 256 4-mer frequencies in the linear special case.
Tables: proteins (A = 25) 32,664 rows, 8.6 M parameters (4-grams hashed); DNA nucleotides (A = 5)
785 rows, 0.5 M, all exact; BPE text (A = 8,187) 57,344 rows, 14.9 M. Measured on the 2-core CPU
with one thread (batch 128, random tokens; ``encoder(ids).square().mean().backward()``, then an
AdamW step over ``param_groups``); two threads ran 10–100× slower there, the machine being shared
(each parallel region waits for a descheduled thread):

    data (tokens per row)       forward+backward      AdamW step    both
    proteins (300)              46 ms  2,800 seq/s    95 ms         910 seq/s
    DNA nucleotides (150)       14 ms  9,400 seq/s     2 ms       8,200 seq/s
    DNA, max_n=8 (150)         115 ms  1,100 seq/s   149 ms         490 seq/s
    BPE text (300)             137 ms    930 seq/s   203 ms         380 seq/s

A contrastive step runs the encoder on two views, so proteins train at ~600 sequences/s before
the data pipeline's and the projector's costs: ~100 epochs of swissprot-loc's 7,234 proteins in 20
minutes, ~30 of 20newsgroups' 11,293 posts.
For DNA reads, longer n-grams are cheap where exact (A⁶ = 15,625 rows fit 2^14), and they are what
read-to-read similarity needs: the DNA default recipe (``selfsup.recipes``) uses ``min_n`` 4,
``max_n`` 6, whose untrained bag already beats the canonical 4-mer profile's k-NN (93.1 against
91.7 at phylum; with 1- to 4-grams, 83.3: the composition orders' means drown the long words).

``forward_tokens`` (per-token features for featurize and the base contract) gives position t the
MLP of the summed embeddings of the n-grams starting at t, the same scale as the pooled input
(about one n-gram per order). ``forward`` is not the mean of those (the MLP comes after pooling).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.backbones.token_encoder import (
    TokenEncoder, TokenEncoderOptions, TokenInput, init_token_weights, register_preset,
)
from selfsup.errors import ConfigError
from selfsup.tokenize.base import LEADING_SPECIALS
from selfsup.views.sequence import reverse_complement

POOLS = ("mean", "sqrt")
MAX_N = 16
FIRST_ORDINARY_ID = len(LEADING_SPECIALS)  # ids 0-3 are <cls> <pad> <eos> <unk>; V-1 is <mask>
# Hashing of n-gram codes: rolling code modulo the Mersenne prime p, then ((a·h + b) mod p) mod
# buckets. h < p < 2³¹ and a, A < 2³¹ keep every product below 2⁶² (no int64 overflow). Fixed
# constants: a checkpoint's rows mean the same n-grams forever; changing them breaks checkpoints.
HASH_PRIME = 2**31 - 1
HASH_MULTIPLIER = 1_103_515_245
HASH_INCREMENT = 12_345
MAX_BUCKETS = 2**24  # below HASH_PRIME, so exact orders are never reduced modulo p


@dataclass
class BagOptions(TokenEncoderOptions):
    """Bag-of-n-grams options (the ``backbone`` config section); defaults: ``bag-tiny``.

    vocab_size, pad_id and tokenizer come from the tokeniser (``TokenEncoderOptions``).
    """

    dim: int = 32  # embedding width of every n-gram
    min_n: int = 1  # shortest n-gram, in tokens
    max_n: int = 2  # longest n-gram, in tokens
    buckets: int = 4096  # rows per order n ≥ 2: exact when Aⁿ ≤ buckets, else hashed into buckets
    pool: str = "mean"  # mean: Σₙ (mean of order n) | sqrt: Σₙ (sum of order n)/√countₙ
    mlp_layers: int = 1  # Linear layers after LayerNorm(pooled); 0: the pooled embedding itself
    hidden_dim: int = 0  # width of the MLP's hidden layers; 0: dim
    out_dim: int = 0  # output width; 0: dim (must be dim or 0 with mlp_layers = 0)


class OrderRows(NamedTuple):
    """Where order n's n-grams live in ``ngram_embedding``: rows offset … offset + size − 1, indexed
    by the n-gram's mixed-radix code when ``exact``, else by its hash."""

    n: int
    offset: int
    size: int
    exact: bool


class BagEncoder(TokenEncoder):
    """Token ids (B, L) → pooled bag-of-n-grams features (B, ``out_dim``); see the module
    docstring."""

    contextual = False  # a token's features see a fixed window of n − 1 tokens, no context

    def __init__(self, options: Optional[BagOptions] = None) -> None:
        o = dataclasses.replace(options or BagOptions())
        super().__init__(o)
        _check_options(o)
        self.min_n, self.max_n, self.pool = o.min_n, o.max_n, o.pool
        self.ordinary = o.vocab_size - FIRST_ORDINARY_ID - 1  # A: all ids but the five specials
        self.dim = o.dim
        self.out_dim = (o.out_dim or o.dim) if o.mlp_layers else o.dim
        # Unigrams by token id (the specials' rows are never read). When min_n > 1 the table is
        # still built, as the base contract asks, but frozen: DistributedDataParallel rejects a
        # parameter that needs a gradient and never gets one.
        self.token_embedding = nn.Embedding(o.vocab_size, o.dim)
        self.token_embedding.weight.requires_grad_(o.min_n == 1)
        self.orders: list[OrderRows] = []
        offset = 0
        for n in range(max(2, o.min_n), o.max_n + 1):
            exact = self.ordinary**n <= o.buckets  # Python ints: no overflow however large
            size = self.ordinary**n if exact else o.buckets
            self.orders.append(OrderRows(n, offset, size, exact))
            offset += size
        self.ngram_embedding = nn.Embedding(offset, o.dim) if offset else None
        self.head = BagHead(o.dim, o.hidden_dim or o.dim, self.out_dim, o.mlp_layers)
        self.preset = "bag-tiny"
        self._init_weights()
        self._finish_init()

    def _init_weights(self) -> None:
        init_token_weights(self)  # no pad row to zero: padding is never looked up
        self.head.zero_init_residual()

    # ------------------------------------------------------------------ n-grams

    def ngrams(self, ids: torch.Tensor, attention_mask: torch.Tensor
               ) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        """For each order n from min_n to max_n: (n, rows, valid), both (B, L). ``rows[b, t]`` is
        the table row of the n-gram starting at t (a row of ``token_embedding`` for n = 1, of
        ``ngram_embedding`` otherwise; always in range), ``valid[b, t]`` whether that n-gram
        counts: its n tokens are ordinary, unmasked and inside the sequence."""
        vocab, ordinary = self.vocab_size, self.ordinary
        is_ordinary = ((ids >= FIRST_ORDINARY_ID) & (ids < vocab - 1) & (ids != self.pad_id)
                       & attention_mask)
        length = ids.shape[1]
        out: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        if self.min_n == 1:
            out.append((1, torch.where(is_ordinary, ids, 0), is_ordinary))
        if not self.orders:
            return out
        codes = (ids - FIRST_ORDINARY_ID).clamp(0, ordinary - 1)
        code, valid = codes, is_ordinary
        order_rows = iter(self.orders)
        rows_of = next(order_rows)
        for n in range(2, self.max_n + 1):
            # The n-gram at t extends the (n−1)-gram at t by token t+n−1 (rolling code mod p).
            width = max(length - n + 1, 0)
            code = (code[:, :width] * ordinary + codes[:, n - 1:]) % HASH_PRIME
            valid = valid[:, :width] & is_ordinary[:, n - 1:]
            if n < rows_of.n:
                continue
            index = code if rows_of.exact else (
                (code * HASH_MULTIPLIER + HASH_INCREMENT) % HASH_PRIME) % rows_of.size
            # Positions past the last n-gram: row offset (any row in range), never valid.
            rows = F.pad(index + rows_of.offset, (0, length - width), value=rows_of.offset)
            out.append((n, rows, F.pad(valid, (0, length - width), value=False)))
            rows_of = next(order_rows, rows_of)
        return out

    def _weights(self, valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Per-n-gram pooling weights (B, L): 1/count (mean) or 1/√count (sqrt) on valid n-grams,
        0 elsewhere; a sequence without an n-gram of the order gets zeros."""
        count = valid.sum(dim=1, keepdim=True).clamp(min=1).to(dtype)
        scale = count.rsqrt() if self.pool == "sqrt" else count.reciprocal()
        return valid.to(dtype) * scale

    # ------------------------------------------------------------------ forward passes

    def bag(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The pooled n-gram embedding (B, dim) before the MLP: Σₙ meanₙ (see the module
        docstring); ids and mask as ``_inputs`` returns them."""
        pooled: Optional[torch.Tensor] = None
        higher_rows, higher_weights = [], []
        for n, rows, valid in self.ngrams(ids, attention_mask):
            if n == 1:
                table = self.token_embedding.weight
                pooled = F.embedding_bag(rows, table, mode="sum",
                                         per_sample_weights=self._weights(valid, table.dtype))
            else:
                higher_rows.append(rows)
                higher_weights.append(valid)
        if higher_rows:
            # One bag over every order ≥ 2: (B, orders·L) rows and weights.
            table = self.ngram_embedding.weight
            weights = torch.cat([self._weights(v, table.dtype) for v in higher_weights], dim=1)
            higher = F.embedding_bag(torch.cat(higher_rows, dim=1), table, mode="sum",
                                     per_sample_weights=weights)
            pooled = higher if pooled is None else pooled + higher
        assert pooled is not None  # _check_options: min_n ≤ max_n, so some order exists
        return pooled

    def forward(self, ids: TokenInput, attention_mask: Optional[torch.Tensor] = None
                ) -> torch.Tensor:
        """Pooled features (B, out_dim) of ``ids`` (or a ``TokenBatch``): the MLP of the bag of
        n-grams, of both strands' average bag when the encoder is reverse-complement invariant."""
        ids, attention_mask = self._inputs(ids, attention_mask)
        pooled = self.bag(ids, attention_mask)
        if self.rc_invariant:
            other = reverse_complement(ids, self.strand_tokenizer)
            pooled = (pooled + self.bag(other, attention_mask)) / 2
        return self.head(pooled)

    def forward_tokens(self, ids: TokenInput, attention_mask: Optional[torch.Tensor] = None
                       ) -> torch.Tensor:
        """Per-token features (B, L, out_dim): the MLP of the summed embeddings of the valid
        n-grams starting at each position (zero input where none start: specials, padding).
        Per strand, like the other encoders' token features."""
        ids, attention_mask = self._inputs(ids, attention_mask)
        tokens = torch.zeros(*ids.shape, self.dim, dtype=self.token_embedding.weight.dtype,
                             device=ids.device)
        for n, rows, valid in self.ngrams(ids, attention_mask):
            table = self.token_embedding if n == 1 else self.ngram_embedding
            tokens = tokens + table(rows) * valid.unsqueeze(-1).to(tokens.dtype)
        return self.head(tokens)


class BagHead(nn.Module):
    """The MLP after pooling: LayerNorm, then ``layers`` Linear layers with GELU between them.

    Residual when its output is as wide as its input (``out_dim`` = dim): x + MLP(LN x), the last
    Linear zero-initialised, so an untrained encoder's features are the pooled bag itself and
    training adds the MLP's nonlinear part to that linear model. Otherwise (``out_dim`` ≠ dim) the
    plain MLP(LN x). With 0 layers: the identity.
    """

    def __init__(self, dim: int, hidden_dim: int, out_dim: int, layers: int) -> None:
        super().__init__()
        self.residual = layers > 0 and out_dim == dim
        modules: list[nn.Module] = [nn.LayerNorm(dim)] if layers else []
        width = dim
        for _ in range(layers - 1):
            modules += [nn.Linear(width, hidden_dim), nn.GELU()]
            width = hidden_dim
        if layers:
            modules.append(nn.Linear(width, out_dim))
        self.mlp = nn.Sequential(*modules)

    def zero_init_residual(self) -> None:
        """Zero the last Linear of a residual head (call after any other initialisation)."""
        if self.residual:
            last = self.mlp[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not len(self.mlp):
            return x
        return x + self.mlp(x) if self.residual else self.mlp(x)


# ----------------------------------------------------------------------------------------------
# checks and presets


def _check_options(o: BagOptions) -> None:
    if o.vocab_size < FIRST_ORDINARY_ID + 2:
        raise ConfigError(f"backbone.vocab_size={o.vocab_size} has no ordinary token: selfsup "
                          f"vocabularies hold {FIRST_ORDINARY_ID} leading specials, the tokens, "
                          "then <mask>")
    if o.dim < 1:
        raise ConfigError(f"backbone.dim must be positive, got {o.dim}")
    if not 1 <= o.min_n <= o.max_n <= MAX_N:
        raise ConfigError(f"backbone.min_n ({o.min_n}) and backbone.max_n ({o.max_n}) must satisfy "
                          f"1 ≤ min_n ≤ max_n ≤ {MAX_N}")
    if not 1 <= o.buckets <= MAX_BUCKETS:
        raise ConfigError(f"backbone.buckets must be in 1…{MAX_BUCKETS} (rows per n-gram order), "
                          f"got {o.buckets}")
    if o.pool not in POOLS:
        raise ConfigError(f"backbone.pool must be one of {', '.join(POOLS)}, got {o.pool!r}")
    if o.mlp_layers < 0 or o.hidden_dim < 0 or o.out_dim < 0:
        raise ConfigError(f"backbone.mlp_layers ({o.mlp_layers}), hidden_dim ({o.hidden_dim}) and "
                          f"out_dim ({o.out_dim}) must not be negative")
    if o.mlp_layers == 0 and o.out_dim not in (0, o.dim):
        raise ConfigError(f"backbone.out_dim={o.out_dim} needs an MLP: with backbone.mlp_layers=0 "
                          f"the features are the pooled {o.dim}-d embedding (set out_dim 0 or "
                          "mlp_layers ≥ 1)")


@dataclass
class BagSmallOptions(BagOptions):
    """The CPU-budget model (sizes: the module docstring's "Presets"): 1- to 4-grams, 256-d,
    2^14 rows per hashed order, a residual 2-layer MLP (hidden 512)."""

    dim: int = 256
    min_n: int = 1
    max_n: int = 4
    buckets: int = 2**14
    mlp_layers: int = 2
    hidden_dim: int = 512


bag_tiny = register_preset(
    "bag-tiny", BagEncoder, BagOptions,
    "bag of 1-2-gram token embeddings (fastText), 32-d, 4096 rows per hashed order, residual "
    "linear layer (tests); needs vocab_size")
bag_small = register_preset(
    "bag-small", BagEncoder, BagSmallOptions,
    "bag of 1-4-gram token embeddings (fastText), 256-d, 2^14 rows per hashed order, residual MLP "
    "(CPU budget); needs vocab_size")
