"""bench/bo_gb1.py's guard on resumed studies: an arm's stored seeds and new ones must come from
the same encoder, so the hashes recorded with the seeds must survive a --resume."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from selfsup.apps.featurize import ENCODER_FILE

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bo_gb1.py"


@pytest.fixture(scope="module")
def bo_gb1():
    spec = importlib.util.spec_from_file_location("bo_gb1", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


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
