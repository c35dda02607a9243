"""Tests of the batched sequence views (reverse complement, crops, noise, masking), MLM loss."""

from __future__ import annotations

import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from selfsup.errors import ConfigError, DataError
from selfsup.losses import masked_token_cross_entropy
from selfsup.tokenize import (
    IGNORE_LABEL, DnaTokenizer, KmerDnaTokenizer, ProteinTokenizer, reverse_complement,
)
from selfsup.tokenize.alphabets import STANDARD_AMINO_ACIDS
from selfsup.views.sequence import (
    bert_mask, content_mask, random_crop, random_mask, random_shift,
    reverse_complement as reverse_complement_ids, substitute,
)

FAST = settings(max_examples=40, deadline=None)
DNA = DnaTokenizer()


def generator(seed: int = 0, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def random_strings(count: int, length: int, letters: str, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(letters) for _ in range(length)) for _ in range(count)]


def within_binomial(observed: float, p: float, n: int, sigmas: float = 5.0) -> bool:
    """Whether a share ``observed`` of ``n`` draws is within ``sigmas`` standard errors of ``p``."""
    return abs(observed - p) <= sigmas * math.sqrt(p * (1 - p) / n)


dna_batches = st.lists(st.text(alphabet="ACGTNacgtn", max_size=20), min_size=1, max_size=6)


# ---------------------------------------------------------------- reverse complement


def test_reverse_complement_worked_example_with_n_lowercase_and_padding():
    batch = DNA.encode_batch(["AACgtN", "GG"])
    flipped = reverse_complement_ids(batch.ids, DNA)
    assert DNA.decode_batch(flipped) == ["NACGTT", "CC"]
    assert flipped[:, 0].eq(DNA.cls_id).all()
    assert torch.equal(flipped == DNA.pad_id, batch.ids == DNA.pad_id)  # padding stays at the end
    assert flipped[1, 3] == DNA.eos_id


@FAST
@given(dna_batches)
def test_reverse_complement_ids_match_strings_and_undo_themselves(sequences):
    ids = DNA.encode_batch(sequences).ids
    flipped = reverse_complement_ids(ids, DNA)
    assert torch.equal(flipped, DNA.encode_batch([reverse_complement(s) for s in sequences]).ids)
    assert torch.equal(reverse_complement_ids(flipped, DNA), ids)
    assert flipped.shape == ids.shape
    letters = set(range(DNA.first_ordinary_id, DNA.mask_id))
    assert set(flipped[content_mask(flipped, DNA)].tolist()) <= letters


@FAST
@given(st.lists(st.text(alphabet="ACGT", min_size=3, max_size=20), min_size=1, max_size=5))
def test_reverse_complement_of_kmer_ids_is_the_kmers_of_the_other_strand(sequences):
    tok = KmerDnaTokenizer(3)
    ids = tok.encode_batch(sequences).ids
    flipped = reverse_complement_ids(ids, tok)
    assert torch.equal(flipped, tok.encode_batch([reverse_complement(s) for s in sequences]).ids)
    assert torch.equal(reverse_complement_ids(flipped, tok), ids)


def test_reverse_complement_needs_a_dna_tokenizer():
    protein = ProteinTokenizer()
    with pytest.raises(DataError, match="no reverse complement"):
        reverse_complement_ids(protein.encode_batch(["MK"]).ids, protein)


def test_views_reject_a_batch_that_is_not_int64_ids():
    with pytest.raises(DataError, match="int64 batch of token ids"):
        reverse_complement_ids(torch.zeros(2, 3), DNA)


# ---------------------------------------------------------------- crops and shifts


def test_random_crop_gives_windows_in_the_tokeniser_layout():
    sequences = ["ACGTACGTAC", "GGA", "TTTTTCCCCC"]
    batch = DNA.encode_batch(sequences).ids
    crops = random_crop(batch, DNA, 5, generator())
    assert crops.shape == (3, 7)
    for sequence, crop, row in zip(sequences, DNA.decode_batch(crops), crops):
        assert len(crop) == min(5, len(sequence)) and crop in sequence
        assert row[0] == DNA.cls_id and row[len(crop) + 1] == DNA.eos_id
        assert (row[len(crop) + 2:] == DNA.pad_id).all()


