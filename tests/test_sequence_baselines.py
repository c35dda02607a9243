"""Tests of the sequence baseline features, encoder features and reverse-complement consistency."""

from __future__ import annotations

import random

import pytest
import torch

from selfsup.backbones import build_backbone
from selfsup.data.sequences import SequenceSource
from selfsup.errors import DataError
from selfsup.modalities import modality_for_spec
from selfsup.modalities.sequence_baselines import (
    amino_acid_composition, canonical_kmer_classes, canonical_kmer_profile,
    dipeptide_frequencies, encoder_features, evaluation_stream, in_order_batches, kmer_profile,
    protein_composition, rc_consistency, reverse_complement_consistency, reverse_complement_source,
)
from selfsup.tokenize import DnaTokenizer, ProteinTokenizer, reverse_complement
from selfsup.tokenize.alphabets import STANDARD_AMINO_ACIDS

AA = STANDARD_AMINO_ACIDS.index  # column of an amino acid


def test_amino_acid_composition_worked_example():
    # "AALX": three standard residues (X is ambiguous and not counted): A 2/3, L 1/3
    features = amino_acid_composition(["AALX", "w"])
    expected = torch.zeros(2, 20)
    expected[0, AA("A")], expected[0, AA("L")] = 2 / 3, 1 / 3
    expected[1, AA("W")] = 1.0  # lower case reads as upper case
    torch.testing.assert_close(features, expected)


def test_dipeptide_frequencies_worked_example():
    # "AALXA": pairs AA, AL count; LX and XA hold an X and are skipped → AA 1/2, AL 1/2
    features = dipeptide_frequencies(["AALXA", "M"])
    expected = torch.zeros(2, 400)
    expected[0, 20 * AA("A") + AA("A")] = expected[0, 20 * AA("A") + AA("L")] = 0.5
    torch.testing.assert_close(features, expected)  # "M" has no pair: zeros
    assert protein_composition(["AALXA"]).shape == (1, 420)


def test_dipeptides_do_not_run_across_sequences():
    features = dipeptide_frequencies(["A", "L"])
    assert features.sum() == 0


def test_kmer_profile_worked_example():
    # ACGTAN: 4-mers ACGT (0·64 + 1·16 + 2·4 + 3 = 27) and CGTA (1·64 + 2·16 + 3·4 + 0 = 108);
    # GTAN holds an N
    profile = kmer_profile(["ACGTAN"])
    expected = torch.zeros(1, 256)
    expected[0, 27] = expected[0, 108] = 0.5
    torch.testing.assert_close(profile, expected)


def test_canonical_classes_pair_each_kmer_with_its_reverse_complement():
    classes = canonical_kmer_classes(4)
    assert int(classes.max()) + 1 == 136  # (256 − 16 palindromes) / 2 + 16
    letters = "ACGT"

    def index(kmer: str) -> int:
        return sum(letters.index(c) * 4 ** (3 - i) for i, c in enumerate(kmer))

    assert classes[index("AAAA")] == classes[index("TTTT")]
    assert classes[index("ACGT")] not in {classes[index(k)] for k in ("AAAA", "ACGA")}
    assert classes[index("AACG")] == classes[index("CGTT")]
    assert (torch.bincount(classes) <= 2).all()


def test_canonical_profile_is_the_same_for_both_strands_and_sums_the_pair():
    rng = random.Random(0)
    reads = ["".join(rng.choice("ACGT") for _ in range(60)) for _ in range(5)]
    flipped = [reverse_complement(r) for r in reads]
    torch.testing.assert_close(canonical_kmer_profile(reads), canonical_kmer_profile(flipped))
    assert not torch.allclose(kmer_profile(reads), kmer_profile(flipped))
    # worked example: AAAAA has two AAAA windows; AAAA and TTTT share one class, frequency 1
    merged = canonical_kmer_profile(["AAAAA", "TTTTT"])
    assert torch.equal(merged[0], merged[1]) and merged[0].max() == 1.0


