"""Tests of the bag-of-n-grams encoder: n-gram order and permutations, the one-hot special cases
(composition, k-mer and canonical k-mer profiles), padding, reverse complements, options and
presets."""

from __future__ import annotations

import random

import pytest
import torch

from selfsup.backbones import build_backbone
from selfsup.backbones.bag import BagEncoder, BagOptions
from selfsup.backbones.token_encoder import as_token_encoder
from selfsup.errors import ConfigError
from selfsup.modalities.sequence_baselines import (
    canonical_kmer_classes, canonical_kmer_profile, kmer_profile, protein_composition,
)
from selfsup.tokenize import DnaTokenizer, KmerDnaTokenizer, ProteinTokenizer
from selfsup.tokenize.alphabets import STANDARD_AMINO_ACIDS
from selfsup.views.sequence import reverse_complement

PROTEIN = ProteinTokenizer()
DNA = DnaTokenizer()
SEQUENCES = ["MKVLAAGIVGLLL", "PEPTIDE", "ACDEFGHIKLMNPQRSTVWY", "W"]


def bag(tokenizer=PROTEIN, **options) -> BagEncoder:
    torch.manual_seed(0)
    return BagEncoder(BagOptions(vocab_size=tokenizer.vocab_size, **options)).eval()


def features(encoder: BagEncoder, sequences: list[str], tokenizer=PROTEIN) -> torch.Tensor:
    with torch.no_grad():
        return encoder(tokenizer.encode_batch(sequences))


def one_hot(encoder: BagEncoder) -> None:
    """Give every table row its own coordinate: unigram rows first (by token id), then the rows of
    each higher order (``dim`` must be their total); no MLP."""
    vocab = encoder.vocab_size
    rows = vocab + (encoder.ngram_embedding.num_embeddings if encoder.ngram_embedding else 0)
    assert encoder.dim == rows and len(encoder.head.mlp) == 0
    eye = torch.eye(rows)
    with torch.no_grad():
        encoder.token_embedding.weight.copy_(eye[:vocab])
        if encoder.ngram_embedding is not None:
            encoder.ngram_embedding.weight.copy_(eye[vocab:])


# ---------------------------------------------------------------- n-gram order and permutations


def test_unigram_bag_is_invariant_to_permuting_the_tokens():
    encoder = bag(max_n=1, mlp_layers=2)
    rng = random.Random(0)
    shuffled = ["".join(rng.sample(s, len(s))) for s in SEQUENCES]
    assert shuffled != SEQUENCES
    torch.testing.assert_close(features(encoder, shuffled), features(encoder, SEQUENCES))


# "LGV" and "E" swap places between the three L's: the same 1- and 2-grams (MK KL LG GV VL LE EL
# LW), other 3-grams (LGV GVL VLE vs LEL ELG LGV).
SAME_BIGRAMS = ("MKLGVLELW", "MKLELGVLW")


def test_bigram_bag_is_invariant_exactly_to_permutations_that_keep_the_bigrams():
    encoder = bag(max_n=2, mlp_layers=2)
    first, second = features(encoder, list(SAME_BIGRAMS))
    torch.testing.assert_close(first, second)
    # ... but not to permutations in general: reversing changes the bigrams
    reversed_ = features(encoder, [SAME_BIGRAMS[0][::-1]])[0]
    assert not torch.allclose(first, reversed_, atol=1e-4)
    # ... and 3-grams tell the two apart
    first, second = features(bag(max_n=3, buckets=100, mlp_layers=2), list(SAME_BIGRAMS))
    assert not torch.allclose(first, second, atol=1e-4)


def test_ngrams_touching_specials_do_not_count():
    encoder = bag(max_n=3, buckets=100)
    ids = PROTEIN.encode_batch(["MKV"]).ids  # <cls> M K V <eos>
    masked = ids.clone()
    masked[0, 2] = PROTEIN.mask_id  # <cls> M <mask> V <eos>

    def counts(ids: torch.Tensor) -> dict[int, int]:
        return {n: int(valid.sum()) for n, _, valid in encoder.ngrams(ids, ids != PROTEIN.pad_id)}

    assert counts(ids) == {1: 3, 2: 2, 3: 1}  # M K V; MK KV; MKV
    assert counts(masked) == {1: 2, 2: 0, 3: 0}  # M, V: every longer n-gram holds the <mask>


# ---------------------------------------------------------------- one-hot embeddings = baselines