def test_random_crop_start_is_uniform():
    sequence = "ACGTTGCA"  # every 5-letter window differs, so a crop tells its start
    batch = DNA.encode_batch([sequence] * 800).ids
    crops = DNA.decode_batch(random_crop(batch, DNA, 5, generator(1)))
    starts = [sequence.index(crop) for crop in crops]
    counts = torch.bincount(torch.tensor(starts), minlength=4)
    assert len(counts) == 4  # starts 0 … 3, all possible
    assert all(within_binomial(c / 800, 0.25, 800) for c in counts.tolist())


def test_random_shift_drops_max_shift_tokens_split_between_the_ends():
    sequence = "ACGTTGCAAC"
    batch = DNA.encode_batch([sequence] * 200).ids
    shifted = random_shift(batch, DNA, 3, generator(2))
    assert shifted.shape == batch.shape
    starts = set()
    for crop in DNA.decode_batch(shifted):
        assert len(crop) == len(sequence) - 3
        starts.add(sequence.index(crop))
    assert starts == {0, 1, 2, 3}


def test_crops_are_seeded():
    batch = DNA.encode_batch(random_strings(16, 30, "ACGT")).ids
    first, again, other = (random_crop(batch, DNA, 10, generator(seed)) for seed in (5, 5, 6))
    assert torch.equal(first, again) and not torch.equal(first, other)


# ---------------------------------------------------------------- substitution noise


def test_substitution_rate_and_targets():
    sequences = random_strings(200, 100, "ACGTN", seed=3)
    batch = DNA.encode_batch(sequences).ids
    noisy = substitute(batch, DNA, 0.1, generator(3))
    n_id = DNA.index["N"]
    is_base = content_mask(batch, DNA) & (batch != n_id)
    changed = noisy != batch
    assert not changed[~is_base].any()  # N, specials and padding stay
    assert within_binomial(changed[is_base].float().mean().item(), 0.1, int(is_base.sum()))
    # a substitution lands on each of the three other bases equally often
    a_id = DNA.index["A"]
    from_a = noisy[changed & (batch == a_id)]
    assert not (from_a == a_id).any()
    for other in "CGT":
        share = (from_a == DNA.index[other]).float().mean().item()
        assert within_binomial(share, 1 / 3, len(from_a))


@pytest.mark.parametrize("k", [2, 4])
def test_substitution_on_kmers_changes_letters_not_tokens(k):
    """Noise on k-mer tokens is noise on the letters: the output is the k-merisation of a string
    of the same length that differs from the input in about ``rate`` of its letters, uniformly
    to the other three bases, and a changed letter changes every k-mer that holds it."""
    tok = KmerDnaTokenizer(k)
    sequences = random_strings(300, 60, "ACGT", seed=k)
    batch = tok.encode_batch(sequences).ids
    noisy = substitute(batch, tok, 0.1, generator(k))
    decoded = tok.decode_batch(noisy)
    assert torch.equal(tok.encode_batch(decoded).ids, noisy)  # a valid k-merisation
    letters = torch.tensor([[ord(c) for c in s] for s in sequences])
    noisy_letters = torch.tensor([[ord(c) for c in s] for s in decoded])
    changed = noisy_letters != letters
    assert within_binomial(changed.float().mean().item(), 0.1, changed.numel())
    from_a = noisy_letters[changed & (letters == ord("A"))]
    for other in "CGT":
        assert within_binomial((from_a == ord(other)).float().mean().item(), 1 / 3, len(from_a))
    # tokens that changed are exactly the k-mers holding a changed letter
    holds_change = changed.float().unfold(1, k, 1).amax(dim=-1) > 0
    assert torch.equal(noisy[:, 1:-1] != batch[:, 1:-1], holds_change)


