"""Tests of DNA contrastive learning: the loss formula, strand invariance, views, learning."""

from __future__ import annotations

import math
import random

import pytest
import torch
from method_helpers import assert_loss_falls, step_losses

from selfsup.backbones import build_backbone
from selfsup.errors import ConfigError
from selfsup.methods import build_method
from selfsup.tokenize import DnaTokenizer, KmerDnaTokenizer, ProteinTokenizer
from selfsup.tokenize import reverse_complement as reverse_complement_text
from selfsup.views.sequence import content_mask, reverse_complement
from selfsup.views.sequence_recipes import make_sequence_views

DNA = DnaTokenizer()


def random_reads(count: int, length: int, seed: int = 0, spread: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice("ACGT") for _ in range(length - rng.randint(0, spread)))
            for _ in range(count)]


def tiny_method(**options):
    torch.manual_seed(0)
    encoder = build_backbone({"name": "transformer-tiny", "vocab_size": DNA.vocab_size, "dim": 32,
                              "depth": 1, "ffn_dim": 64}, 0, 0)
    return build_method({"name": "dna-contrastive", "proj_dim": 16, **options}, encoder)


# ---------------------------------------------------------------- the loss


def test_loss_matches_an_independent_info_nce_formula():
    method = tiny_method(temperature=0.3)
    views = make_sequence_views("dna-contrastive", DNA, {})
    batch = DNA.encode_batch(random_reads(6, 40, spread=10))
    v1, v2 = views(batch, torch.Generator().manual_seed(0))
    captured = {}
    method.projector.register_forward_hook(lambda module, args, out: captured.update(z=out))
    loss = method([v1, v2]).loss
    z = torch.nn.functional.normalize(captured["z"].detach().double(), dim=1)
    n = len(v1)
    # NT-Xent over 2N views: view i's positive is the other view of its read, every other view
    # but itself a negative
    total = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        similarities = [float(z[i] @ z[k]) / 0.3 for k in range(2 * n) if k != i]
        log_denominator = math.log(sum(math.exp(s) for s in similarities))
        total += log_denominator - float(z[i] @ z[positive]) / 0.3
    assert loss.item() == pytest.approx(total / (2 * n), rel=1e-5)


