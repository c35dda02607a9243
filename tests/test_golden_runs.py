"""Behaviour kept through a refactor: the golden runs (tests/golden_runs.py) give the recorded
weights bit for bit and the recorded evaluation numbers exactly, on the machine they were
recorded on."""

from __future__ import annotations

import pytest

from golden_runs import CASES, SLOW_CASES, environment, recording_here, recordings, run_case
from selfsup.errors import DataError


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW_CASES
                                  else name for name in CASES])
def test_golden_run_is_reproduced_exactly(name, tmp_path):
    golden = recording_here()
    if golden is None:
        pytest.skip(f"golden runs were recorded on {[r['environment'] for r in recordings()]}, "
                    f"this is {environment()}: bit-identical results are not expected across them")
    try:
        found = run_case(name, tmp_path)
    except DataError as error:  # a data set the set-up could not install here
        pytest.skip(str(error))
    expected = golden["cases"][name]
    for file in ("eval.json", "finetune.json"):
        changed = {key: (expected.get(file, {}).get(key), value)
                   for key, value in found.get(file, {}).items()
                   if expected.get(file, {}).get(key) != value}
        missing = set(expected.get(file, {})) - set(found.get(file, {}))
        assert not changed and not missing, (
            f"{name}: {file} differs from the golden run (recorded, now): {changed}; "
            f"missing: {sorted(missing)}. If this is a fix, say why in the commit and record "
            "again: OMP_NUM_THREADS=1 python tests/golden_runs.py --record")
    assert found["encoder_sha256"] == expected["encoder_sha256"], (
        f"{name}: the trained weights differ from the golden run's")


def test_fingerprints_ignore_timings_and_see_every_number():
    from golden_runs import _numbers

    tree = {"knn_top1": 0.5, "eval_seconds": 3.0, "linear_top1": {"0.1": 0.25},
            "runs": [{"accuracy": [0.1, 0.2], "time": 9}], "dataset": "digits"}
    assert _numbers(tree) == {"knn_top1": 0.5, "linear_top1.0.1": 0.25,
                              "runs[0].accuracy[0]": 0.1, "runs[0].accuracy[1]": 0.2,
                              "dataset": "digits"}