def test_substitution_on_kmers_keeps_unknown_kmers_specials_and_padding():
    tok = KmerDnaTokenizer(3)
    batch = tok.encode_batch(["ACGTNACGTACG", "ACNNNGT", "ACG"]).ids
    noisy = substitute(batch, tok, 1.0, generator(1))
    not_kmer = (batch < tok.first_ordinary_id) | (batch == tok.unk_id) | (batch >= tok.mask_id)
    assert torch.equal(noisy[not_kmer], batch[not_kmer])
    kmer = ~not_kmer
    assert (noisy[kmer] != batch[kmer]).all()  # rate 1: every letter of every k-mer changed
    for original, changed in zip(tok.decode_batch(batch), tok.decode_batch(noisy)):
        assert len(changed) == len(original)
        assert all((a == "N") == (b == "N") for a, b in zip(original, changed))
    assert torch.equal(substitute(batch, tok, 0.0, generator(1)), batch)


def test_rates_outside_zero_one_are_refused():
    batch = DNA.encode_batch(["ACGT"]).ids
    with pytest.raises(ConfigError, match="must be in \\[0, 1\\]"):
        substitute(batch, DNA, 1.5, generator())
    with pytest.raises(ConfigError, match="must be in \\[0, 1\\]"):
        bert_mask(batch, DNA, generator(), rate=-0.1)


# ---------------------------------------------------------------- masking


