"""Featurisers: one-hot, descriptors, variable sites and a run's embeddings (no BoTorch needed)."""

import json
import re

import numpy as np
import pytest

from selfsup.apps import featurize
from selfsup.apps.bo import prepare_features
from selfsup.apps.featurize import (DESCRIPTOR_TABLE, Descriptors, OneHot, RunEmbedding,
                                    make_featurizer, variable_sites)
from selfsup.errors import ConfigError, DataError
from selfsup.tokenize.alphabets import STANDARD_AMINO_ACIDS as AA


def test_onehot_of_sites_on_a_worked_example():
    features = OneHot(sites=[2, 3])(["ACD", "AWE"])
    assert features.shape == (2, 2 * 20)
    expected = np.zeros((2, 40), np.float32)
    expected[0, AA.index("C")] = expected[0, 20 + AA.index("D")] = 1
    expected[1, AA.index("W")] = expected[1, 20 + AA.index("E")] = 1
    np.testing.assert_array_equal(features, expected)


def test_onehot_of_every_position_has_one_hit_per_residue():
    features = OneHot()(["ACD", "AWE"])
    assert features.shape == (2, 60) and features.sum(1).tolist() == [3, 3]
    assert features[1, 20 + AA.index("W")] == 1


def test_unknown_residue_is_named_with_its_position():
    with pytest.raises(DataError, match=r"sequence 2, position 3: 'X'"):
        OneHot(sites=[1, 3])(["ACD", "ACX"])


def test_unequal_lengths_need_sites():
    with pytest.raises(DataError, match="equal length"):
        OneHot()(["ACD", "AC"])


