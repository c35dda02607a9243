"""A protein run's encoder as a BO featuriser: per-residue states, pooling, refusals."""

import numpy as np
import pytest
import torch

from selfsup.apps import featurize
from selfsup.apps.featurize import RunEmbedding, make_featurizer, run_residue_encoder
from selfsup.errors import ConfigError, DataError
from method_helpers import save_image_run, save_token_run

# Lengths 1 to 10 in no order: with batches of 2, every batch mixes lengths and holds padding.
SEQUENCES = ["MKVLA", "ACDEFGHIKL", "W", "MKV", "YYQRSTN", "PG"]


def states_alone(encoder, tokenizer, sequence):
    """The encoder's states at the residues of ``sequence`` run by itself: no batch, no padding."""
    ids = tokenizer.encode(sequence)[None]
    assert ids[0, 0] == tokenizer.cls_id and ids[0, -1] == tokenizer.eos_id
    with torch.no_grad():
        return encoder.forward_tokens(ids)[0, 1:-1].numpy()


@pytest.fixture
def protein_run(tmp_path):
    encoder, tokenizer = save_token_run(tmp_path / "uniprot-mlm")
    return tmp_path / "uniprot-mlm", encoder, tokenizer


def test_residue_states_match_each_sequence_encoded_alone(protein_run):
    run_dir, encoder, tokenizer = protein_run
    encode = run_residue_encoder(run_dir, batch_size=2, device="cpu")
    residues = encode(SEQUENCES)
    assert len(residues) == len(SEQUENCES)
    for sequence, states in zip(SEQUENCES, residues, strict=True):
        assert states.shape == (len(sequence), 16) and states.dtype == np.float32
        np.testing.assert_allclose(states, states_alone(encoder, tokenizer, sequence),
                                   atol=1e-5, rtol=1e-5)
    # residues differ from one another (the comparison above is not between constants)
    assert np.abs(residues[1][0] - residues[1][1]).max() > 0.1
    again = encode(SEQUENCES)
    assert all(np.array_equal(a, b) for a, b in zip(residues, again, strict=True))


def test_mean_and_sites_pooling_of_a_run(protein_run, monkeypatch):
    run_dir, encoder, tokenizer = protein_run
    sequences = ["MKVLA", "ACDEFGHIKL", "WWY"]
    alone = [states_alone(encoder, tokenizer, s) for s in sequences]
    mean = make_featurizer(str(run_dir), sites=[1, 3], pooling="mean")
    assert mean.name == "uniprot-mlm:mean"
    np.testing.assert_allclose(mean(sequences), [s.mean(0) for s in alone], atol=1e-5)
    # the encoder is asked for a few residues at a time: slicing changes nothing
    monkeypatch.setattr(featurize, "RESIDUES_PER_CALL", 6)
    sites = RunEmbedding(run_dir, "sites", sites=[1, 3])
    np.testing.assert_allclose(sites(sequences), [(s[0] + s[2]) / 2 for s in alone], atol=1e-5)
    assert sites.cache_path(sequences).is_file()


@pytest.mark.parametrize("budget", [1, 4, 7, 100])
def test_residue_slices_keep_order_and_budget(budget):
    sequences = ["AAAA", "C", "DDD", "EEEEEE", "F"]
    slices = featurize._residue_slices(sequences, budget)
    assert [s for part in slices for s in part] == sequences
    assert all(len(part) == 1 or sum(map(len, part)) <= budget for part in slices)


def test_image_and_dna_runs_are_refused(tmp_path):
    image_run = tmp_path / "simclr-mnist"
    save_image_run(image_run)
    with pytest.raises(ConfigError, match=r"small-cnn\) reads images.*onehot or descriptors"):
        run_residue_encoder(image_run)
    save_token_run(tmp_path / "dna", tokenizer_name="dna")
    with pytest.raises(ConfigError, match="reads dna sequences.*not protein.*--method mlm"):
        RunEmbedding(tmp_path / "dna", "mean")
    with pytest.raises(ConfigError, match="holds no trained encoder"):
        run_residue_encoder(tmp_path)


def test_long_sequences_and_unknown_letters_get_named_errors(tmp_path):
    save_token_run(tmp_path / "run", max_length=8)  # 6 residues + <cls> + <eos>
    encode = run_residue_encoder(tmp_path / "run")
    assert encode(["MKVLAW"])[0].shape == (6, 16)
    with pytest.raises(DataError, match="sequence 2 has 7 residues, more than the 6"):
        encode(["MKV", "MKVLAWY"])
    with pytest.raises(DataError, match=r"'sequence 2'.*invalid character 'J' at position 3"):
        encode(["MKV", "MKJ"])
    save_token_run(tmp_path / "learned", positions="learned", max_positions=5)
    with pytest.raises(DataError, match="4 residues, more than the 3"):
        run_residue_encoder(tmp_path / "learned")(["MKVL"])