def protein_batch_with_specials(count: int = 64,
                                length: int = 200) -> tuple[ProteinTokenizer, torch.Tensor]:
    """Protein ids of varied lengths (so there is padding), one stray <mask> and one <unk>."""
    tok = ProteinTokenizer()
    rng = random.Random(0)
    lengths = [rng.randint(length // 2, length) for _ in range(count)]
    sequences = ["".join(rng.choices(STANDARD_AMINO_ACIDS + "X", k=n)) for n in lengths]
    ids = tok.encode_batch(sequences).ids
    ids[0, 5], ids[1, 7] = tok.mask_id, tok.unk_id
    return tok, ids


def test_random_mask_masks_the_rate_of_ordinary_tokens_only():
    tok, ids = protein_batch_with_specials()
    masked, mask = random_mask(ids, tok, 0.3, generator(4))
    ordinary = ~tok.table("special", "cpu")[ids]
    assert not mask[~ordinary].any()
    assert torch.equal(masked[mask], torch.full((int(mask.sum()),), tok.mask_id))
    assert torch.equal(masked[~mask], ids[~mask])
    assert within_binomial(mask[ordinary].float().mean().item(), 0.3, int(ordinary.sum()))


def test_bert_masking_statistics_are_15_80_10_10():
    tok, ids = protein_batch_with_specials()
    ordinary = ~tok.table("special", "cpu")[ids]
    draws = [bert_mask(ids, tok, generator(seed)) for seed in range(4)]
    inputs = torch.stack([d.inputs for d in draws])
    labels = torch.stack([d.labels for d in draws])
    original, eligible = ids.expand_as(inputs), ordinary.expand_as(inputs)
    chosen = labels != IGNORE_LABEL

    assert not chosen[~eligible].any()  # specials, the stray <mask>/<unk> and padding never chosen
    assert torch.equal(inputs[~chosen], original[~chosen])  # unchosen tokens are untouched
    assert torch.equal(labels[chosen], original[chosen])  # labels are the true tokens
    n_eligible, n_chosen = int(eligible.sum()), int(chosen.sum())
    assert within_binomial(n_chosen / n_eligible, 0.15, n_eligible)

    became_mask = (inputs[chosen] == tok.mask_id).float().mean().item()
    kept = (inputs[chosen] == original[chosen]).float().mean().item()
    replaced = 1 - became_mask - kept
    # the random 10% draws uniformly from the 20 standard amino acids, so it may redraw the truth
    # (1 time in 20 for a standard residue, never for an X)
    p_redraw = (original[chosen] != tok.index["X"]).float().mean().item() / 20
    assert within_binomial(became_mask, 0.8, n_chosen)
    assert within_binomial(kept, 0.1 + 0.1 * p_redraw, n_chosen)
    assert within_binomial(replaced, 0.1 * (1 - p_redraw), n_chosen)
    random_tokens = inputs[chosen & (inputs != tok.mask_id) & (inputs != original)]
    assert set(random_tokens.tolist()) <= set(tok.replacement_ids)


def test_bert_masking_is_seeded():
    tok, ids = protein_batch_with_specials(8, 40)
    first, again, other = (bert_mask(ids, tok, generator(s)) for s in (1, 1, 2))
    assert torch.equal(first.inputs, again.inputs) and torch.equal(first.labels, again.labels)
    assert not torch.equal(first.labels, other.labels)


def test_bert_mask_fractions_must_fit():
    with pytest.raises(ConfigError, match="sum to at most 1"):
        bert_mask(DNA.encode_batch(["ACGT"]).ids, DNA, generator(),
                  mask_fraction=0.95, random_fraction=0.1)


def test_kmer_masking_hides_spans_at_the_target_share():
    k, rate = 3, 0.15
    tok = KmerDnaTokenizer(k)
    ids = tok.encode_batch(random_strings(64, 300, "ACGT", seed=9)).ids
    labels = bert_mask(ids, tok, generator(7), rate=rate).labels
    chosen = labels != IGNORE_LABEL
    assert not chosen[~content_mask(ids, tok)].any()
    for row in chosen[:, 1:-1].tolist():  # every sequence has 298 3-mers, framed by <cls> <eos>
        runs = "".join("1" if c else "0" for c in row)
        # whole spans of k or more; only a span cut by a sequence end may be shorter
        inner_runs = runs.strip("1").split("0")
        assert all(len(run) >= k for run in inner_runs if run)
    # a token is masked when any of the k span centres around it was drawn at rate / k
    interior = chosen[:, k + 1:-k - 1]
    expected = 1 - (1 - rate / k) ** k
    assert within_binomial(interior.float().mean().item(), expected, interior.numel())


# ---------------------------------------------------------------- the masked-modelling loss


def test_masked_token_cross_entropy_worked_example():
    # one sequence of four positions; the model puts 0.75 and 0.40 on the two masked true residues
    probabilities = torch.tensor([
        [0.25, 0.25, 0.25, 0.25],
        [0.75, 0.05, 0.10, 0.10],
        [0.25, 0.25, 0.25, 0.25],
        [0.30, 0.40, 0.20, 0.10],
    ])
    labels = torch.tensor([[IGNORE_LABEL, 0, IGNORE_LABEL, 1]])
    loss = masked_token_cross_entropy(probabilities.log().unsqueeze(0), labels)
    assert loss.item() == pytest.approx((-math.log(0.75) - math.log(0.40)) / 2, abs=1e-6)
    assert round(loss.item(), 4) == 0.6020


def test_masked_token_cross_entropy_averages_over_chosen_tokens_of_the_batch():
    logits = torch.randn(2, 5, 7, requires_grad=True)
    labels = torch.full((2, 5), IGNORE_LABEL)
    labels[0, 1], labels[1, 0], labels[1, 4] = 3, 6, 0
    loss = masked_token_cross_entropy(logits, labels)
    log_p = logits.log_softmax(-1)
    expected = -(log_p[0, 1, 3] + log_p[1, 0, 6] + log_p[1, 4, 0]) / 3
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    touched = logits.grad.abs().sum(-1) > 0
    assert torch.equal(touched, labels != IGNORE_LABEL)  # unchosen positions get no gradient


def test_masked_token_cross_entropy_with_nothing_chosen_is_zero_and_differentiable():
    logits = torch.randn(1, 4, 5, requires_grad=True)
    loss = masked_token_cross_entropy(logits, torch.full((1, 4), IGNORE_LABEL))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_masked_token_cross_entropy_checks_shapes():
    with pytest.raises(ValueError, match="labels' shape plus one vocabulary dimension"):
        masked_token_cross_entropy(torch.zeros(2, 5, 7), torch.zeros(2, 4, dtype=torch.int64))


# ---------------------------------------------------------------- devices


@pytest.mark.gpu
def test_views_run_on_the_ids_device():
    ids = DNA.encode_batch(random_strings(8, 50, "ACGTN")).ids.cuda()
    g = generator(0, "cuda")
    for out in (reverse_complement_ids(ids, DNA), random_crop(ids, DNA, 20, g),
                substitute(ids, DNA, 0.1, g), *bert_mask(ids, DNA, g)):
        assert out.device == ids.device
    with pytest.raises(DataError, match="generator lives on cpu"):
        bert_mask(ids, DNA, generator(0))