def test_descriptors_are_the_standardised_scales():
    hydropathy = np.array([DESCRIPTOR_TABLE[a][0] for a in AA])
    features = Descriptors(sites=[1])(["I", "R"])
    expected_i = (4.5 - hydropathy.mean()) / hydropathy.std()  # Kyte-Doolittle: I = 4.5
    assert features.shape == (2, 4)
    assert features[0, 0] == pytest.approx(expected_i, rel=1e-5)
    table = Descriptors().table
    np.testing.assert_allclose(table.mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(table.std(0), 1, atol=1e-5)
    assert features[1, 2] > features[0, 2]  # charge: arginine +1, isoleucine 0


def test_variable_sites_are_one_based():
    assert variable_sites(["AAAA", "ACAA", "AAAT"]) == [2, 4]


class CountingEncoder:
    """Per-residue embeddings: row i of a sequence is [i, ord(residue)]."""

    def __init__(self):
        self.calls = 0

    def __call__(self, sequences):
        self.calls += 1
        return [np.array([[i, ord(r)] for i, r in enumerate(s)], float) for s in sequences]


SITE_FEATURIZERS = {
    "onehot": lambda run_dir, sites: OneHot(sites),
    "descriptors": lambda run_dir, sites: Descriptors(sites),
    "run-sites": lambda run_dir, sites: RunEmbedding(run_dir, "sites", sites,
                                                     encode=CountingEncoder()),
}


@pytest.mark.parametrize("kind", SITE_FEATURIZERS)
@pytest.mark.parametrize("sites", [[0], [2, -1], []])
def test_sites_must_be_one_based_positions_when_built(tmp_path, kind, sites):
    # site 0 or -1 would otherwise index from the sequence's end
    with pytest.raises(ConfigError, match=re.escape(f"sites {sites}: give the 1-based positions")):
        SITE_FEATURIZERS[kind](tmp_path, sites)


def test_run_embedding_pools_and_caches(tmp_path):
    encoder = CountingEncoder()
    mean = RunEmbedding(tmp_path, "mean", encode=encoder)
    np.testing.assert_allclose(mean(["AC", "WWW"]), [[0.5, (65 + 67) / 2], [1.0, ord("W")]])
    sites = RunEmbedding(tmp_path, "sites", sites=[1, 3], encode=encoder)
    np.testing.assert_allclose(sites(["ACD"]), [[1.0, (65 + 68) / 2]])
    assert encoder.calls == 2
    mean(["AC", "WWW"])  # cached: the encoder is not called again
    assert encoder.calls == 2
    assert mean.cache_path(["AC", "WWW"]).parent == tmp_path / "bo-embeddings"
    assert mean.cache_path(["AC", "WWW"]) != mean.cache_path(["AC", "WWY"])
    before = mean.cache_path(["AC", "WWW"])
    (tmp_path / "encoder.safetensors").write_bytes(b"retrained")
    assert mean.cache_path(["AC", "WWW"]) != before  # a new encoder does not reuse old embeddings


def test_run_embedding_needs_residue_aligned_output(tmp_path):
    def with_special_tokens(sequences):
        return [np.zeros((len(s) + 2, 3)) for s in sequences]

    with pytest.raises(DataError, match="special tokens"):
        RunEmbedding(tmp_path, encode=with_special_tokens)(["ACD"])


def test_run_dirs_without_a_sequence_encoder_are_refused_clearly(tmp_path):
    with pytest.raises(ConfigError, match="onehot or descriptors"):
        make_featurizer(str(tmp_path))
    with pytest.raises(ConfigError, match="pooling"):
        RunEmbedding(tmp_path, "max", encode=CountingEncoder())
    with pytest.raises(ConfigError, match="featurizer 'nope'"):
        make_featurizer("nope")


def run_dir_with_spec(run_dir, spec):
    """A run directory as `selfsup pretrain` lays it out; the weights are never read here."""
    run_dir.mkdir()
    (run_dir / featurize.ENCODER_SPEC_FILE).write_text(json.dumps(spec))
    (run_dir / featurize.ENCODER_FILE).write_bytes(b"weights")
    return run_dir


@pytest.fixture
def encoder_loads(monkeypatch):
    """The run directories whose encoder ``RunEmbedding`` loads (a ``CountingEncoder`` each)."""
    loads = []

    def load(run_dir):
        loads.append(run_dir)
        return CountingEncoder()

    monkeypatch.setattr(featurize, "run_residue_encoder", load)
    return loads


def test_run_embedding_loads_the_encoder_only_on_a_cache_miss(tmp_path, encoder_loads):
    run = run_dir_with_spec(tmp_path / "run", {"backbone": {"name": "transformer-tiny"},
                                               "tokenizer": {"name": "protein"}})
    featurizer = RunEmbedding(run, "mean")
    assert encoder_loads == []
    embedded = featurizer(["ACD", "WY"])
    assert encoder_loads == [run]
    cached = RunEmbedding(run, "mean")(["ACD", "WY"])
    assert encoder_loads == [run]  # the pool was cached: no weights loaded
    np.testing.assert_array_equal(cached, embedded)


@pytest.mark.parametrize("spec,message", [
    ({"backbone": {"name": "small-cnn"}}, r"\(small-cnn\) reads images"),
    ({"backbone": {"name": "transformer-tiny"}, "tokenizer": {"name": "dna"}}, "reads dna sequences"),
])
def test_non_protein_runs_are_refused_when_built_from_their_spec_alone(tmp_path, spec, message):
    run = run_dir_with_spec(tmp_path / "run", spec)  # unreadable weights: reading them would fail
    with pytest.raises(ConfigError, match=message + ".*onehot or descriptors"):
        RunEmbedding(run, "mean")


def test_only_learnt_embeddings_are_reduced_before_the_gp(tmp_path):
    """One-hot columns carry evenly spread variance: the surrogate must see all 80 of four sites
    (a PCA to 32 would keep under half of it), while a run's dense embedding is reduced."""
    rng = np.random.default_rng(0)
    variants = ["".join(rng.choice(list(AA), 6)) for _ in range(300)]
    for featurizer, columns in ((OneHot([1, 2, 3, 4]), 80), (Descriptors([1, 2, 3, 4]), 16)):
        assert prepare_features(featurizer(variants), featurizer.max_dims).shape == (300, columns)
    embedding = RunEmbedding(tmp_path, "mean", encode=lambda seqs: [rng.normal(size=(len(s), 64))
                                                                     for s in seqs])
    assert prepare_features(embedding(variants), embedding.max_dims).shape == (300, 32)