def test_one_hot_unigrams_and_bigrams_are_protein_composition():
    """With one row per n-gram (exact indexing) and no MLP, the pooled features are the 1-gram
    and 2-gram frequencies: ``protein_composition`` on sequences of standard amino acids."""
    ordinary = PROTEIN.vocab_size - 5
    encoder = bag(max_n=2, buckets=ordinary**2, mlp_layers=0, dim=PROTEIN.vocab_size + ordinary**2)
    assert encoder.orders[0].exact
    one_hot(encoder)
    # the standard amino acids are the first 20 ordinary tokens, in STANDARD_AMINO_ACIDS order
    codes = torch.tensor([PROTEIN.index[a] - 4 for a in STANDARD_AMINO_ACIDS])
    assert codes.tolist() == list(range(20))
    bigram_codes = (ordinary * codes[:, None] + codes).flatten()
    columns = torch.cat([4 + codes, PROTEIN.vocab_size + bigram_codes])
    pooled = features(encoder, SEQUENCES)  # standard amino acids only; "W" has no bigram
    torch.testing.assert_close(pooled[:, columns], protein_composition(SEQUENCES))
    rest = torch.ones(pooled.shape[1], dtype=torch.bool)
    rest[columns] = False
    assert not pooled[:, rest].any()


@pytest.mark.parametrize("tokens", ["kmer", "nucleotide"])
def test_one_hot_4mers_are_the_kmer_profile(tokens):
    """k-mer tokens and unigrams, or single nucleotides and exact 4-grams (mixed radix over
    A C G T N): both give ``kmer_profile``'s 4-mer frequencies. A 4-mer token holding an N is
    <unk> and skipped, as the profile skips it; with nucleotide tokens N is ordinary, so those
    reads hold A C G T only."""
    reads = ["ACGTTGCAAGGCTTACGA", "AAAAAAA", "GATTACA", "CCGGTA"]
    if tokens == "kmer":
        tokenizer = KmerDnaTokenizer(4)
        encoder = bag(tokenizer, max_n=1, mlp_layers=0, dim=tokenizer.vocab_size)
        columns = torch.arange(4, 4 + 256)  # k-mer ids in lexicographic order
        reads.append("ACGTNACGTAC")
    else:
        tokenizer = DNA
        encoder = bag(tokenizer, min_n=4, max_n=4, buckets=5**4, mlp_layers=0,
                      dim=tokenizer.vocab_size + 5**4)
        digits = torch.cartesian_prod(*[torch.arange(4)] * 4)  # A C G T = codes 0-3, lexicographic
        columns = tokenizer.vocab_size + (digits * torch.tensor([125, 25, 5, 1])).sum(dim=1)
    one_hot(encoder)
    pooled = features(encoder, reads, tokenizer)
    torch.testing.assert_close(pooled[:, columns], kmer_profile(reads, 4))


def test_one_hot_strand_average_merges_into_the_canonical_profile():
    tokenizer = KmerDnaTokenizer(4)
    encoder = bag(tokenizer, max_n=1, mlp_layers=0, dim=tokenizer.vocab_size)
    encoder.make_rc_invariant(tokenizer)
    one_hot(encoder)
    reads = ["ACGTTGCAAGGCTTACGA", "AAAAAAA", "GATTACA", "ACGTNACGTAC"]
    strand_average = features(encoder, reads, tokenizer)[:, 4:260]
    merged = torch.zeros(len(reads), 136).index_add_(1, canonical_kmer_classes(4), strand_average)
    torch.testing.assert_close(merged, canonical_kmer_profile(reads, 4))


# ---------------------------------------------------------------- padding


@pytest.mark.parametrize("options", [dict(max_n=3, buckets=100, mlp_layers=2),
                                     dict(max_n=3, buckets=100, mlp_layers=1, pool="sqrt"),
                                     dict(min_n=2, max_n=2, mlp_layers=2, out_dim=16)])
def test_padding_never_changes_a_sequences_features(options):
    encoder = bag(**options)
    batch = PROTEIN.encode_batch(SEQUENCES)
    pads = torch.full((len(SEQUENCES), 5), PROTEIN.pad_id)
    with torch.no_grad():
        alone = torch.cat([encoder(PROTEIN.encode_batch([s]).ids) for s in SEQUENCES])
        together = encoder(batch.ids, batch.attention_mask)
        more = encoder(torch.cat([batch.ids, pads], dim=1))  # the mask derived from <pad>
        tokens = encoder.forward_tokens(batch)
        more_tokens = encoder.forward_tokens(torch.cat([batch.ids, pads], dim=1))
    torch.testing.assert_close(together, alone)
    torch.testing.assert_close(more, together)
    assert encoder(batch).shape == (len(SEQUENCES), encoder.out_dim)
    real = batch.attention_mask
    assert tokens.shape == (*batch.ids.shape, encoder.out_dim)
    torch.testing.assert_close(more_tokens[:, :real.shape[1]][real], tokens[real])


def test_positions_the_mask_marks_as_padding_do_not_count():
    """The padding test can fail: the mask, not only the <pad> id, decides what counts."""
    encoder = bag(max_n=3, buckets=100)
    ids = PROTEIN.encode_batch(["MKVLL"]).ids
    mask = ids != PROTEIN.pad_id
    mask[0, 4:] = False  # hide "LL" and <eos>
    with torch.no_grad():
        hidden = encoder(ids, mask)
        assert not torch.allclose(hidden, encoder(ids), atol=1e-4)
        torch.testing.assert_close(hidden, encoder(PROTEIN.encode_batch(["MKV"]).ids))


# ---------------------------------------------------------------- reverse complements


