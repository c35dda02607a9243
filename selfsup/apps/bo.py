"""Bayesian optimisation over a finite pool of candidate sequences, with BoTorch.

One round: fit a Gaussian process to the measured candidates' features and values, then choose
the next ``q`` unmeasured candidates to measure. ``propose`` works on feature arrays;
``propose_from_files`` is the command line's path (pool file, measurements CSV → next-batch CSV).

Choices, and why:

- **Features** are rescaled to the unit cube over the whole pool, so the kernel's lengthscales
  mean the same for every featuriser. Dense learnt embeddings (a run's encoder: tens to hundreds
  of correlated dimensions) are first projected on their top ``max_dims`` principal components
  over the pool, as their featuriser asks (``Featurizer.max_dims``, 32): the leading components
  keep the directions along which the pool varies most. One-hot and descriptor columns are used
  as they are: one-hot variance is spread evenly over its columns (32 components of four sites'
  80 keep only 44 % of it).
- **Surrogate**: ``SingleTaskGP`` with a Matérn-5/2 ARD kernel (one lengthscale per feature) and
  BoTorch's dimension-scaled log-normal lengthscale prior (Hvarfner et al. 2024), which keeps ARD
  sensible for the 80 one-hot columns of four sites; targets standardised (``Standardize``);
  the noise is learned, or fixed with ``noise_variance``; fit by ``fit_gpytorch_mll``.
- **qEI / qUCB** over a finite pool: BoTorch's ``optimize_acqf_discrete`` picks the batch by
  sequential greedy conditioning (each pick is a pending point for the next). Each of its q steps
  scores every choice jointly with the pending points, so its cost grows with choices × q² (and
  with the number of measurements), far too slow for 149k candidates; the greedy therefore runs
  over a shortlist: the ``shortlist`` candidates with the best single-point acquisition (log-EI or
  UCB, scored over the whole pool in chunks). qEI is computed as qLogEI, BoTorch's numerically
  robust form with the same maximiser. Thompson sampling is the cheaper choice for large q.
- **Thompson sampling**: ``q`` approximate posterior function draws by pathwise conditioning
  (Wilson et al. 2020: random Fourier features for the prior plus an exact data update,
  ``draw_matheron_paths``), so each draw is evaluated on every candidate in chunks at linear cost
  (exact joint draws over 149k points would need a 149k × 149k covariance). Draw ``i`` proposes
  its best candidate not yet taken.

Measured candidates are never proposed and a batch has no repeats. Everything is seeded: one call
with the same inputs and seed gives the same batch.
"""

from __future__ import annotations

import csv
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from selfsup.apps.featurize import Featurizer, make_featurizer, variable_sites
from selfsup.data.fasta import first_byte, read_sequences
from selfsup.data.sequence_files import is_sequence_file
from selfsup.data.table_files import read_table
from selfsup.errors import ConfigError, DataError
from selfsup.files import atomic_write
from selfsup.tokenize.alphabets import STANDARD_AMINO_ACIDS

ACQUISITIONS = ("qei", "qucb", "thompson")
BETA = 4.0  # UCB = mean + sqrt(BETA) * std: two standard deviations of optimism
SHORTLIST = 1024
CHUNK_SIZE = 1024  # candidates scored at once: bounds memory; larger chunks were slower (GPyTorch)
GREEDY_BATCH = 128  # shortlist candidates per joint MC evaluation (memory ∝ this × q × samples)
MC_SAMPLES = 128
MIN_MEASURED = 2
BOTORCH_INSTALL_COMMAND = "pip install botorch"
OUTPUT_COLUMNS = ("sequence", "predicted_mean", "predicted_std", "acquisition")


@dataclass
class Proposal:
    """The next batch: pool ``indices`` in the order chosen, the posterior ``mean`` and ``std``
    of each (in the units of the measurements) and its ``acquisition`` value: expected
    improvement over the best measurement (qei), mean + sqrt(beta) std (qucb), or the value of
    the posterior draw that chose it (thompson)."""

    indices: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    acquisition: np.ndarray


