"""End to end through the command line on scikit-learn's digits."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from selfsup.cli import main
from selfsup.data import load_split
from selfsup.errors import DataError
from selfsup.run_dir import read_finetune_results
from selfsup.evaluate.run import load_run_config
from selfsup.train.metrics_log import read_metrics
from conftest import TINY

PLOTS = ("loss_lr.png", "effective_rank.png", "spectrum.png", "tsne.png", "label_efficiency.png")


def test_pretrain_evaluate_embed_report(tmp_path, capsys):
    run = tmp_path / "run"
    sets = [a for item in TINY for a in ("--set", item)]
    assert main(["pretrain", "--method", "simclr", "--dataset", "digits", "--epochs", "2",
                 "--out", str(run), *sets]) == 0
    assert main(["evaluate", str(run)]) == 0
    table = capsys.readouterr().out

    result = json.loads((run / "eval.json").read_text())
    for block in (result, result["baselines"]["raw"], result["baselines"]["random_init"]):
        assert 0.0 <= block["knn_top1"] <= 1.0
        assert set(block["linear_top1"]) == {"0.01", "0.1", "1.0"}
        assert all(0.0 <= v <= 1.0 for v in block["linear_top1"].values())
    assert {"effective_rank", "embedding_std", "mean_cosine"} <= set(result["health"])
    assert result["baselines"]["raw"]["knn_top1"] > 0.9  # raw pixels of digits are easy
    assert f"{100 * result['knn_top1']:.1f}" in table

    for name in PLOTS:
        with Image.open(run / name) as image:
            assert image.width > 200 and image.height > 150
    assert "label_efficiency.png" in (run / "report.md").read_text()

    out = tmp_path / "test.npy"
    assert main(["embed", str(run), "--split", "test", "--out", str(out)]) == 0
    feats = np.load(out)
    assert feats.shape == (len(load_split("digits", "test")), 16) and np.isfinite(feats).all()


def test_saved_config_reproduces_the_run(tmp_path):
    sets = [a for item in TINY for a in ("--set", item)]
    assert main(["pretrain", "--out", str(tmp_path / "a"), *sets]) == 0
    assert main(["pretrain", "--config", str(tmp_path / "a" / "config.yaml"),
                 "--out", str(tmp_path / "b")]) == 0
    a = (tmp_path / "a" / "encoder.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "encoder.safetensors").read_bytes()


@pytest.mark.parametrize("args, message", [
    (["pretrain", "--dataset", "no-such-data"], "no-such-data"),
    (["pretrain", "--dataset", "digits", "--method", "nope"], "unknown method 'nope'"),
    (["pretrain", "--dataset", "digits", "--set", "optim.lr=fast"], "optim.lr must be a number"),
    (["pretrain", "--dataset", "digits", "--set", "train.nonsense=1"], "unknown config key train.nonsense"),
    (["evaluate", "/no/such/run"], "not a selfsup run dir"),
    (["pretrain", "--dataset", "digits", "--device", "tpu"], "choose auto, cpu, cuda or cuda:N"),
    (["pretrain", "--dataset", "digits", "--epochs", "0"], "train.epochs must be a number in [1, 100,000], got 0"),
    (["pretrain", "--dataset", ""], "data.dataset is empty"),  # not the working directory's images
    (["embed", "/no/such/run", "--out", "feats.txt"], "name a .npy (with an ids file beside it), .csv or .parquet file"),
    (["evaluate", "/no/such/run", "--set", "knn_k=5"], "evaluate takes eval.* settings"),
])
def test_bad_input_gets_a_named_error(args, message, capsys, tmp_path):
    if args[0] == "pretrain":
        args = args + ["--out", str(tmp_path / "x")]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_existing_run_is_not_overwritten_without_resume(tmp_path, capsys):
    sets = [a for item in TINY for a in ("--set", item)]
    assert main(["pretrain", "--out", str(tmp_path / "a"), *sets]) == 0
    assert main(["pretrain", "--out", str(tmp_path / "a"), *sets]) == 2
    assert "--resume" in capsys.readouterr().err


def test_resume_continues_the_copy_named_by_out_with_the_flags_applied(tmp_path):
    sets = [a for item in TINY for a in ("--set", item)]
    original, copy = tmp_path / "original", tmp_path / "copy"
    assert main(["pretrain", "--out", str(original), *sets, "--set", "train.epochs=1"]) == 0
    shutil.copytree(original, copy)
    untouched = {p.name: p.read_bytes() for p in original.rglob("*") if p.is_file()}
    assert main(["pretrain", "--out", str(copy), "--resume", "--epochs", "2"]) == 0
    # config.yaml still says out: .../original; the run continues in the copy regardless
    assert {p.name: p.read_bytes() for p in original.rglob("*") if p.is_file()} == untouched
    config = load_run_config(copy)
    assert config.train.epochs == 2 and Path(config.out) == copy
    epochs = [r["epoch"] for r in read_metrics(copy / "metrics.jsonl") if r["kind"] == "epoch"]
    assert epochs == [1, 2]  # the second epoch trained on top of the first


def test_a_resume_that_changes_the_model_is_named_and_leaves_the_run_resumable(tmp_path, capsys):
    sets = [a for item in TINY for a in ("--set", item)]
    run = tmp_path / "run"
    assert main(["pretrain", "--out", str(run), *sets, "--set", "train.epochs=1"]) == 0
    saved = (run / "config.yaml").read_text()
    assert main(["pretrain", "--out", str(run), "--resume", "--epochs", "2",
                 "--set", "backbone.widths=[4, 4]"]) == 2
    assert "does not fit the model this config builds" in capsys.readouterr().err
    assert (run / "config.yaml").read_text() == saved  # not the refused change
    assert main(["pretrain", "--out", str(run), "--resume", "--epochs", "2"]) == 0
    assert load_run_config(run).train.epochs == 2


def test_output_paths_of_the_wrong_kind_are_named_before_any_work(tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a run directory")
    sets = [a for item in TINY for a in ("--set", item)]
    assert main(["pretrain", "--out", str(a_file), *sets]) == 2
    assert "is a file; the run directory must be a folder" in capsys.readouterr().err
    with pytest.raises(DataError, match="is a folder; name the results file"):
        read_finetune_results(tmp_path)


def test_list_names_the_registered_components(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("simclr", "resnet18", "small-cnn", "fashion-mnist", "digits"):
        assert name in out
    modalities = out.split("modalities:\n")[1].split("tokenisers:\n")
    assert [line.split()[0] for line in modalities[0].splitlines()] == [
        "dna", "image", "protein", "text"]
    assert [line.split()[0] for line in modalities[1].splitlines()[:3]] == ["dna", "protein", "text"]


def test_run_dir_comes_from_the_config_file_else_from_method_and_data(tmp_path, monkeypatch):
    from selfsup.cli import _pretrain_config, build_parser

    path = tmp_path / "c.yaml"
    path.write_text(f"out: {tmp_path / 'from-file'}\nmethod:\n  name: byol\n")
    args = build_parser().parse_args(["pretrain", "--config", str(path)])
    assert _pretrain_config(args).out == str(tmp_path / "from-file")
    args = build_parser().parse_args(["pretrain", "--method", "simsiam", "--dataset", "digits"])
    assert _pretrain_config(args).out == "runs/simsiam-digits"


def test_other_ranks_decide_to_do_nothing_without_loading_torch():
    # a fresh interpreter: this one has torch loaded already
    code = ("import sys; from selfsup.cli import main; code = main(['report', '/no/such/run']); "
            "print(code, 'torch' in sys.modules, 'selfsup.train.trainer' in sys.modules)")
    env = {**os.environ, "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True)
    assert done.stdout.split() == ["0", "False", "False"]


def test_commands_after_training_run_on_rank_0_alone_under_torchrun(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    sets = [a for item in TINY + ["eval.seeds=1"] for a in ("--set", item)]
    assert main(["pretrain", "--dataset", "digits", "--out", str(run), *sets]) == 0
    capsys.readouterr()
    # As torchrun sets them for the second of two processes: it evaluates nothing, writes nothing.
    for key, value in (("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(key, value)
    assert main(["evaluate", str(run), "--no-baselines"]) == 0
    assert main(["report", str(run)]) == 0
    assert main(["embed", str(run), "--out", str(tmp_path / "f.npy")]) == 0
    assert not (run / "eval.json").exists() and not (run / "report.md").exists()
    assert not (tmp_path / "f.npy").exists()
    assert capsys.readouterr().out == ""
    # Rank 0 of the same launch evaluates and writes eval.json.
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert main(["evaluate", str(run), "--no-baselines"]) == 0
    assert 0.0 <= json.loads((run / "eval.json").read_text())["knn_top1"] <= 1.0


def test_budget_flag_reads_times_and_rejects_others():
    import argparse

    from selfsup.cli import budget_minutes

    assert budget_minutes("20m") == 20 and budget_minutes("20") == 20
    assert budget_minutes("90s") == pytest.approx(1.5) and budget_minutes("1.5h") == 90
    for bad in ("0m", "-3", "20x", "m", "soon", "inf"):
        with pytest.raises(argparse.ArgumentTypeError, match="time"):
            budget_minutes(bad)


def test_demo_preset_runs_end_to_end_and_prints_the_verdict(tmp_path, capsys, monkeypatch):
    """`selfsup demo` (the README's main job) with its CPU preset, shrunk to digits and a few
    steps by --set (later settings win): it trains, evaluates against both baselines and prints
    the table and the verdict. Into its default, relative run dir, as `make demo` runs it (a
    relative --out once put encoder.json one folder too deep, and the demo's evaluation failed)."""
    import selfsup.train.device as device

    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)  # the same run everywhere
    monkeypatch.chdir(tmp_path)
    shrink = [item for item in TINY if not item.startswith("out=")] + [
        "backbone.grid=2", "train.epochs=1", "eval.label_fractions=[0.1, 1.0]"]
    sets = [a for item in shrink for a in ("--set", item)]
    assert main(["demo", "--device", "cpu", *sets]) == 0
    out = capsys.readouterr().out
    (run,) = (tmp_path / "runs").glob("demo-*")
    config = load_run_config(run)
    # the preset's choices that --set did not replace
    assert (config.method["name"], config.method["temperature"], config.optim.schedule) == \
        ("simclr", 0.1, "linear")
    assert config.train.precision == "fp32" and config.backbone["grid"] == 2
    assert "vs raw pixels: k-NN" in out and "vs random init: k-NN" in out
    assert "demo finished in" in out
    result = json.loads((run / "eval.json").read_text())
    assert result["feature_dim"] == 16 * 2 * 2  # the grid read-out: 16 channels × 2 × 2 cells


def test_demo_trains_in_bf16_only_on_cpus_that_have_it(monkeypatch):
    import selfsup.train.device as device
    from selfsup.cli import demo_overrides

    for native, precision in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(device, "cpu_has_native_bf16", lambda native=native: native)
        assert f"train.precision={precision}" in demo_overrides(cuda=False)
    assert not any(item.startswith("train.precision") for item in demo_overrides(cuda=True))


def test_demo_preset_step_in_bf16_gives_the_fp32_loss_and_gradients():
    """The CPU preset's one profile-driven change to the step is bf16 autocast: on the same
    batch and weights its loss and the gradient direction must match fp32's."""
    import torch

    from selfsup.backbones import build_backbone
    from selfsup.cli import demo_overrides
    from selfsup.run_config import load_config
    from selfsup.methods import build_method
    from selfsup.train.device import autocast

    config = load_config(None, demo_overrides(cuda=False))
    torch.manual_seed(0)
    method = build_method(config.method, build_backbone(config.backbone, 1, 28))
    generator = torch.Generator().manual_seed(1)
    views = [torch.rand(64, 1, 28, 28, generator=generator) for _ in range(2)]
    results = {}
    for precision in ("fp32", "bf16"):
        method.zero_grad()
        with autocast(torch.device("cpu"), precision):
            loss = method(views).loss
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in method.parameters() if p.grad is not None])
        results[precision] = (loss.item(), grad)
    (loss32, grad32), (loss16, grad16) = results["fp32"], results["bf16"]
    assert loss16 == pytest.approx(loss32, rel=2e-3)  # measured: 5e-4
    assert torch.nn.functional.cosine_similarity(grad16, grad32, dim=0) > 0.98  # measured: 0.992
