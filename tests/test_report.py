"""Tests of the run report: plots, report.md, the evaluation table and metrics.jsonl parsing."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from selfsup.errors import DataError
from selfsup.report import (
    format_eval_table,
    format_verdict,
    plot_probe_curves,
    plot_rank_curves,
    read_metrics,
    write_report,
)
from selfsup.report import plots
from selfsup.report.plots import DPI, ema

EVAL = {
    "knn_top1": 0.8234,
    "linear_top1": {"0.01": 0.6512, "0.1": 0.7743, "1.0": 0.8611},
    "linear_top1_std": {"0.01": 0.0123, "0.1": 0.0041, "1.0": 0.0},
    "health": {"effective_rank": 41.2, "embedding_std": 0.03, "mean_cosine": 0.12},
    "baselines": {
        "raw": {"knn_top1": 0.7456, "linear_top1": {"0.01": 0.5321, "0.1": 0.6678, "1.0": 0.7389},
                "linear_top1_std": {"0.01": 0.0211, "0.1": 0.0087, "1.0": 0.0}},
        "random_init": {"knn_top1": 0.5567, "linear_top1": {"0.01": 0.3372, "0.1": 0.4456,
                                                            "1.0": 0.5234},
                        "linear_top1_std": {"0.01": 0.0302, "0.1": 0.0133, "1.0": 0.0}},
    },
    "dataset": "fashion-mnist", "num_train": 60000, "num_test": 10000, "feature_dim": 512,
}

# Every accuracy of EVAL written by hand as the report must show it (one decimal, in percent).
EXPECTED_PERCENTAGES = ["82.3%", "65.1% ± 1.2", "77.4% ± 0.4", "86.1%",
                        "74.6%", "53.2% ± 2.1", "66.8% ± 0.9", "73.9%",
                        "55.7%", "33.7% ± 3.0", "44.6% ± 1.3", "52.3%"]

WARNING_MESSAGE = "loss is falling while the online probe is not improving"
HEALTH_WARNING = "effective rank below 5% of dim"

PLOTS = ["loss_lr.png", "effective_rank.png", "spectrum.png", "tsne.png", "label_efficiency.png",
         "probe.png"]


def spectrum(dim: int, decay: float) -> list[float]:
    values = np.exp(-decay * np.arange(dim))
    return (values / values.sum()).tolist()


def health_record(epoch: int, embedding: str, dim: int, rank: float, warnings: list[str]) -> dict:
    return {"kind": "health", "epoch": epoch, "step": 10 * epoch, "embedding": embedding,
            "effective_rank": rank, "embedding_std": 0.5 / math.sqrt(dim),
            "embedding_std_x_sqrt_dim": 0.5, "mean_cosine": 0.2, "mean_cosine_centred": 0.0,
            "uniformity": -2.5, "dim": dim, "spectrum": spectrum(dim, 0.3), "warnings": warnings}


def full_records() -> list[dict]:
    records: list[dict] = [{"kind": "run", "event": "start", "time": 0.0, "device": "cuda:0",
                            "precision": "bf16"}]
    for epoch in (1, 2, 3):
        for i in range(10):
            step = 10 * (epoch - 1) + i + 1
            records.append({"kind": "step", "step": step, "epoch": epoch, "loss": 5.0 / step,
                            "lr": 0.01 * step, "images_per_s": 1000.0 + step, "time": float(step)})
        records.append({"kind": "epoch", "epoch": epoch, "step": 10 * epoch, "loss": 4.0 - epoch,
                        "images_per_s": 1200.0 + epoch, "time": 10.0 * epoch, "epoch_seconds": 10.0})
        warnings = [HEALTH_WARNING] if epoch >= 2 else []
        records.append(health_record(epoch, "encoder", 64, 30.0 - epoch, []))
        records.append(health_record(epoch, "projector", 32, 10.0 / epoch, warnings))
        records.append({"kind": "probe", "epoch": epoch, "step": 10 * epoch, "knn_top1": 0.5 + 0.1 * epoch})
        records.append({"kind": "some_future_kind", "epoch": epoch})  # must be skipped
    records.append({"kind": "warning", "epoch": 3, "step": 30, "message": WARNING_MESSAGE})
    records.append({"kind": "run", "event": "end", "time": 30.0, "wall_seconds": 3725.0})
    return records


def write_jsonl(path: Path, records: list[dict], tail: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    write_jsonl(run / "metrics.jsonl", full_records())
    (run / "eval.json").write_text(json.dumps(EVAL))
    (run / "health_verdict.json").write_text(json.dumps(
        {"status": "collapsed", "messages": ["projector rank fell to 3.3"]}))
    config = {"method": {"name": "simclr", "temperature": 0.2}, "backbone": {"name": "resnet18"},
              "views": {}, "data": {"dataset": "fashion-mnist"}, "optim": {"lr": 0.3},
              "train": {"epochs": 100}, "eval": {"knn_k": 200}, "out": str(run)}
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    rng = np.random.default_rng(0)
    np.savez(run / "tsne.npz", coords=rng.normal(size=(60, 2)), labels=np.arange(60) % 3,
             class_names=np.array(["shirt", "boot", "bag"]))
    write_report(run)
    return run


def test_every_plot_is_a_real_png(full_run):
    for name in PLOTS:
        with Image.open(full_run / name) as image:
            assert image.format == "PNG", name
            width, height = image.size
            assert width >= 6 * DPI and height >= 4 * DPI, (name, image.size)
            pixels = np.asarray(image.convert("L"))
            # Something was drawn: a blank canvas has a single grey level.
            assert len(np.unique(pixels)) > 10, name


def test_report_shows_eval_percentages_warnings_and_links(full_run):
    text = (full_run / "report.md").read_text()
    assert text.startswith("# Run report: simclr · resnet18 · fashion-mnist")
    for expected in EXPECTED_PERCENTAGES:
        assert expected in text, expected
    for line in format_verdict(EVAL).splitlines():  # the verdict, as `selfsup evaluate` prints it
        assert f"- {line}" in text
    assert "⚠️ collapsed" in text
    assert "projector rank fell to 3.3" in text
    assert f"epoch 3: {WARNING_MESSAGE}" in text
    # The same health warning at epochs 2 and 3 is listed once, with where it happened.
    assert f"epochs 2–3 (2×): projector: {HEALTH_WARNING}" in text
    for name in PLOTS:
        assert f"]({name})" in text, name
    assert "```yaml\nmethod:\n  name: simclr" in text


def test_report_summary_matches_the_records(full_run):
    records = full_records()
    text = (full_run / "report.md").read_text()
    epochs = [r for r in records if r["kind"] == "epoch"]
    last_step = max(r["step"] for r in records if r["kind"] == "step")

    def row(label: str) -> str:
        return next(line for line in text.splitlines() if line.startswith(f"| {label} "))

    assert row("status").rstrip(" |").endswith("finished")
    assert "3 of 100" in row("epochs completed")
    assert row("steps").rstrip(" |").endswith(str(last_step))
    assert "1:02:05" in row("wall time")  # 3725 s = 1 h 2 min 5 s
    assert f"{epochs[-1]['images_per_s']:,.0f}" in row("images/s (last epoch)")
    assert row("final loss").rstrip(" |").endswith(f"{epochs[-1]['loss']:g}")
    assert "cuda:0" in row("device") and "bf16" in row("precision")


def test_partial_run_reports_what_there_is(tmp_path):
    steps = [r for r in full_records() if r["kind"] == "step"][:5]
    write_jsonl(tmp_path / "metrics.jsonl", steps, tail='{"kind": "step", "step": 6, "lo')
    report = write_report(tmp_path)
    text = report.read_text()
    assert report == tmp_path / "report.md"
    assert text.startswith(f"# Run report: {tmp_path.name}")  # no config: the run dir names it
    assert "Evaluation is missing" in text
    assert "incomplete" in text and "line 6" in text
    assert "No health records" in text and "No t-SNE" in text and "No config.yaml" in text
    assert (tmp_path / "loss_lr.png").is_file()
    for absent in ("effective_rank.png", "spectrum.png", "tsne.png", "label_efficiency.png",
                   "probe.png"):
        assert not (tmp_path / absent).exists()
        assert f"]({absent})" not in text


def test_format_eval_table_has_every_accuracy_in_aligned_rows():
    table = format_eval_table(EVAL)
    for expected in EXPECTED_PERCENTAGES:
        assert expected in table, expected
    lines = table.splitlines()
    assert len({len(line) for line in lines}) == 1  # columns line up in a monospace terminal
    header, rule, *rows = lines
    assert [c.strip() for c in header.strip("|").split("|")] == \
        ["model", "k-NN top-1", "linear @1%", "linear @10%", "linear @100%"]
    # A valid markdown delimiter row: dashes, a colon only at the end of right-aligned (number) columns.
    rule_cells = rule.strip("|").split("|")
    assert re.fullmatch(r"-+", rule_cells[0])
    assert all(re.fullmatch(r"-+:", cell) for cell in rule_cells[1:])
    assert [row.split("|")[1].strip() for row in rows] == ["SSL", "raw pixels", "random init"]
    # No ± at 100% of the labels: one training set, no spread over seeds.
    assert all("±" not in row.split("|")[-2] for row in rows)


def test_format_eval_table_without_baselines_or_linear_probe():
    table = format_eval_table({"knn_top1": 0.5})
    assert table.splitlines()[0].split("|")[2].strip() == "k-NN top-1"
    assert "50.0%" in table and len(table.splitlines()) == 3


def test_format_verdict_gives_the_lead_over_each_baseline_in_points():
    lines = format_verdict(EVAL).splitlines()
    # by hand from EVAL: k-NN 82.34 − 74.56, @1 % 65.12 − 53.21, @100 % 86.11 − 73.89
    assert lines[0] == ("vs raw pixels: k-NN +7.8, linear @1% +11.9, linear @100% +12.2 points "
                        "(ahead on every probe)")
    assert lines[1].startswith("vs random init: k-NN +26.7,")
    behind = {**EVAL, "knn_top1": 0.70}  # below raw pixels' 74.56 on k-NN only
    assert format_verdict(behind).splitlines()[0].endswith(
        "(ahead on linear @1%, linear @100%)")
    assert "k-NN -4.6" in format_verdict(behind)
    assert format_verdict({"knn_top1": 0.5}) == ""  # no baselines, no verdict


def test_format_eval_table_rejects_percentages_where_fractions_belong():
    with pytest.raises(DataError, match=r"linear_top1\[0\.1\] = 77\.4"):
        format_eval_table({"knn_top1": 0.8, "linear_top1": {"0.1": 77.4}})


def test_read_metrics_sorts_by_kind_and_names_a_damaged_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = full_records()
    write_jsonl(path, records)
    metrics = read_metrics(path)
    assert len(metrics.steps) == sum(r["kind"] == "step" for r in records)
    assert len(metrics.health) == sum(r["kind"] == "health" for r in records)
    assert len(metrics.probes) == 3 and len(metrics.warnings) == 1 and len(metrics.runs) == 2
    assert metrics.notes == []

    lines = path.read_text().splitlines()
    lines[2] = lines[2][:20]  # damage a line in the middle: not a killed run, a broken file
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="line 3"):
        read_metrics(path)
    lines[2] = "\udcff"  # bytes that are not UTF-8 (written back as such below)
    path.write_bytes("\n".join(lines).encode("utf-8", "surrogateescape") + b"\n")
    with pytest.raises(DataError, match="line 3: not a JSON object.*utf-8"):
        read_metrics(path)


def test_read_metrics_rejects_records_without_required_keys(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_jsonl(path, [{"kind": "step", "step": 1}])
    with pytest.raises(DataError, match="lacks loss"):
        read_metrics(path)


def test_missing_run_dir_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        write_report(tmp_path / "nowhere")


def test_ema_matches_the_debiased_formula():
    values = [3.0, 1.0, 4.0, 1.0, 5.0]
    span = 3.0
    alpha = 2 / (span + 1)
    for t in range(len(values)):
        weights = alpha * (1 - alpha) ** np.arange(t, -1, -1)  # weight of x_0 .. x_t at time t
        expected = np.dot(weights, values[: t + 1]) / weights.sum()
        assert ema(values, span)[t] == pytest.approx(expected)
    assert ema(values, span)[0] == values[0]
    assert np.allclose(ema([2.5] * 7, span=4), 2.5)


def test_ema_leaves_a_gap_at_nan_without_poisoning_the_rest():
    smoothed = ema([1.0, float("nan"), 1.0], span=3)
    assert math.isnan(smoothed[1])
    assert smoothed[0] == smoothed[2] == 1.0


def test_plot_rank_curves_draws_one_panel_per_run(tmp_path):
    healthy = [health_record(e, "encoder", 64, 40.0 + e, []) for e in (1, 2, 3)]
    collapsing = [health_record(e, "encoder", 64, 40.0 / 4 ** e, []) for e in (1, 2, 3)]
    one = plot_rank_curves({"healthy": healthy}, tmp_path / "one.png")
    two = plot_rank_curves({"healthy": healthy, "collapsing": collapsing}, tmp_path / "two.png")
    with Image.open(one) as a, Image.open(two) as b:
        assert a.format == b.format == "PNG"
        assert b.size[0] > 1.5 * a.size[0] and a.size[1] == b.size[1]
    with pytest.raises(ValueError):
        plot_rank_curves({}, tmp_path / "none.png")


def test_plot_probe_curves_draws_each_runs_probe_and_loss_in_its_own_panel(tmp_path, monkeypatch):
    # the panel layout and the empty-input error are _side_by_side's, checked through
    # plot_rank_curves above; here: what lands in each panel
    def run(knn: list[float]) -> tuple[list[dict], list[dict]]:
        probes = [{"kind": "probe", "epoch": e, "knn_top1": k} for e, k in enumerate(knn, 1)]
        epochs = [{"kind": "epoch", "epoch": e, "loss": -e / 4 - k} for e, k in enumerate(knn, 1)]
        return probes, epochs

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig) or Path(path))
    runs = {"stop-gradient": run([0.5, 0.6, 0.7]), "no stop-gradient": run([0.5, 0.45, 0.45])}
    plot_probe_curves(runs, tmp_path / "two.png")
    (fig,) = figures
    panels = [ax for ax in fig.axes if ax.get_title()]  # the loss twins carry no title
    twins = [ax for ax in fig.axes if not ax.get_title()]
    assert [ax.get_title() for ax in panels] == list(runs)
    for panel, twin, (probes, epochs) in zip(panels, twins, runs.values(), strict=True):
        (probe_line,), (loss_line,) = panel.get_lines(), twin.get_lines()
        assert list(probe_line.get_ydata()) == [100 * r["knn_top1"] for r in probes]
        assert list(loss_line.get_ydata()) == [r["loss"] for r in epochs]


def test_report_embeds_the_pictures_of_a_vae_run(tiny_config):
    from selfsup.train import Trainer

    run = Trainer(tiny_config("method.name=vae", "method.decoder_width=16", "train.epochs=1")).fit()
    text = write_report(run).read_text()
    for name in ("reconstructions.png", "vae_samples.png", "vae_interpolations.png"):
        assert f"]({name})" in text and (run / name).is_file()
    assert "## Fine-tuning" in text and "selfsup finetune" in text  # says how to add that section


def test_report_of_a_run_without_checkpoint_says_why_it_has_no_pictures(tiny_config):
    from selfsup.train import Trainer

    run = Trainer(tiny_config("method.name=vae", "method.decoder_width=16", "train.epochs=1")).fit()
    for checkpoint in (run / "checkpoints").iterdir():
        checkpoint.unlink()
    text = write_report(run).read_text()
    assert "No pictures:" in text and "checkpoint" in text and "vae_samples.png" not in text