# ----------------------------------------------------------------------------------------------
# the surrogate


def prepare_features(features: np.ndarray, max_dims: Optional[int] = None) -> torch.Tensor:
    """Pool features as a float64 tensor in the unit cube; PCA to ``max_dims`` first if wider
    (None: every column)."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or not np.all(np.isfinite(features)):
        raise DataError(f"features must be a finite (N, D) array, got shape {features.shape}")
    if max_dims is not None and features.shape[1] > max_dims:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=min(max_dims, features.shape[0]), svd_solver="randomized",
                  random_state=0)
        features = pca.fit_transform(features)
    low, high = features.min(0), features.max(0)
    span = np.where(high > low, high - low, 1.0)  # constant columns stay constant (0)
    return torch.from_numpy((features - low) / span)


def fit_gp(train_x: torch.Tensor, train_y: torch.Tensor, noise_variance: Optional[float] = None):
    """A ``SingleTaskGP`` (Matérn-5/2 ARD, standardised targets) fitted to (N, D) inputs and (N,)
    targets by maximum marginal likelihood. ``noise_variance``: fixed observation noise in the
    targets' units; None learns it."""
    _require_botorch()
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms import Standardize
    from botorch.models.utils.gpytorch_modules import get_covar_module_with_dim_scaled_prior
    from gpytorch.mlls import ExactMarginalLogLikelihood

    train_y = train_y.reshape(-1, 1).to(train_x)
    noise = None if noise_variance is None else torch.full_like(train_y, noise_variance)
    model = SingleTaskGP(
        train_x, train_y, train_Yvar=noise,
        covar_module=get_covar_module_with_dim_scaled_prior(train_x.shape[-1],
                                                            use_rbf_kernel=False),
        outcome_transform=Standardize(m=1),
    )
    with warnings.catch_warnings():
        # a fit that stops at the iteration limit is still a good fit; BoTorch says so loudly
        warnings.filterwarnings("ignore", message=".*[Oo]ptimization.*")
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
    return model.eval()


