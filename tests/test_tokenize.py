"""Tests of the protein and DNA tokenisers, string reverse complements and k-mer span masking."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from selfsup.errors import ConfigError, DataError
from selfsup.tokenize import (
    DnaTokenizer, KmerDnaTokenizer, ProteinTokenizer, expand_kmer_mask, make_tokenizer,
    reverse_complement,
)
from selfsup.tokenize.alphabets import PROTEIN_LETTERS, to_dna_letters

FAST = settings(max_examples=60, deadline=None)


def mixed_case(alphabet: str, min_size: int = 0, max_size: int = 40):
    return st.text(alphabet=alphabet + alphabet.lower(), min_size=min_size, max_size=max_size)


def naive_reverse_complement(sequence: str) -> str:
    """Letter by letter from the definition, for upper-case A C G T N."""
    pairs = {"A": "T", "T": "A", "C": "G", "G": "C", "N": "N"}
    return "".join(pairs[letter] for letter in reversed(sequence))


# ---------------------------------------------------------------- vocabularies


def test_protein_vocabulary_is_esm_style():
    tok = ProteinTokenizer()
    assert tok.tokens[:4] == ["<cls>", "<pad>", "<eos>", "<unk>"] and tok.tokens[-1] == "<mask>"
    assert "".join(tok.tokens[4:-1]) == "LAGVSERTIDPKQNFYMHWCXBUZO"
    assert tok.vocab_size == 30 and tok.mask_id == 29
    assert sorted(tok.tokens[i] for i in tok.replacement_ids) == sorted("ACDEFGHIKLMNPQRSTVWY")


def test_dna_vocabularies():
    assert DnaTokenizer().tokens == ["<cls>", "<pad>", "<eos>", "<unk>", *"ACGTN", "<mask>"]
    kmers = KmerDnaTokenizer(3)
    assert kmers.vocab_size == 4 ** 3 + 5
    assert kmers.tokens[4:-1] == ["".join(p) for p in itertools.product("ACGT", repeat=3)]


def test_make_tokenizer_and_config_round_trip():
    for tok in (ProteinTokenizer(), DnaTokenizer(), KmerDnaTokenizer(4)):
        rebuilt = make_tokenizer(**tok.config())
        assert type(rebuilt) is type(tok) and rebuilt.tokens == tok.tokens
    with pytest.raises(ConfigError, match="unknown tokeniser 'rna'"):
        make_tokenizer("rna")
    with pytest.raises(ConfigError, match="k=3"):
        make_tokenizer("protein", k=3)
    with pytest.raises(ConfigError, match="k-mer size"):
        KmerDnaTokenizer(0)


# ---------------------------------------------------------------- round trips


@FAST
@given(mixed_case(PROTEIN_LETTERS))
def test_protein_round_trip(sequence):
    tok = ProteinTokenizer()
    ids = tok.encode(sequence)
    assert ids.dtype == torch.int64 and len(ids) == len(sequence) + 2
    assert ids[0] == tok.cls_id and ids[-1] == tok.eos_id
    assert [tok.tokens[i] for i in ids[1:-1]] == list(sequence.upper())
    assert tok.decode(ids) == sequence.upper()


@FAST
@given(mixed_case("ACGTN"))
def test_dna_round_trip(sequence):
    tok = DnaTokenizer()
    assert tok.decode(tok.encode(sequence)) == sequence.upper()


@FAST
@given(st.integers(1, 5), mixed_case("ACGT", min_size=5))
def test_kmer_round_trip_and_tokens_spell_the_windows(k, sequence):
    tok = KmerDnaTokenizer(k)
    ids = tok.encode(sequence)
    upper = sequence.upper()
    assert [tok.tokens[i] for i in ids[1:-1]] == [upper[i:i + k] for i in range(len(upper) - k + 1)]
    assert tok.decode(ids) == upper


@FAST
@given(st.integers(2, 4), mixed_case("ACGTN", min_size=4))
def test_kmer_with_n_decodes_every_letter_some_clean_kmer_holds(k, sequence):
    tok = KmerDnaTokenizer(k)
    upper = sequence.upper()
    ids = tok.encode(upper)[1:-1]
    windows = [upper[i:i + k] for i in range(len(upper) - k + 1)]
    assert [tok.tokens[i] for i in ids] == [w if "N" not in w else "<unk>" for w in windows]
    decoded = tok.decode(ids)
    for j, letter in enumerate(upper):
        holders = range(max(0, j - k + 1), min(j, len(windows) - 1) + 1)
        held_by_clean = any("N" not in windows[i] for i in holders)
        assert decoded[j] == (letter if held_by_clean else "N")


def test_batch_padding_and_attention_mask():
    tok = ProteinTokenizer()
    batch = tok.encode_batch(["MKV", "a", "WWWWW"])
    assert batch.ids.shape == (3, 7) and batch.ids.dtype == torch.int64
    lengths = torch.tensor([5, 3, 7])
    assert torch.equal(batch.attention_mask, torch.arange(7) < lengths[:, None])
    assert (batch.ids[~batch.attention_mask] == tok.pad_id).all()
    assert tok.decode_batch(batch.ids) == ["MKV", "A", "WWWWW"]


def test_max_length_truncates_the_sequence_and_keeps_the_specials():
    tok = DnaTokenizer()
    ids = tok.encode("ACGTACGT", max_length=5)
    assert ids.tolist() == [tok.cls_id, *tok.encode("ACG")[1:-1].tolist(), tok.eos_id]
    with pytest.raises(DataError, match="max_length=2 leaves no room"):
        tok.encode("ACGT", max_length=2)


def test_empty_batch_is_an_error():
    with pytest.raises(DataError, match="0 sequences"):
        DnaTokenizer().encode_batch([])


# ---------------------------------------------------------------- invalid input


@pytest.mark.parametrize("tok, sequence, bad, position", [
    (ProteinTokenizer(), "MKVJL", "J", 4),
    (ProteinTokenizer(), "mk*", "*", 3),
    (DnaTokenizer(), "ACGU", "U", 4),
    (DnaTokenizer(), "AC GT", " ", 3),
    (KmerDnaTokenizer(3), "ACGTR", "R", 5),
    (DnaTokenizer(), "ACGé", "é", 4),
])
def test_invalid_character_names_character_position_and_record(tok, sequence, bad, position):
    with pytest.raises(DataError) as error:
        tok.encode(sequence, name="seq7")
    message = str(error.value)
    assert f"invalid character {bad!r} at position {position}" in message and "'seq7'" in message


def test_kmer_sequence_shorter_than_k_is_an_error():
    with pytest.raises(DataError, match="length 2 is shorter than k=3"):
        KmerDnaTokenizer(3).encode("AC")


# ---------------------------------------------------------------- reverse complement of strings


def test_reverse_complement_worked_example_keeps_case_and_n():
    assert reverse_complement("AACgtN") == "NacGTT"
    assert reverse_complement("") == ""


@FAST
@given(mixed_case("ACGTN"))
def test_reverse_complement_is_an_involution_matching_the_definition(sequence):
    assert reverse_complement(reverse_complement(sequence)) == sequence
    assert reverse_complement(sequence).upper() == naive_reverse_complement(sequence.upper())


def test_reverse_complement_rejects_other_letters():
    with pytest.raises(DataError, match="invalid character 'R' at position 3"):
        reverse_complement("ACRT")


def test_iupac_codes_fold_into_n():
    assert to_dna_letters("acgtRYswkmBDHVnu") == "ACGTNNNNNNNNNNNT"


def test_kmer_complement_table_maps_each_kmer_to_its_reverse_complement():
    tok = KmerDnaTokenizer(3)
    for i in range(tok.first_ordinary_id, tok.mask_id):
        partner = tok.complement_ids[i]
        assert tok.tokens[partner] == naive_reverse_complement(tok.tokens[i])
        assert tok.complement_ids[partner] == i
    for special in tok.special_ids:
        assert tok.complement_ids[special] == special


# ---------------------------------------------------------------- k-mer span masking


def hidden_letters(masked: list[bool], k: int) -> set[int]:
    """Letters no visible k-mer holds: letter j is held by k-mers j-k+1 … j (those that exist)."""
    n = len(masked)
    return {j for j in range(n + k - 1)
            if all(masked[i] for i in range(max(0, j - k + 1), min(j, n - 1) + 1))}


@FAST
@given(st.integers(1, 6), st.lists(st.booleans(), min_size=1, max_size=30))
def test_expanded_kmer_mask_leaves_every_masked_kmer_unreadable(k, chosen):
    mask = torch.tensor([chosen])
    expanded = expand_kmer_mask(mask, k)[0].tolist()
    assert all(e for c, e in zip(chosen, expanded) if c)  # the chosen tokens stay masked
    hidden = hidden_letters(expanded, k)
    for t, is_masked in enumerate(expanded):
        if is_masked:  # a masked k-mer holds a letter no visible k-mer shows
            assert any(j in hidden for j in range(t, t + k))
            # and it lies in the span of k tokens around some chosen token
            centres = range(max(0, t - k // 2), min(len(chosen), t + (k - 1) // 2 + 1))
            assert any(chosen[c] for c in centres)


def test_single_token_masking_would_leak_but_a_span_does_not():
    # the reason for the expansion: one masked 3-mer is spelled out by its two neighbours
    one = [False] * 4 + [True] + [False] * 4
    assert hidden_letters(one, 3) == set()
    span = expand_kmer_mask(torch.tensor([one]), 3)[0].tolist()
    assert span == [False] * 3 + [True] * 3 + [False] * 3
    assert hidden_letters(span, 3) == {5}
