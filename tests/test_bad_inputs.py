"""Bad input gets one clear line, never a traceback, a silent wrong answer or a lost file.

Each row of ``CASES`` is what a user (or a crash, or a full disk) can do to a finished run: it
damages a copy of one tiny trained run, then runs one ``selfsup`` command line, which must exit 2
with one ``selfsup: error:`` line that holds the expected words (the problem and the fix) and no
traceback. The rows are the holes a hostile audit of the command line found (issue 19).
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import TINY
from selfsup.cli import main
from selfsup.run_config import load_config
from selfsup.run_dir import RunDir
from selfsup.train import Trainer
from selfsup.train.checkpoint import file_sha256


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny SimCLR run on digits, evaluated (so it has every file), shared by the cases."""
    out = tmp_path_factory.mktemp("bad-inputs") / "run"
    Trainer(load_config(None, TINY + [f"out={out}"])).fit()
    assert main(["evaluate", str(out), "--device", "cpu", "--set", "eval.label_fractions=[1.0]",
                 "--set", "eval.seeds=1"]) == 0
    return out


def _write(name: str, content: bytes) -> Callable[[Path], None]:
    return lambda run: (run / name).write_bytes(content)


def _edit_json(name: str, change: Callable[[dict], dict]) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        (run / name).write_text(json.dumps(change(json.loads((run / name).read_text()))))
    return edit


def _flip_a_byte(run: Path) -> None:
    data = bytearray((run / "encoder.safetensors").read_bytes())
    data[-5] ^= 0xFF  # inside the last tensor's values: the file still parses
    (run / "encoder.safetensors").write_bytes(bytes(data))


def _resave_weights(change: Callable[[dict], dict]) -> Callable[[Path], None]:
    """Rewrite the encoder's tensors with ``change`` and record the new file's SHA-256, as an
    export would: what is wrong is then the weights themselves, not their fingerprint."""
    def resave(run: Path) -> None:
        path = run / "encoder.safetensors"
        save_file(change(load_file(str(path))), str(path))
        spec = json.loads((run / "encoder.json").read_text())
        spec["weights_sha256"] = file_sha256(path)
        (run / "encoder.json").write_text(json.dumps(spec))
    return resave


def _nan_weights(tensors: dict) -> dict:
    first = next(name for name, tensor in tensors.items() if tensor.is_floating_point())
    return {**tensors, first: torch.full_like(tensors[first], float("nan"))}


def _renamed_weights(tensors: dict) -> dict:
    return {f"module.{name}": tensor for name, tensor in tensors.items()}


def _wider_weights(tensors: dict) -> dict:
    first = next(name for name, t in tensors.items() if t.ndim == 4)
    return {**tensors, first: torch.zeros(tensors[first].shape[0] * 2, *tensors[first].shape[1:])}