def test_loss_falls_on_random_reads():
    method = tiny_method()
    views = make_sequence_views("dna-contrastive", DNA, {})
    reads = DNA.encode_batch(random_reads(48, 40))
    optimizer = torch.optim.Adam(method.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    losses = step_losses(method, optimizer,
                         lambda: views(reads.ids[torch.randperm(48, generator=generator)[:24]], generator))
    assert_loss_falls(losses, margin=0.2)


# ---------------------------------------------------------------- reverse-complement invariance


def test_rc_invariant_encoder_gives_identical_embeddings_for_both_strands():
    method = tiny_method(rc_invariant=True).eval()
    batch = DNA.encode_batch(random_reads(5, 30, seed=1, spread=12) + ["ACGTNNAC"])
    flipped = reverse_complement(batch.ids, DNA)
    assert not torch.equal(flipped, batch.ids)
    with torch.no_grad():
        assert torch.equal(method.embed(batch.ids), method.embed(flipped))
        # the plain encoder is not invariant: the test can tell the two apart
        plain = tiny_method().eval()
        assert not torch.allclose(plain.embed(batch.ids), plain.embed(flipped), atol=1e-3)


def test_rc_invariant_features_are_the_strand_average():
    method = tiny_method(rc_invariant=True).eval()
    plain = tiny_method().eval()
    plain.encoder.load_state_dict(method.encoder.state_dict())
    ids = DNA.encode_batch(random_reads(4, 20, spread=5)).ids
    with torch.no_grad():
        expected = (plain.embed(ids) + plain.embed(reverse_complement(ids, DNA))) / 2
        torch.testing.assert_close(method.embed(ids), expected)
    config = method.encoder.config()
    assert config["rc_invariant"] and config["tokenizer"] == {"name": "dna", "k": 1}
    rebuilt = build_backbone(config, 0, 0).eval()  # what a saved run rebuilds
    rebuilt.load_state_dict(method.encoder.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(ids), rebuilt(reverse_complement(ids, DNA)))


def test_rc_invariance_needs_the_dna_vocabulary():
    encoder = build_backbone({"name": "transformer-tiny", "vocab_size": 30}, 0, 0)
    with pytest.raises(ConfigError, match="DNA tokeniser"):
        build_method({"name": "dna-contrastive", "rc_invariant": True}, encoder)


# ---------------------------------------------------------------- views


def test_views_keep_the_alphabet_the_layout_and_the_length_rules():
    options = {"crop_min_fraction": 0.5, "max_shift": 6}
    views = make_sequence_views("dna-contrastive", DNA, options)
    batch = DNA.encode_batch(random_reads(200, 50, spread=20))
    lengths = content_mask(batch.ids, DNA).sum(dim=1)
    allowed = torch.tensor([DNA.index[c] for c in "ACGTN"] + [DNA.mask_id])
    for view in views(batch, torch.Generator().manual_seed(0)):
        assert view.shape == batch.ids.shape
        content = content_mask(view, DNA)
        assert torch.isin(view[content], allowed).all()
        kept = content.sum(dim=1)
        assert (kept <= lengths).all() and (kept >= 1).all()
        # the shortest possible view: a crop to half, then 6 tokens shifted off
        assert (kept >= torch.ceil(lengths * 0.5) - 6).all()
        # layout: <cls>, the content, <eos>, then padding
        assert (view[:, 0] == DNA.cls_id).all()
        assert torch.equal(view[torch.arange(len(view)), kept + 1], torch.full((len(view),), DNA.eos_id))
        positions = torch.arange(view.shape[1])
        assert (view[positions > (kept + 1)[:, None]] == DNA.pad_id).all()
        assert (kept < lengths).any()  # some views were cropped


def test_probabilities_one_and_zero():
    off = {"crop_prob": 0, "shift_prob": 0, "rc_prob": 0, "substitution_prob": 0, "mask_prob": 0}
    batch = DNA.encode_batch(random_reads(8, 30, spread=8))
    unchanged = make_sequence_views("dna-contrastive", DNA, off)(batch, torch.Generator().manual_seed(0))
    assert all(torch.equal(view, batch.ids) for view in unchanged)
    rc_only = make_sequence_views("dna-contrastive", DNA, {**off, "rc_prob": 1.0})
    for view in rc_only(batch, torch.Generator().manual_seed(0)):
        assert torch.equal(view, reverse_complement(batch.ids, DNA))


def test_the_two_views_differ_and_the_same_seed_repeats_them():
    views = make_sequence_views("dna-contrastive", DNA, {})
    batch = DNA.encode_batch(random_reads(16, 40))
    a1, a2 = views(batch, torch.Generator().manual_seed(3))
    b1, b2 = views(batch, torch.Generator().manual_seed(3))
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, a2)


def test_kmer_views_are_kmerised_strings_of_the_read_or_its_other_strand():
    """With 4-mer tokens every view (masking off) is still the 4-merisation of a letter string:
    a window of the read or of its reverse complement, with about 1% of letters substituted."""
    tok = KmerDnaTokenizer(4)
    reads = random_reads(64, 60, seed=4)
    views = make_sequence_views("dna-contrastive", tok, {"mask_prob": 0})
    for view in views(tok.encode_batch(reads), torch.Generator().manual_seed(4)):
        strings = tok.decode_batch(view)
        for row, text in zip(view, strings):  # each row re-encodes to itself, then only padding
            ids = tok.encode(text)
            assert torch.equal(row[:len(ids)], ids) and (row[len(ids):] == tok.pad_id).all()
        for read, text in zip(reads, strings):
            strands = (read, reverse_complement_text(read))
            # the closest placement of the view in either strand differs in few letters
            mismatches = min(sum(a != b for a, b in zip(strand[start:], text))
                             for strand in strands for start in range(len(read) - len(text) + 1))
            assert mismatches <= 4


@pytest.mark.parametrize("tokenizer, options, message", [
    (ProteinTokenizer(), {}, "no reverse complement"),
    (DNA, {"mask_rate": 1.5}, "mask_rate"),
    (DNA, {"max_shift": -1}, "max_shift"),
])
def test_bad_view_settings_raise_named_errors(tokenizer, options, message):
    with pytest.raises(ConfigError, match=message):
        make_sequence_views("dna-contrastive", tokenizer, options)