def test_each_alphabet_s_modality_names_its_baselines():
    from selfsup.registry import MODALITIES

    assert set(MODALITIES.get("protein").baselines) == {"composition"}
    dna = {name: make(["ACGTACGT"]) for name, make in MODALITIES.get("dna").baselines.items()}
    assert {k: v.shape[1] for k, v in dna.items()} == {"kmer4": 256, "canonical_kmer4": 136}
    assert set(MODALITIES.get("text").fitted_baselines) == {"tfidf"}


def test_rc_consistency_worked_example():
    # orthogonal reads whose reverse complements map to the same vectors: rc cosine 1, random 0
    features = torch.eye(4)
    assert rc_consistency(features, features.clone()) == (1.0, 0.0)
    # two reads, e0 and e1, whose rc features lean towards the other read: r0 = ½e0 + (√3/2)e1,
    # r1 = ½e1 + (√3/2)e0. With two reads the random partner is the other one.
    h = 3**0.5 / 2
    result = rc_consistency(torch.eye(2), torch.tensor([[0.5, h], [h, 0.5]]))
    assert result.rc_cosine == pytest.approx(0.5) and result.random_pair_cosine == pytest.approx(h)
    with pytest.raises(DataError, match="rc consistency"):
        rc_consistency(torch.eye(2), torch.eye(3))


def test_encoder_features_are_in_source_order_and_match_one_at_a_time():
    tokenizer = ProteinTokenizer()
    rng = random.Random(0)
    sequences = ["".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(rng.randint(3, 40)))
                 for _ in range(21)]
    source = SequenceSource([f"p{i}" for i in range(21)], sequences, "protein")
    torch.manual_seed(0)
    encoder = build_backbone({"name": "transformer-tiny", "vocab_size": tokenizer.vocab_size,
                              "dim": 16, "depth": 1, "ffn_dim": 32}, 0, 0)
    features = encoder_features(encoder, source, tokenizer, "cpu", batch_size=4)
    with torch.no_grad():
        one_by_one = torch.cat([encoder(tokenizer.encode_batch([s]).ids) for s in sequences])
    torch.testing.assert_close(features, one_by_one, atol=1e-5, rtol=1e-5)


def test_in_order_batches_sort_the_whole_source_by_length_and_serve_each_index_once():
    tokenizer = ProteinTokenizer()
    rng = random.Random(1)
    # more sequences than one training bucket (50 batches of 2): sorted as a whole all the same
    sequences = ["M" * rng.randint(1, 60) for _ in range(301)]
    source = SequenceSource([f"p{i}" for i in range(301)], sequences, "protein")
    stream = evaluation_stream(source, tokenizer, "cpu", batch_size=2, max_length=32)
    served, widths = [], []
    for indices, tokens in in_order_batches(stream):
        served.extend(indices.tolist())
        widths.append(tokens.ids.shape[1])
        # each row holds its sequence, cut to 30 residues, and the two specials
        first = [min(len(sequences[i]), 30) for i in indices]
        assert tokens.attention_mask.sum(1).tolist() == [n + 2 for n in first]
    assert sorted(served) == list(range(301))
    rows = [min(len(sequence), 30) for sequence in sequences]  # what the rows hold
    assert [rows[i] for i in served] == sorted(rows)
    assert widths == sorted(widths)


def test_reverse_complement_consistency_of_a_strand_invariant_and_a_plain_encoder():
    tokenizer = DnaTokenizer()
    rng = random.Random(0)
    reads = ["".join(rng.choice("ACGT") for _ in range(30)) for _ in range(12)]
    source = SequenceSource([f"r{i}" for i in range(12)], reads, "dna")
    assert reverse_complement_source(source).sequences[0] == reverse_complement(reads[0])
    results = {}
    for invariant in (False, True):
        torch.manual_seed(0)
        encoder = build_backbone({"name": "transformer-tiny", "vocab_size": tokenizer.vocab_size,
                                  "dim": 16, "depth": 1, "ffn_dim": 32, "rc_invariant": invariant,
                                  "tokenizer": {"name": "dna", "k": 1}}, 0, 0)
        results[invariant] = reverse_complement_consistency(
            lambda s, encoder=encoder: encoder_features(encoder, s, tokenizer, "cpu", batch_size=8), source)
    assert results[True].rc_cosine == pytest.approx(1.0, abs=1e-6)
    assert results[False].rc_cosine < 1 - 1e-4
    with pytest.raises(DataError, match="reverse complements are for DNA"):
        reverse_complement_source(SequenceSource(["p"], ["MKV"], "protein"))


