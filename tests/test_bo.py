"""The GP surrogate, batch proposals, input files and `selfsup bo` (featurisers: test_featurize)."""

import csv
import gzip
import importlib.util
import math

import numpy as np
import pytest
import torch

from selfsup.apps.bo import (OUTPUT_COLUMNS, fit_gp, posterior_mean_std, prepare_features,
                             propose, read_measurements, read_pool)
from selfsup.apps.featurize import Descriptors
from selfsup.cli import main
from selfsup.errors import ConfigError, DataError

# BoTorch is optional (pip install "selfsup[bo]"): only fitting and acquisition need it
needs_botorch = pytest.mark.skipif(importlib.util.find_spec("botorch") is None,
                                   reason="BoTorch is needed: pip install botorch")

# ----------------------------------------------------------------------------------------------
# surrogate and proposals


# A fixed noise keeps the tiny fits fast: learning the noise of a noiseless toy function takes
# the optimiser ~200 steps, a fixed one ~30. The file-level tests below learn it.
NOISE = 1e-3


def small_pool(seed=0, size=60):
    """A pool of 3-site variants over 5 residues and a smooth fitness of their descriptors."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("AILKD"))
    variants = sorted({"".join(rng.choice(letters, 3)) for _ in range(400)})[:size]
    features = Descriptors()(variants)
    fitness = np.sin(features[:, 0]) + 0.5 * features[:, 4] - 0.3 * features[:, 9] ** 2
    return variants, features, fitness


@needs_botorch
def test_gp_posterior_mean_interpolates_noiseless_points():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(12, 2, generator=generator, dtype=torch.float64)
    y = torch.sin(3 * x[:, 0]) + x[:, 1] ** 2
    model = fit_gp(x, y, noise_variance=1e-6)
    mean, std = posterior_mean_std(model, x, chunk_size=5)
    np.testing.assert_allclose(mean.numpy(), y.numpy(), atol=2e-3)
    assert std.max() < 0.01 * y.std()


@needs_botorch
@pytest.mark.parametrize("acquisition", ["qei", "qucb", "thompson"])
def test_proposals_are_new_distinct_and_seeded(acquisition):
    _, features, fitness = small_pool()
    measured = np.arange(0, 60, 6)
    first = propose(features, measured, fitness[measured], 8, acquisition, seed=3,
                    noise_variance=NOISE)
    assert len(first.indices) == len(set(first.indices.tolist())) == 8
    assert not set(first.indices.tolist()) & set(measured.tolist())
    assert first.indices.min() >= 0 and first.indices.max() < 60
    assert (first.std >= 0).all()
    again = propose(features, measured, fitness[measured], 8, acquisition, seed=3,
                    noise_variance=NOISE)
    np.testing.assert_array_equal(first.indices, again.indices)
    np.testing.assert_array_equal(first.acquisition, again.acquisition)


@needs_botorch
@pytest.mark.parametrize("acquisition", ["qucb", "thompson"])
def test_the_best_measured_candidates_are_not_proposed_again(acquisition):
    # measured = the 10 fittest: pure exploitation (UCB with beta = 0) would pick them first
    _, features, fitness = small_pool()
    measured = np.argsort(-fitness)[:10]
    proposal = propose(features, measured, fitness[measured], 10, acquisition, seed=0, beta=0.0,
                       noise_variance=NOISE)
    assert not set(proposal.indices.tolist()) & set(measured.tolist())


@needs_botorch
def test_ucb_and_ei_values_follow_their_formulas():
    _, features, fitness = small_pool()
    measured = np.arange(0, 60, 5)
    ucb = propose(features, measured, fitness[measured], 5, "qucb", seed=0, beta=2.25,
                  noise_variance=NOISE)
    np.testing.assert_allclose(ucb.acquisition, ucb.mean + 1.5 * ucb.std, rtol=1e-6)
    ei = propose(features, measured, fitness[measured], 5, "qei", seed=0, noise_variance=NOISE)
    z = (ei.mean - fitness[measured].max()) / ei.std
    phi = np.exp(-z ** 2 / 2) / math.sqrt(2 * math.pi)
    big_phi = 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))
    np.testing.assert_allclose(ei.acquisition, ei.std * (z * big_phi + phi), rtol=1e-4)


@needs_botorch
@pytest.mark.parametrize("acquisition", ["qei", "thompson"])
def test_chunked_scoring_gives_the_same_batch(acquisition):
    _, features, fitness = small_pool()
    measured = np.arange(0, 60, 4)
    # a shortlist smaller than the pool, so qEI's batch depends on the chunked scores
    whole = propose(features, measured, fitness[measured], 6, acquisition, seed=1,
                    noise_variance=NOISE, shortlist=8)
    chunked = propose(features, measured, fitness[measured], 6, acquisition, seed=1,
                      noise_variance=NOISE, shortlist=8, chunk_size=7)
    np.testing.assert_array_equal(whole.indices, chunked.indices)
    np.testing.assert_allclose(whole.acquisition, chunked.acquisition, rtol=1e-6)


@needs_botorch
def test_shortlist_still_gives_a_full_batch():
    _, features, fitness = small_pool()
    measured = np.arange(0, 60, 4)
    proposal = propose(features, measured, fitness[measured], 6, "qucb", seed=0, shortlist=2,
                       noise_variance=NOISE)
    assert len(set(proposal.indices.tolist())) == 6


def test_bad_propose_arguments_are_named():
    _, features, fitness = small_pool()
    measured = np.arange(0, 60, 2)
    with pytest.raises(ConfigError, match="acquisition 'ei'"):
        propose(features, measured, fitness[measured], 4, "ei")
    with pytest.raises(ConfigError, match="q = 31"):
        propose(features, measured, fitness[measured], 31, "qei")
    with pytest.raises(DataError, match="measured twice"):
        propose(features, [1, 1, 2], [0.0, 1.0, 2.0], 2, "qei")


def test_features_are_scaled_to_the_unit_cube_and_wide_ones_reduced():
    rng = np.random.default_rng(0)
    scaled = prepare_features(rng.normal(size=(50, 6)) * 100 + 7).numpy()
    np.testing.assert_allclose(scaled.min(0), 0, atol=1e-12)
    np.testing.assert_allclose(scaled.max(0), 1)
    assert prepare_features(rng.normal(size=(50, 100)), max_dims=8).shape == (50, 8)
    assert prepare_features(rng.normal(size=(50, 100))).shape == (50, 100)  # None: every column


# ----------------------------------------------------------------------------------------------
# files and the command line


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


BYTE_ORDER_MARK = "\ufeff"  # how Excel's "CSV UTF-8" starts a file


@pytest.mark.parametrize("text", ["id,Sequence\na,acd\nb,ACE\n",
                                  BYTE_ORDER_MARK + "Sequence,id\nacd,a\nACE,b\n"])
def test_pool_from_csv(tmp_path, text):
    assert read_pool(write(tmp_path / "p.csv", text)) == ["ACD", "ACE"]


def test_pool_from_fasta_plain_or_gzipped(tmp_path):
    fasta = ">a\nAC\nD\n>b\nACE\n"
    assert read_pool(write(tmp_path / "p.fasta", fasta)) == ["ACD", "ACE"]
    with gzip.open(tmp_path / "p.fasta.gz", "wt") as handle:
        handle.write(fasta)
    assert read_pool(tmp_path / "p.fasta.gz") == ["ACD", "ACE"]
    # named otherwise: the content says FASTA or FASTQ, not the CSV reader's missing header
    assert read_pool(write(tmp_path / "pool.txt", fasta)) == ["ACD", "ACE"]
    assert read_pool(write(tmp_path / "reads", "@a\nACD\n+\nIII\n")) == ["ACD"]


@pytest.mark.parametrize("name,text,message", [
    ("unknown.csv", "sequence\nACD\nAZD\n", r"unknown.csv, line 3: 'Z' at position 2"),
    ("dup.csv", "sequence\nACD\nACE\nACD\n",
     r"dup.csv: sequence 'ACD' appears twice, on line 2 and line 4"),
    ("nohead.csv", "ACD\nACE\n", r"nohead.csv, line 1: .* lacks column\(s\) sequence"),
    ("empty.csv", "sequence\n\n", r"empty.csv: the pool holds no sequences"),
    ("bad.fasta", ">a\nACD\n>b\nAC*\n", r"bad.fasta.*line 4"),
    ("dup.fasta", ">a\nACD\n>b\nACD\n",
     r"dup.fasta: sequence 'ACD' appears twice, on record 'a' and record 'b'"),
])
def test_bad_pool_files_get_named_errors(tmp_path, name, text, message):
    with pytest.raises(DataError, match=message):
        read_pool(write(tmp_path / name, text))


@pytest.mark.parametrize("text,message", [
    ("sequence,value\nACD,1.0\nACE,\n", r"m.csv, line 3: missing value"),
    ("sequence,value\nACD,1.0\nACE,high\n", r"m.csv, line 3: value 'high' is not a finite number"),
    ("sequence,value\nACD,1.0\nACE,nan\n", r"m.csv, line 3: value 'nan'"),
    ("sequence,value\nACD,1.0\nACD,2.0\n",
     r"m.csv: sequence 'ACD' appears twice, on line 2 and line 3"),
    ("sequence,value\nACD,1.0\nAXE,2.0\n", r"m.csv, line 3: 'X' at position 2"),
    ("sequence,value\nACD,1.0\nWWW,2.0\n",
     r"m.csv, line 3: sequence 'WWW' is not in the candidate pool"),
    ("sequence,fitness\nACD,1.0\n", r"lacks column\(s\) value"),
    ("", r"m.csv: the file is empty; .*e\.g\. sequence,value\)"),  # BO's columns, not a table's
    (BYTE_ORDER_MARK + "sequence,value\nACD,1.0\nACE,high\n", r"m.csv, line 3: value 'high'"),
])
def test_bad_measurement_files_get_named_errors(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        read_measurements(write(tmp_path / "m.csv", text), ["ACD", "ACE"])


@pytest.mark.parametrize("start", ["", BYTE_ORDER_MARK])
def test_measurements_map_to_pool_rows(tmp_path, start):
    path = write(tmp_path / "m.csv", start + "Sequence,Value\nace,2.5\n\nACD,-1\n")
    indices, values = read_measurements(path, ["ACD", "ACE"])
    assert indices.tolist() == [1, 0] and values.tolist() == [2.5, -1.0]


@needs_botorch
def test_cli_bo_writes_the_next_batch(tmp_path, capsys):
    variants, _, fitness = small_pool()
    pool = ["MK" + v + "GS" for v in variants]  # sites 3-5 vary: found automatically
    write(tmp_path / "pool.csv", "sequence\n" + "\n".join(pool) + "\n")
    measured = list(range(0, 60, 6))
    write(tmp_path / "measured.csv", "sequence,value\n"
          + "".join(f"{pool[i]},{fitness[i]:.6f}\n" for i in measured))
    out = tmp_path / "next.csv"
    code = main(["bo", "--pool", str(tmp_path / "pool.csv"), "--measured",
                 str(tmp_path / "measured.csv"), "--featurizer", "onehot", "--q", "4",
                 "--acquisition", "qucb", "--out", str(out), "--seed", "2"])
    assert code == 0
    with open(out, newline="") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == OUTPUT_COLUMNS and len(rows) == 5
    proposed = [r[0] for r in rows[1:]]
    assert len(set(proposed)) == 4 and set(proposed) <= set(pool)
    assert not set(proposed) & {pool[i] for i in measured}
    assert all(float(r[2]) >= 0 for r in rows[1:])


def test_cli_bo_reports_bad_input_as_one_line(tmp_path, capsys):
    write(tmp_path / "pool.csv", "sequence\nACD\nACE\nACF\n")
    write(tmp_path / "measured.csv", "sequence,value\nACD,1\nACE,\n")
    code = main(["bo", "--pool", str(tmp_path / "pool.csv"), "--measured",
                 str(tmp_path / "measured.csv"), "--q", "1", "--out", str(tmp_path / "o.csv")])
    assert code == 2
    assert "measured.csv, line 3: missing value" in capsys.readouterr().err
