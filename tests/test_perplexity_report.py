"""Held-out perplexity: logged by MLM runs, then reported by `selfsup report` and `selfsup evaluate`."""

from __future__ import annotations

import json
import random
import re
import shutil

import pytest
from conftest import TINY_MLM
from PIL import Image

from selfsup.run_config import load_config
from selfsup.evaluate.run import evaluate_run
from selfsup.report import read_metrics, write_report
from selfsup.report.plots import DPI
from selfsup.train import Trainer

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
RUN = TINY_MLM + ["train.epochs=2", "eval.seeds=1", "eval.label_fractions=[1.0]",
                  "eval.tsne_samples=30", "eval.knn_k=5", "eval.batch_size=64"]


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory):
    """A real two-epoch MLM run on a small labelled protein table (two classes told apart by
    their residues), so that evaluation has labels to probe."""
    folder = tmp_path_factory.mktemp("mlm")
    rng = random.Random(0)
    rows = [(f"{''.join(rng.choice(AMINO_ACIDS[:10] if i % 2 else AMINO_ACIDS[10:]) for _ in range(24))}",
             "odd" if i % 2 else "even") for i in range(120)]
    table = folder / "proteins.csv"
    table.write_text("sequence,label\n" + "".join(f"{s},{label}\n" for s, label in rows))
    config = load_config(None, RUN + [f"data.dataset={table}", f"out={folder / 'run'}"])
    return Trainer(config).fit()


def held_out_records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if json.loads(line).get("kind") == "held_out"]


def test_evaluate_puts_the_last_logged_held_out_perplexity_in_eval_json(mlm_run):
    logged = held_out_records(mlm_run)
    assert [r["epoch"] for r in logged] == [1, 2]
    result = evaluate_run(mlm_run, log=lambda message: None)
    assert result["held_out_perplexity"] == logged[-1]["perplexity"]
    saved = json.loads((mlm_run / "eval.json").read_text())
    assert saved["held_out_perplexity"] == logged[-1]["perplexity"]


def test_a_run_that_logged_no_perplexity_gets_no_such_key(mlm_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(mlm_run, run_dir)
    (run_dir / "held_out_perplexity.png").unlink(missing_ok=True)  # drawn if the report ran first
    metrics = run_dir / "metrics.jsonl"
    metrics.write_text("".join(line + "\n" for line in metrics.read_text().splitlines()
                               if json.loads(line).get("kind") != "held_out"))
    assert "held_out_perplexity" not in evaluate_run(run_dir, log=lambda message: None)
    report = write_report(run_dir).read_text()
    assert "held-out perplexity" not in report.lower()
    assert not (run_dir / "held_out_perplexity.png").exists()


def test_report_shows_the_held_out_perplexity_curve_and_last_value(mlm_run):
    last = held_out_records(mlm_run)[-1]
    report = write_report(mlm_run).read_text()
    # the summary table pads its cells
    assert re.search(rf"\| held-out perplexity \(epoch 2\) +\| {last['perplexity']:.4g} +\|", report)
    assert f"Held-out perplexity after epoch 2: {last['perplexity']:.4g}." in report
    assert "![Held-out perplexity per epoch](held_out_perplexity.png)" in report
    with Image.open(mlm_run / "held_out_perplexity.png") as image:
        assert image.format == "PNG" and image.size == (round(9.0 * DPI), round(4.8 * DPI))


def test_read_metrics_keeps_held_out_records_and_the_last_perplexity_is_the_latest(tmp_path):
    from selfsup.train.metrics_log import last_held_out_perplexity

    records = [{"kind": "held_out", "epoch": 1, "step": 2, "loss": 3.0, "perplexity": 20.1},
               {"kind": "epoch", "epoch": 1, "step": 2, "loss": 2.9},
               {"kind": "held_out", "epoch": 2, "step": 4, "loss": 2.5, "perplexity": 12.2},
               {"kind": "held_out", "epoch": 3, "step": 6, "loss": 2.4}]  # no perplexity logged
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    metrics = read_metrics(path)
    assert metrics.held_out == [records[0], records[2], records[3]]
    assert last_held_out_perplexity(metrics.held_out) == (2, 12.2)
    assert last_held_out_perplexity(records[1:2]) is None


def test_lines_that_are_not_json_objects_are_skipped_not_fatal(tmp_path):
    # a damaged or hand-edited log must not cost the evaluation: every record has to answer .get
    from selfsup.train.metrics_log import last_held_out_perplexity, read_metrics as records_of

    path = tmp_path / "metrics.jsonl"
    held_out = {"kind": "held_out", "epoch": 1, "step": 2, "loss": 3.0, "perplexity": 20.1}
    path.write_text(json.dumps(held_out) + "\n3\n[1, 2]\n\"text\"\n{\"kind\": \"ep")
    assert records_of(path) == [held_out]
    assert last_held_out_perplexity(records_of(path)) == (1, 20.1)