def test_sequence_feature_sets_for_dna_hold_every_set_and_rc_consistency():
    tokenizer = DnaTokenizer()
    rng = random.Random(1)
    reads = ["".join(rng.choice("ACGT") for _ in range(rng.randint(20, 30))) for _ in range(30)]
    train = SequenceSource([f"r{i}" for i in range(20)], reads[:20], "dna", torch.arange(20) % 2)
    test = SequenceSource([f"t{i}" for i in range(10)], reads[20:], "dna", torch.arange(10) % 2)
    torch.manual_seed(0)
    encoder = build_backbone({"name": "transformer-tiny", "vocab_size": tokenizer.vocab_size, "dim": 16,
                              "depth": 1, "ffn_dim": 32, "rc_invariant": True,
                              "tokenizer": tokenizer.config()}, 0, 0)
    spec = {"backbone": encoder.config(), "in_channels": 0, "image_size": 0,
            "tokenizer": tokenizer.config(), "max_length": 64}
    sets, extras = modality_for_spec(spec).feature_sets(encoder, spec, train, test, "cpu", 8,
                                                         "fp32", baselines=True, seed=0)
    assert {name: (a.shape, b.shape) for name, (a, b) in sets.items()} == {
        "ssl": ((20, 16), (10, 16)), "kmer4": ((20, 256), (10, 256)),
        "canonical_kmer4": ((20, 136), (10, 136)), "random_init": ((20, 16), (10, 16)),
    }
    rc = extras["rc_consistency"]
    assert rc["canonical_kmer4"]["rc_cosine"] == pytest.approx(1.0)  # strand-merged by design
    assert rc["kmer4"]["rc_cosine"] < 0.9  # a read's 4-mers are not its reverse complement's
    assert rc["ssl"]["rc_cosine"] == pytest.approx(1.0, abs=1e-6)  # strand-invariant encoder
    assert rc["random_init"]["rc_cosine"] == pytest.approx(1.0, abs=1e-6)  # same backbone spec
    torch.testing.assert_close(sets["kmer4"][1], kmer_profile(reads[20:]))


def test_sequence_feature_sets_for_text_learn_tfidf_from_the_training_split(tmp_path):
    from selfsup.tokenize.text import TextTokenizer

    train_texts = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog",
                   "the mat and the log"]
    # the first two test texts share words that no training text has
    test_texts = ["quantum flux capacitor", "flux capacitor quantum", "the cat sat"]
    tokenizer = TextTokenizer.train(train_texts, 300)
    tokenizer.save(tmp_path / "tokenizer.json")
    train = SequenceSource([f"r{i}" for i in range(4)], train_texts, "text", torch.arange(4) % 2)
    test = SequenceSource([f"t{i}" for i in range(3)], test_texts, "text", torch.arange(3) % 2)
    torch.manual_seed(0)
    encoder = build_backbone({"name": "transformer-tiny", "vocab_size": tokenizer.vocab_size,
                              "dim": 16, "depth": 1, "ffn_dim": 32}, 0, 0)
    spec = {"backbone": encoder.config(), "in_channels": 0, "image_size": 0, "max_length": 64,
            "tokenizer": {**tokenizer.config(), "file": str(tmp_path / "tokenizer.json")}}
    sets, extras = modality_for_spec(spec).feature_sets(encoder, spec, train, test, "cpu", 2,
                                                         "fp32", baselines=True, seed=0)
    assert set(sets) == {"ssl", "tfidf", "random_init"} and extras == {}
    tfidf_train, tfidf_test = sets["tfidf"]
    assert tfidf_train.shape[1] == tfidf_test.shape[1]
    # words in two test texts would get columns from a fit that saw the test split
    assert torch.equal(tfidf_test[:2], torch.zeros(2, tfidf_test.shape[1]))
    assert tfidf_test[2].norm() == pytest.approx(1.0)  # known words: an L2-normalised row