def posterior_mean_std(model, x: torch.Tensor, chunk_size: int = CHUNK_SIZE
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Marginal posterior mean and std of the latent function at each row of ``x``, in chunks
    (each row as its own 1-point batch, so no N × N covariance is ever formed)."""
    means, stds = [], []
    with torch.no_grad():
        for part in x.split(chunk_size):
            posterior = model.posterior(part.unsqueeze(-2))
            means.append(posterior.mean.reshape(-1))
            stds.append(posterior.variance.clamp_min(0).sqrt().reshape(-1))
    return torch.cat(means), torch.cat(stds)


# ----------------------------------------------------------------------------------------------
# one round


def propose(pool_features: np.ndarray, measured_idx: Sequence[int], measured_y: Sequence[float],
            q: int, acquisition: str = "qei", seed: int = 0, *, beta: float = BETA,
            shortlist: int = SHORTLIST, chunk_size: int = CHUNK_SIZE,
            noise_variance: Optional[float] = None, max_dims: Optional[int] = None) -> Proposal:
    """The next ``q`` candidates of the pool to measure.

    pool_features: (N, D), one row per candidate (from a ``Featurizer``). measured_idx: pool rows
    already measured, with values ``measured_y`` (higher is better). acquisition: "qei", "qucb"
    or "thompson". max_dims: principal components to keep of wider features (the featuriser's
    ``max_dims``; None keeps every column). Measured rows are never proposed; the batch has no
    repeats. Features already in the unit cube (``prepare_features``) pass through unchanged,
    so a caller proposing round after round on one pool can prepare them once.
    """
    if acquisition not in ACQUISITIONS:
        raise ConfigError(f"acquisition {acquisition!r}: choose one of {', '.join(ACQUISITIONS)}")
    pool = prepare_features(pool_features, max_dims)
    measured_idx, measured_y = _check_measurements(len(pool), measured_idx, measured_y)
    candidates = np.setdiff1d(np.arange(len(pool)), measured_idx)  # sorted, never measured
    if not 1 <= q <= len(candidates):
        raise ConfigError(f"q = {q}: ask for 1 to {len(candidates)} candidates (the unmeasured "
                          "part of the pool)")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = fit_gp(pool[measured_idx], torch.from_numpy(measured_y), noise_variance)
        if acquisition == "thompson":
            chosen, acq = _thompson(model, pool, candidates, q, chunk_size)
        else:
            best_f = float(measured_y.max())
            chosen, acq = _greedy_batch(model, pool, candidates, q, acquisition, best_f, beta,
                                        shortlist, chunk_size, seed)
    mean, std = posterior_mean_std(model, pool[chosen], chunk_size)
    return Proposal(chosen, mean.numpy(), std.numpy(), acq)


def _greedy_batch(model, pool: torch.Tensor, candidates: np.ndarray, q: int, acquisition: str,
                  best_f: float, beta: float, shortlist: int, chunk_size: int,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """qEI or qUCB by sequential greedy selection over the shortlist; returns the chosen pool
    indices and their single-point acquisition values."""
    from botorch.acquisition import (LogExpectedImprovement, UpperConfidenceBound,
                                     qLogExpectedImprovement, qUpperConfidenceBound)
    from botorch.optim import optimize_acqf_discrete
    from botorch.sampling import SobolQMCNormalSampler

    if acquisition == "qei":
        single_point = LogExpectedImprovement(model, best_f=best_f)
    else:
        single_point = UpperConfidenceBound(model, beta=beta)
    with torch.no_grad():
        single = torch.cat([single_point(part.unsqueeze(-2))
                            for part in pool[candidates].split(chunk_size)])
    top = torch.topk(single, min(max(shortlist, q), len(candidates))).indices.sort().values
    sampler = SobolQMCNormalSampler(sample_shape=torch.Size([MC_SAMPLES]), seed=seed)
    if acquisition == "qei":
        batch_acquisition = qLogExpectedImprovement(model, best_f=best_f, sampler=sampler)
    else:
        batch_acquisition = qUpperConfidenceBound(model, beta=beta, sampler=sampler)
    choices = pool[candidates[top.numpy()]]
    picked, _ = optimize_acqf_discrete(batch_acquisition, q=q, choices=choices,
                                       max_batch_size=GREEDY_BATCH)
    rows = top[_matching_rows(choices, picked)]
    value = single[rows].exp() if acquisition == "qei" else single[rows]
    return candidates[rows.numpy()], value.numpy()


def _thompson(model, pool: torch.Tensor, candidates: np.ndarray, q: int,
              chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Batch Thompson sampling with ``q`` pathwise posterior draws; draw i takes its best
    candidate not taken by draws 0..i-1."""
    from botorch.sampling.pathwise import draw_matheron_paths

    with torch.no_grad():
        paths = draw_matheron_paths(model, sample_shape=torch.Size([q]))
        # each draw keeps only its q best candidates: enough, since at most q-1 are taken
        best_values = torch.empty((q, 0), dtype=pool.dtype)
        best_rows = torch.empty((q, 0), dtype=torch.long)
        for rows in torch.arange(len(candidates)).split(chunk_size):
            values = paths(pool[candidates[rows.numpy()]]).reshape(q, -1)
            best_values = torch.cat([best_values, values], dim=1)
            best_rows = torch.cat([best_rows, rows.expand(q, -1)], dim=1)
            keep = torch.topk(best_values, min(q, best_values.shape[1]), dim=1).indices
            best_values, best_rows = best_values.gather(1, keep), best_rows.gather(1, keep)
    taken: list[int] = []
    values: list[float] = []
    for draw in range(q):
        for value, row in zip(best_values[draw].tolist(), best_rows[draw].tolist()):
            if row not in taken:
                taken.append(row)
                values.append(value)
                break
    return candidates[taken], np.array(values)


def _matching_rows(choices: torch.Tensor, picked: torch.Tensor) -> list[int]:
    """For each picked feature row, the index of an equal row of ``choices``, each used once."""
    used: set[int] = set()
    rows = []
    for row in picked:
        equal = torch.nonzero((choices == row).all(dim=1)).reshape(-1).tolist()
        index = next(i for i in equal if i not in used)
        used.add(index)
        rows.append(index)
    return rows


def _check_measurements(pool_size: int, measured_idx, measured_y) -> tuple[np.ndarray, np.ndarray]:
    idx = np.asarray(measured_idx, dtype=np.int64).reshape(-1)
    y = np.asarray(measured_y, dtype=np.float64).reshape(-1)
    if len(idx) != len(y):
        raise DataError(f"{len(idx)} measured indices but {len(y)} measured values")
    if len(idx) < MIN_MEASURED:
        raise DataError(f"the surrogate needs at least {MIN_MEASURED} measurements, got {len(idx)}")
    if idx.min() < 0 or idx.max() >= pool_size:
        raise DataError(f"measured indices must lie in 0..{pool_size - 1}")
    if len(np.unique(idx)) != len(idx):
        raise DataError("a pool candidate is measured twice; average its values into one")
    if not np.all(np.isfinite(y)):
        raise DataError("measured values must be finite numbers")
    return idx, y


def _require_botorch() -> None:
    try:
        import botorch  # noqa: F401
    except ImportError:
        raise ConfigError(
            "Bayesian optimisation needs BoTorch, which is not installed: "
            f"{BOTORCH_INSTALL_COMMAND}"
        ) from None


# ----------------------------------------------------------------------------------------------
# files


def read_pool(path: Union[str, Path]) -> list[str]:
    """Candidate sequences, upper case, from a FASTA or FASTQ file (named so, e.g. ``.fasta``,
    ``.fa``, ``.fastq``, optionally gzipped: ``.fasta.gz``, or starting with ``>`` or ``@``
    whatever its name) or else a CSV with a ``sequence`` column. Unknown residues and duplicate
    sequences raise ``DataError`` naming the file and line."""
    path = Path(path)
    if is_sequence_file(path) or first_byte(path) in (b">", b"@"):
        return _read_sequence_file_pool(path)
    rows = _read_csv(path, ("sequence",))
    if not rows:
        raise DataError(f"{path}: the pool holds no sequences")
    _check_unique(path, [(line, row["sequence"]) for line, row in rows])
    return [row["sequence"] for _, row in rows]


def read_measurements(path: Union[str, Path], pool: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(pool indices, values) from a CSV with ``sequence`` and ``value`` columns. Missing or
    non-numeric values, unknown residues, duplicate sequences and sequences not in the pool
    raise ``DataError`` naming the file, line and value."""
    path = Path(path)
    rows = _read_csv(path, ("sequence", "value"))
    _check_unique(path, [(line, row["sequence"]) for line, row in rows])
    where = {sequence: i for i, sequence in enumerate(pool)}
    indices, values = [], []
    for line, row in rows:
        sequence, text = row["sequence"], row["value"]
        if sequence not in where:
            raise DataError(f"{path}, line {line}: sequence {_short(sequence)} is not in the "
                            "candidate pool; add it to the pool file or remove the row")
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise DataError(f"{path}, line {line}: value {text!r} is not a finite number")
        indices.append(where[sequence])
        values.append(value)
    if not rows:
        raise DataError(f"{path}: no measurements; give at least {MIN_MEASURED} rows")
    return np.array(indices, dtype=np.int64), np.array(values)


def write_proposals(path: Union[str, Path], pool: Sequence[str], proposal: Proposal) -> None:
    """The batch as CSV: sequence, predicted_mean, predicted_std, acquisition (in pick order)."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(OUTPUT_COLUMNS)
            for i, mean, std, acq in zip(proposal.indices, proposal.mean, proposal.std,
                                         proposal.acquisition):
                writer.writerow([pool[i], f"{mean:.6g}", f"{std:.6g}", f"{acq:.6g}"])

    atomic_write(path, write)  # a proposal file is whole or absent, never a half batch


def propose_from_files(pool_path: Union[str, Path], measured_path: Union[str, Path],
                       featurizer: Union[str, Featurizer], q: int, acquisition: str,
                       out: Union[str, Path], seed: int = 0,
                       sites: Optional[Sequence[int]] = None,
                       pooling: str = "mean") -> Proposal:
    """Read the pool and measurements, featurise, propose ``q`` candidates, write ``out``.

    featurizer: "onehot", "descriptors", a run directory, or a ``Featurizer``. sites: 1-based
    positions to featurise (default: the positions where the pool's sequences differ).
    """
    pool = read_pool(pool_path)
    indices, values = read_measurements(measured_path, pool)
    if isinstance(featurizer, str):
        if sites is None and (featurizer in ("onehot", "descriptors") or pooling == "sites"):
            sites = variable_sites(pool)
            if not sites:
                raise DataError(f"{pool_path}: all candidates are the same sequence")
        featurizer = make_featurizer(featurizer, sites, pooling)
    proposal = propose(featurizer(pool), indices, values, q, acquisition, seed,
                       max_dims=featurizer.max_dims)
    write_proposals(out, pool, proposal)
    return proposal


def _read_sequence_file_pool(path: Path) -> list[str]:
    records = list(read_sequences(path, alphabet=STANDARD_AMINO_ACIDS))
    _check_unique(path, [(f"record {r.id!r}", r.sequence.upper()) for r in records], lines=False)
    return [r.sequence.upper() for r in records]


def _read_csv(path: Path, columns: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """(line number, {column: stripped text}) per data row; the header names the columns (any
    case); sequences are upper-cased and checked against the 20 standard amino acids."""
    header, table = read_table(path, delimiter=",", columns=columns)
    header = [name.lower() for name in header]
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(f"{path}, line 1: the header {header} lacks column(s) "
                        f"{', '.join(missing)}; the first line must name the columns, "
                        f"e.g. {','.join(columns)}")
    where = {c: header.index(c) for c in columns}
    rows = []
    for line, cells in table:
        row = {c: (cells[i].strip() if i < len(cells) else "") for c, i in where.items()}
        for column, text in row.items():
            if not text:
                raise DataError(f"{path}, line {line}: missing {column}")
        row["sequence"] = row["sequence"].upper()
        _check_residues(path, line, row["sequence"])
        rows.append((line, row))
    return rows


def _check_residues(path: Path, line: int, sequence: str) -> None:
    for position, letter in enumerate(sequence, start=1):
        if letter not in STANDARD_AMINO_ACIDS:
            raise DataError(
                f"{path}, line {line}: {letter!r} at position {position} of sequence "
                f"{_short(sequence)} is not one of the 20 standard amino acids "
                f"({''.join(sorted(STANDARD_AMINO_ACIDS))})"
            )


def _check_unique(path: Path, located: list[tuple], lines: bool = True) -> None:
    first: dict[str, object] = {}
    for where, sequence in located:
        if sequence in first:
            label = (lambda w: f"line {w}") if lines else str
            raise DataError(f"{path}: sequence {_short(sequence)} appears twice, on "
                            f"{label(first[sequence])} and {label(where)}; keep one")
        first[sequence] = where


def _short(sequence: str, keep: int = 30) -> str:
    return repr(sequence if len(sequence) <= keep else sequence[:keep] + "…")
