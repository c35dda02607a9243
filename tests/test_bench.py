"""Rules the benchmark scripts' verdicts rest on: bench/bo_gb1.py's guard on resumed studies (an
arm's stored seeds and new ones must come from one encoder) and bench/collapse.py's pass rule."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from selfsup.apps.featurize import ENCODER_FILE

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