@pytest.mark.parametrize("tokenizer", [DNA, KmerDnaTokenizer(3)], ids=["k1", "k3"])
def test_rc_invariant_encoder_gives_a_read_and_its_reverse_complement_equal_features(tokenizer):
    encoder = bag(tokenizer, max_n=3, buckets=100, mlp_layers=2)
    reads = tokenizer.encode_batch(["ACGGTCAGTTNACG", "GATTACAGATTACAAAAC"])
    flipped = reverse_complement(reads.ids, tokenizer)
    with torch.no_grad():
        one_strand = encoder(reads.ids), encoder(flipped)
        assert not torch.allclose(*one_strand, atol=1e-4)  # the test can fail
        encoder.make_rc_invariant(tokenizer)
        both, both_flipped = encoder(reads.ids), encoder(flipped)
    assert torch.equal(both, both_flipped)
    # the same from the config a checkpoint stores
    rebuilt = build_backbone(encoder.config(), 0, 0)
    assert rebuilt.rc_invariant and rebuilt.preset == "bag-tiny"


# ---------------------------------------------------------------- hashing


def test_hashed_orders_stay_in_their_rows_and_spread_over_them():
    encoder = bag(max_n=3, buckets=97)  # 25² = 625 bigrams > 97: hashed
    assert [(o.n, o.offset, o.size, o.exact) for o in encoder.orders] == [(2, 0, 97, False),
                                                                          (3, 97, 97, False)]
    ordinary = torch.arange(4, 4 + 25)
    pairs = torch.cartesian_prod(ordinary, ordinary)  # every bigram, as a 2-token "sequence"
    _, (_, rows, valid), _ = encoder.ngrams(pairs, torch.ones_like(pairs, dtype=torch.bool))
    bigram_rows = rows[:, 0]
    assert valid[:, 0].all() and not valid[:, 1].any()
    assert bigram_rows.min() >= 0 and bigram_rows.max() < 97
    assert len(bigram_rows.unique()) >= 90  # 625 bigrams, 97 rows: none left empty but by chance
    # fixed constants: a checkpoint's rows must mean the same n-grams in every version
    assert bigram_rows[:3].tolist() == [26, 9, 24]


# ---------------------------------------------------------------- options, presets, training


@pytest.mark.parametrize("options, named", [
    (dict(dim=0), "backbone.dim"), (dict(min_n=0), "backbone.min_n"),
    (dict(min_n=3, max_n=2), "backbone.max_n"), (dict(buckets=0), "backbone.buckets"),
    (dict(pool="max"), "backbone.pool"), (dict(mlp_layers=-1), "backbone.mlp_layers"),
    (dict(mlp_layers=0, out_dim=7), "backbone.out_dim"),
    (dict(vocab_size=5), "backbone.vocab_size"), (dict(vocab_size=0), "backbone.vocab_size"),
])
def test_bad_options_raise_config_errors_naming_the_option(options, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        BagEncoder(BagOptions(**{"vocab_size": PROTEIN.vocab_size, **options}))


def test_presets_build_from_the_tokenizer_and_round_trip_their_config():
    small = build_backbone({"name": "bag-small"}, 0, 0, tokenizer=DNA)  # DNA: a small table
    assert small.preset == "bag-small" and small.out_dim == small.options.dim
    tiny = build_backbone({"name": "bag-tiny", "max_n": 3}, 0, 0, tokenizer=PROTEIN)
    assert build_backbone(tiny.config(), 0, 0).config() == tiny.config()
    with pytest.raises(ConfigError, match="bag-tiny backbone is not contextual"):
        as_token_encoder(tiny, "mlm", contextual=True)
    assert as_token_encoder(tiny, "dna-contrastive") is tiny


def test_an_untrained_residual_head_returns_the_bag_itself():
    """The linear special case is where training starts: the residual branch's last layer is 0."""
    encoder = build_backbone({"name": "bag-small"}, 0, 0, tokenizer=DNA).eval()
    batch = DNA.encode_batch(["ACGTTGCAAGG", "GATTACA"])
    with torch.no_grad():
        assert torch.equal(encoder(batch), encoder.bag(batch.ids, batch.attention_mask))


def test_training_moves_every_used_table_and_leaves_an_unused_unigram_table_alone():
    encoder = bag(min_n=2, max_n=3, buckets=100, mlp_layers=2).train()
    batch = PROTEIN.encode_batch(SEQUENCES)
    encoder(batch).square().sum().backward()
    assert encoder.token_embedding.weight.grad is None
    assert not encoder.token_embedding.weight.requires_grad  # min_n = 2: never read
    assert encoder.ngram_embedding.weight.grad.abs().sum() > 0
    # the residual MLP starts at zero: its last layer gets the gradient first
    assert encoder.head.residual and encoder.head.mlp[-1].weight.grad.abs().sum() > 0
    unigrams = bag(max_n=1).train()
    unigrams(batch).square().sum().backward()
    assert unigrams.ngram_embedding is None and unigrams.token_embedding.weight.grad.abs().sum() > 0
