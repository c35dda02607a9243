"""Rules the benchmark scripts' verdicts rest on: bench/bo_gb1.py's guard on resumed studies (an
arm's stored seeds and new ones must come from one encoder) and bench/collapse.py's pass rule."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from selfsup.apps.featurize import ENCODER_FILE
from selfsup.evaluate.protocol import stratified_subset

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench(name: str):
    """bench/NAME.py as a module (the folder is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bo_gb1():
    return load_bench("bo_gb1")


def test_a_resumed_study_refuses_seeds_from_a_retrained_encoder(bo_gb1, tmp_path):
    run = tmp_path / "mlm-run"
    run.mkdir()
    (run / ENCODER_FILE).write_bytes(b"the encoder the first seeds used")
    arm = bo_gb1.parse_arm(f"{run}@mean:thompson")
    protocol = {"initial": 96, "batch": 96, "rounds": 4}
    first = {"protocol": protocol, "runs": []}
    bo_gb1.check_same_encoders([arm], first)
    first["runs"].append({"arm": arm.label, "seed": 0})
    out = tmp_path / "results.json"
    bo_gb1.save_results(out, first)

    resumed = {"protocol": protocol, "runs": []}
    resumed.update(bo_gb1.resumable_results(out, protocol))
    assert resumed["encoders"] == first["encoders"] and resumed["runs"] == first["runs"]
    bo_gb1.check_same_encoders([arm], resumed)  # the same encoder: more seeds may join
    (run / ENCODER_FILE).write_bytes(b"a retrained encoder")
    with pytest.raises(SystemExit, match="not the encoder its stored seeds used"):
        bo_gb1.check_same_encoders([arm], resumed)


def summary(verdict: str, first_warning) -> dict:
    return {"verdict": verdict, "first_collapse_warning_epoch": first_warning}


@pytest.mark.parametrize("healthy, collapsed, met", [
    (summary("healthy", None), summary("collapsed", 2), True),
    (summary("healthy", None), summary("stalled", 3), True),  # flagged early, ends stalled
    (summary("healthy", None), summary("collapsed", 4), False),  # flagged too late
    (summary("healthy", None), summary("healthy", 2), False),  # flagged, then called healthy
    (summary("healthy", None), summary("stalled", None), False),  # a stall alone is no early flag
    (summary("healthy", 5), summary("collapsed", 2), False),  # the healthy run was warned about
    (summary("stalled", None), summary("collapsed", 2), False),  # or did not end healthy
])
def test_collapse_bench_passes_only_when_the_monitor_flags_just_the_collapsed_run(healthy, collapsed,
                                                                                   met):
    collapse = load_bench("collapse")
    assert collapse.EXPECTED_BY_EPOCH == 3
    passed, problems = collapse.check_expectation({"stop-gradient": healthy,
                                                   "no stop-gradient": collapsed})
    assert passed is met and bool(problems) is not met


def test_probe_strength_compares_on_the_same_subsets_and_reuses_the_reference(tmp_path, monkeypatch):
    probe_strength = load_bench("probe_strength")
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(300) % 3
    feats = torch.randn(300, 6, generator=generator) + 2 * torch.eye(3, 6)[labels]
    data = probe_strength.FeatureSet(feats[:200], labels[:200], feats[200:], labels[200:])
    seen = []

    def reference(data, subset, seed, cs, variants):  # the real one, counted
        seen.append((seed, subset.tolist()))
        return real_reference(data, subset, seed, cs, variants)

    real_reference = probe_strength.reference
    monkeypatch.setattr(probe_strength, "reference", reference)
    cache = probe_strength.ReferenceCache(tmp_path / "reference.json")
    cs = np.logspace(-4, 4, 5)
    rows = probe_strength.compare("blobs", data, [0.1, 1.0], 2, cs, 1.0, cache)
    assert [row["fraction"] for row in rows] == ["0.1", "1.0"]
    assert [len(row["runs"]) for row in rows] == [2, 1]
    for row in rows:
        assert row["reference"] == max(row["reference_raw"], row["reference_std"])
        assert row["passes"] is (row["gap_points"] >= -1.0)
    # the evaluation's own stratified subsets, one per seed
    assert seen[0][1] == stratified_subset(data.train_labels, 0.1, 0).tolist()
    assert seen[1][1] == stratified_subset(data.train_labels, 0.1, 1).tolist()
    again = probe_strength.compare("blobs", data, [0.1, 1.0], 2, cs, 1.0,
                                   probe_strength.ReferenceCache(tmp_path / "reference.json"))
    assert len(seen) == 3  # the second comparison refit ours only
    assert [row["reference"] for row in again] == [row["reference"] for row in rows]
    raw_only = probe_strength.compare("blobs", data, [1.0], 2, cs, 1.0, cache, ["raw"])
    assert len(seen) == 4  # another variant set is another reference
    assert raw_only[0]["reference_std"] is None
    assert raw_only[0]["reference"] == raw_only[0]["reference_raw"] == rows[1]["reference_raw"]


def test_a_budget_sweep_runs_only_the_candidates_without_a_row_and_collects_in_order(tmp_path):
    import json
    import subprocess

    sweep = load_bench("budget_sweep")
    done = sweep.row_path(tmp_path, "a")
    done.parent.mkdir()
    done.write_text(json.dumps({"name": "a", "kept": True}))  # from a sweep cut short
    launched = []

    def launch(name: str) -> subprocess.Popen:
        launched.append(name)
        path = sweep.row_path(tmp_path, name)
        path.parent.mkdir()
        code = f"import json; open({str(path)!r}, 'w').write(json.dumps({{'name': {name!r}}}))"
        return subprocess.Popen([sys.executable, "-c", code])

    rows = sweep.run_sweep(["c", "a", "b"], tmp_path, launch, parallel=2)
    assert launched == ["c", "b"]  # a's row was reused, not rerun
    assert [row["name"] for row in rows] == ["c", "a", "b"] and rows[1]["kept"]
    # collecting runs nothing and returns what exists
    assert len(sweep.run_sweep(["a", "d"], tmp_path, launch, parallel=1, collect=True)) == 1
    assert launched == ["c", "b"]