def _one_class_data(run: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(run.parent / "one-class.npz", images=rng.integers(0, 255, (40, 8, 8, 1), np.uint8),
             labels=np.zeros(40, np.int64))


def _metrics_line(content: bytes) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        lines = (run / "metrics.jsonl").read_bytes().splitlines()
        (run / "metrics.jsonl").write_bytes(b"\n".join(lines[:2] + [content] + lines[2:]) + b"\n")
    return damage


class Case(NamedTuple):
    name: str
    damage: Callable[[Path], None]
    argv: list[str]  # RUN stands for the damaged run, DATA for its folder
    expected: str


CASES = [
    # the run's own files, damaged
    Case("config.yaml emptied", _write("config.yaml", b""), ["evaluate", "RUN"],
         "config.yaml is empty: the run's settings are lost"),
    Case("config.yaml emptied, --resume", _write("config.yaml", b""),
         ["pretrain", "--out", "RUN", "--resume"], "config.yaml is empty"),
    Case("config.yaml not UTF-8", _write("config.yaml", b"method:\n  name: simclr\xff\n"),
         ["evaluate", "RUN"], "config.yaml is not UTF-8 text"),
    Case("config.yaml without a method", _write("config.yaml", b"train:\n  epochs: 3\n"),
         ["evaluate", "RUN"], "not a saved run config (no method.name)"),
    Case("encoder.json emptied", _write("encoder.json", b""), ["evaluate", "RUN"],
         "encoder.json is not valid JSON"),
    Case("encoder.json torn", _write("encoder.json", b'{"backbone": {"name": "sma'),
         ["embed", "RUN", "--out", "DATA/x.npy"], "encoder.json is not valid JSON"),
    Case("encoder.json without its backbone", _edit_json("encoder.json", lambda s: {"x": 1}),
         ["evaluate", "RUN"], "does not describe an encoder"),
    Case("encoder.json missing a key", _edit_json(
        "encoder.json", lambda s: {k: v for k, v in s.items() if k != "in_channels"}),
         ["evaluate", "RUN"], "lacks what its encoder is rebuilt from"),
    Case("encoder.safetensors with a flipped byte", _flip_a_byte, ["evaluate", "RUN"],
         "SHA-256 differs from the one recorded there"),
    Case("encoder.safetensors with NaN weights", _resave_weights(_nan_weights),
         ["embed", "RUN", "--out", "DATA/x.npy"], "holds NaN or infinite weights"),
    Case("encoder.safetensors with other tensor names", _resave_weights(_renamed_weights),
         ["evaluate", "RUN"], "does not fit the encoder"),
    Case("encoder.safetensors with other shapes", _resave_weights(_wider_weights),
         ["evaluate", "RUN"], "size mismatch"),
    Case("metrics.jsonl with a line that is not UTF-8", _metrics_line(b'{"kind": "step\xff"}'),
         ["report", "RUN"], "line 3: not a JSON object"),
    Case("tsne.npz torn", lambda run: (run / "tsne.npz").write_bytes(
        (run / "tsne.npz").read_bytes()[:100]), ["report", "RUN"],
         "tsne.npz cannot be read as an .npz of plain arrays"),
    # silent wrong answers, now refused
    Case("evaluation on data of one class", _one_class_data,
         ["evaluate", "RUN", "--dataset", "DATA/one-class.npz"], "has one class (0)"),
    Case("a batch of one", lambda run: None,
         ["pretrain", "--dataset", "digits", "--out", "DATA/new", "--batch-size", "1"],
         "train.batch_size must be a number in [2, 16,777,216], got 1"),
    Case("--budget without end", lambda run: None,
         ["pretrain", "--dataset", "digits", "--out", "DATA/new", "--budget", "1e30"],
         "train.budget_minutes must be a number in [0, 527,040]"),
    Case("--out below a file", lambda run: None,
         ["pretrain", "--dataset", "digits", "--out", "RUN/config.yaml/new"],
         "a file stands where the path needs a folder"),
    Case("embed --out below a file", lambda run: None,
         ["embed", "RUN", "--out", "RUN/config.yaml/x.npy"],
         "a file stands where the path needs a folder"),
    Case("--epochs without end", lambda run: None,
         ["pretrain", "--dataset", "digits", "--out", "DATA/new", "--epochs", "1000000000"],
         "train.epochs must be a number in [1, 100,000]"),
    # config files and flags
    Case("method: simclr as a plain string", _write("../c.yaml", b"method: simclr\n"),
         ["pretrain", "--config", "DATA/c.yaml", "--out", "DATA/new"],
         "method is a section of keys, not a value ('simclr'); set its name with method.name"),
    Case("--set method=byol", lambda run: None,
         ["pretrain", "--set", "method=byol", "--out", "DATA/new"],
         "--set method=byol: method is a section of keys"),
    Case("train: 5 in a config file", _write("../c.yaml", b"train: 5\n"),
         ["pretrain", "--config", "DATA/c.yaml", "--epochs", "1", "--out", "DATA/new"],
         "config file"),
    Case("a config file that is not UTF-8", _write("../c.yaml", b"method:\n  name: simclr\xff\n"),
         ["pretrain", "--config", "DATA/c.yaml", "--out", "DATA/new"], "is not UTF-8 text"),
    # errors that were already named before the audit, kept that way
    Case("a folder that is no run", lambda run: None, ["evaluate", "DATA"],
         "is not a selfsup run dir (no config.yaml)"),
    Case("a finished run without --resume", lambda run: None,
         ["pretrain", "--dataset", "digits", "--out", "RUN"], "already holds a run; continue it "
                                                              "with --resume"),
    Case("--resume without a checkpoint", lambda run: (run / "checkpoints" / "last.pt").unlink(),
         ["pretrain", "--out", "RUN", "--resume"], "--resume: no checkpoint at"),
    Case("a torn checkpoint", _write("checkpoints/last.pt", b"PK\x03\x04 torn"),
         ["pretrain", "--out", "RUN", "--resume"], "cannot be read"),
    Case("an unknown method", lambda run: None,
         ["pretrain", "--method", "simclr2", "--out", "DATA/new"], "unknown method 'simclr2'"),
    Case("an unknown data set", lambda run: None,
         ["pretrain", "--dataset", "mnist-typo", "--out", "DATA/new"], "unknown data set"),
    Case("an unknown config key", lambda run: None,
         ["pretrain", "--set", "train.epoch=3", "--out", "DATA/new"], "unknown config key"),
    Case("a config file that does not exist", lambda run: None,
         ["pretrain", "--config", "DATA/none.yaml", "--out", "DATA/new"], "does not exist"),
    Case("an empty --out", lambda run: None, ["pretrain", "--dataset", "digits", "--out", ""],
         "out (--out) must name the run directory, got ''"),
    Case("--set out= (null)", lambda run: None, ["pretrain", "--dataset", "digits", "--set", "out="],
         "out (--out) must name the run directory, got None"),
    Case("a list option given a word", lambda run: None,
         ["pretrain", "--dataset", "digits", "--backbone", "small-cnn", "--out", "DATA/new",
          "--set", "backbone.widths=abc"], "backbone.widths must be a list, e.g. [32, 64, 128, 256], got 'abc'"),
    Case("a temperature of 0", lambda run: None,
         ["pretrain", "--dataset", "digits", "--out", "DATA/new", "--set", "method.temperature=0"],
         "method.temperature must be a number > 0, got 0"),
    Case("finetune --set with the section's name", lambda run: None,
         ["finetune", "RUN", "--set", "finetune.lr=-1"], "finetune.lr must be a number ≥ 0, got -1"),
    Case("config.yaml not UTF-8, report", _write("config.yaml", b"method:\n  name: simclr\xff\n"),
         ["report", "RUN"], "config.yaml is not UTF-8 text"),
    Case("a report of a folder that is no run", lambda run: None, ["report", "DATA"],
         "is not a selfsup run dir (no config.yaml and no metrics.jsonl)"),
    Case("a damaged eval.json", _write("eval.json", b"{oops"), ["report", "RUN"],
         "eval.json is not valid JSON"),
    Case("a resume that changes the backbone", lambda run: None,
         ["pretrain", "--out", "RUN", "--resume", "--set", "backbone.widths=[4, 8]"],
         "does not fit the model this config builds"),
    Case("embed --out of an unknown format", lambda run: None,
         ["embed", "RUN", "--out", "DATA/x.txt"], "name a .npy (with an ids file beside it), .csv or "
                                                  ".parquet file"),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_one_named_error(trained, tmp_path, case, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    case.damage(run)
    argv = [part.replace("RUN", str(run)).replace("DATA", str(tmp_path)) for part in case.argv]
    if argv[0] in ("evaluate", "embed", "pretrain"):
        argv += ["--device", "cpu"]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.startswith("selfsup: error: "), err
    assert case.expected in err, err
    assert not (tmp_path / "x.npy").exists()  # nothing half-made written for a refused input
    assert not (tmp_path / "report.md").exists()


def test_the_train_5_error_names_the_file_not_a_flag(trained, tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("train: 5\n")
    assert main(["pretrain", "--config", str(tmp_path / "c.yaml"), "--epochs", "1",
                 "--out", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err
    assert "--set train.epochs" not in err and "train is a section of keys, not a value (5)" in err


def test_embed_refuses_an_encoder_that_outputs_nan_and_writes_nothing(trained, tmp_path,
                                                                     monkeypatch, capsys):
    from selfsup.modalities.image import ImageModality

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    monkeypatch.setattr(ImageModality, "features",
                        lambda self, *args, **kwargs: torch.full((3, 4), float("nan")))
    assert main(["embed", str(run), "--out", str(tmp_path / "x.npy"), "--device", "cpu"]) == 2
    assert "the embeddings of digits's test split hold NaN" in capsys.readouterr().err
    assert not (tmp_path / "x.npy").exists()


def test_a_full_disk_is_named_and_the_checkpoint_is_kept(trained, tmp_path, monkeypatch, capsys):
    """The file system refuses a write mid-run: one line naming the file and the fix, and the
    checkpoint of the last epoch is still whole (a resume can go on)."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = (run / "checkpoints" / "last.pt").read_bytes()

    def full(state, target, *args, **kwargs):  # a few bytes of the checkpoint, then no space
        with open(target, "wb") as handle:
            handle.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    code = main(["pretrain", "--out", str(run), "--resume", "--epochs", "3", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "No space left on device" in err and "last.pt" in err and "free some space" in err
    assert "continue it with --resume" in err
    assert (run / "checkpoints" / "last.pt").read_bytes() == before


def test_a_bug_shows_its_traceback_under_a_line_that_says_it_is_one(monkeypatch, capsys):
    import selfsup.cli as cli

    def broken(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setitem(cli.COMMANDS, "list", broken)
    assert main(["list"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError: a bug" in err
    assert "this is a bug in selfsup, not in your input; please report it" in err


def test_a_damaged_bo_cache_is_recomputed_not_trusted(tmp_path):
    from selfsup.apps.featurize import _cached_features

    path = tmp_path / "cache.npy"
    assert _cached_features(path, 3) is None
    path.write_bytes(np.random.default_rng(0).bytes(200))
    assert _cached_features(path, 3) is None  # random bytes
    np.save(path, np.zeros((3, 3), np.float64))
    assert _cached_features(path, 3) is None  # a foreign array
    np.save(path, np.zeros((2, 4), np.float32))
    assert _cached_features(path, 3) is None  # another pool's rows
    np.save(path, np.ones((3, 4), np.float32))
    assert _cached_features(path, 3).shape == (3, 4)


def test_every_file_of_a_run_has_the_same_mode(trained):
    """encoder.safetensors was written 0600 (safetensors' own temporary file), the rest 0644."""
    modes = {path.name: path.stat().st_mode & 0o777 for path in Path(trained).rglob("*")
             if path.is_file()}
    assert len(set(modes.values())) == 1, modes


def test_a_relative_out_keeps_every_file_in_the_run(tmp_path, monkeypatch):
    """`--out runs/x` (relative, as the README's default) once put encoder.json in runs/x/runs/x."""
    monkeypatch.chdir(tmp_path)
    Trainer(load_config(None, TINY + ["out=runs/x", "train.epochs=1"])).fit()
    assert sorted(p.name for p in (tmp_path / "runs" / "x").iterdir() if p.is_file()) == [
        ".lock", "config.yaml", "encoder.json", "encoder.safetensors", "health_verdict.json",
        "metrics.jsonl"]
    assert RunDir("runs/x").has_encoder()
