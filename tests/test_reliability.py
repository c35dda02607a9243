"""Nothing is lost: one writer per run directory, files written whole or not at all, and what a
killed process leaves behind cleaned up at the next start (issue 19)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selfsup.errors import DataError
from selfsup.files import atomic_write_text, exclusive_lock, remove_stale_temporaries
from selfsup.run_dir import RunDir
from selfsup.train import Trainer
from selfsup.train.metrics_log import MetricsLog, read_metrics

HOLD_LOCK = """
import sys, time
from selfsup.run_dir import RunDir
with RunDir(sys.argv[1]).lock():
    print("locked", flush=True)
    time.sleep(60)
"""


def _holder(run_dir: Path) -> subprocess.Popen:
    """Another process that locks ``run_dir`` and sleeps."""
    process = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir)],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    return process


def test_a_second_writer_is_refused_at_once_and_a_killed_one_releases_the_lock(tiny_config):
    config = tiny_config()
    holder = _holder(Path(config.out))
    try:
        started = time.perf_counter()
        with pytest.raises(DataError, match=rf"being written by another selfsup process "
                                            rf"\(PID {holder.pid}\).*choose another --out"):
            Trainer(config).fit()
        assert time.perf_counter() - started < 10  # at once, not after waiting
        assert not RunDir(config.out).config_file.exists()  # nothing of the run was touched
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    Trainer(config).fit()  # kill -9 released it
    assert RunDir(config.out).has_encoder()


def test_readers_work_on_a_locked_run(tiny_config):
    config = tiny_config()
    Trainer(config).fit()
    with RunDir(config.out).lock():
        assert RunDir(config.out).load_config() == config
        assert RunDir(config.out).read_metrics()


def test_the_lock_is_one_process_s_even_within_one_process(tmp_path):
    with exclusive_lock(tmp_path / "lock", "this"):
        with pytest.raises(DataError, match="this is being written"):
            with exclusive_lock(tmp_path / "lock", "this"):
                pass
    with exclusive_lock(tmp_path / "lock", "this"):  # released on leaving the block
        pass


def test_a_fresh_start_drops_the_records_of_an_attempt_that_died_before_its_checkpoint(tiny_config):
    config = tiny_config()
    run = RunDir(config.out)
    run.path.mkdir(parents=True)
    log = MetricsLog(run.metrics_file)
    log.write({"kind": "run", "event": "start", "epoch": 0, "step": 0})
    log.write({"kind": "step", "step": 1, "epoch": 1, "loss": 9.0})
    Trainer(config).fit()
    records = read_metrics(run.metrics_file)
    assert [r["event"] for r in records if r["kind"] == "run"] == ["start", "end"]
    assert all(r.get("loss") != 9.0 for r in records)


def test_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tiny_config):
    config = tiny_config()
    run = RunDir(config.out)
    run.checkpoint_dir.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = [run.checkpoint_dir / f".last.pt.tmp-{dead}", run.path / f".eval.json.tmp-{dead}"]
    live = run.path / f".eval.json.tmp-{os.getppid()}"  # the process that started pytest
    for path in stale + [live]:
        path.write_bytes(b"half a file")
    Trainer(config).fit()
    assert not any(path.exists() for path in stale)
    assert live.exists()
    assert remove_stale_temporaries(run.path) == []  # names of other shapes are not touched


def _fail_after(monkeypatch, characters: int) -> None:
    """Writes of text stop with 'no space left' after ``characters``, leaving a torn file."""
    original = Path.write_text

    def torn(self: Path, data: str, *args, **kwargs) -> int:
        original(self, data[:characters], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", torn)


def test_a_failed_rewrite_of_the_log_or_the_config_leaves_the_old_file_whole(tiny_config,
                                                                              monkeypatch):
    config = tiny_config()
    Trainer(config).fit()
    run = RunDir(config.out)
    log_before, config_before = run.metrics_file.read_bytes(), run.config_file.read_bytes()
    _fail_after(monkeypatch, 10)
    with pytest.raises(OSError):
        run.metrics_log().truncate_after(1)
    with pytest.raises(OSError):
        run.save_config(config)
    with pytest.raises(OSError):
        atomic_write_text(run.report_file, "# a report")
    monkeypatch.undo()
    assert run.metrics_file.read_bytes() == log_before
    assert run.config_file.read_bytes() == config_before
    assert not run.report_file.exists()
    assert not [p.name for p in run.path.iterdir() if ".tmp-" in p.name]


def test_a_figure_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from selfsup.report.plots import write_figure

    path = tmp_path / "plot.png"
    path.write_bytes(b"the old plot")
    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])

    def full_disk(self, target, *args, **kwargs):  # half a PNG written, then the disk is full
        if hasattr(target, "write"):
            target.write(b"\x89PNG half")
        else:
            Path(target).write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full_disk)
    with pytest.raises(OSError):
        write_figure(fig, path)
    monkeypatch.undo()
    assert path.read_bytes() == b"the old plot"
    write_figure(fig, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_two_fine_tuning_studies_merging_into_one_file_keep_both(tmp_path):
    from selfsup.run_dir import merge_finetune_results, read_finetune_results

    path = tmp_path / "finetune.json"
    script = ("import sys\nfrom selfsup.run_dir import merge_finetune_results\n"
              "for i in range(40):\n"
              "    merge_finetune_results(sys.argv[1], {'d': {'full': {sys.argv[2]: "
              "{str(i): {'mean': i}}}}})\n")
    writers = [subprocess.Popen([sys.executable, "-c", script, str(path), init])
               for init in ("pretrained", "scratch")]
    assert [w.wait() for w in writers] == [0, 0]
    merged = read_finetune_results(path)["datasets"]["d"]["full"]
    assert {init: len(entries) for init, entries in merged.items()} == {"pretrained": 40,
                                                                        "scratch": 40}
    merge_finetune_results(path, {})  # and the lock of a finished writer is free
    assert json.loads(path.read_text())["datasets"]["d"]["full"] == merged


def test_a_resume_that_diverges_at_once_leaves_the_config_of_the_kept_checkpoint(tiny_config,
                                                                              monkeypatch):
    from selfsup.errors import TrainingDiverged

    config = tiny_config()
    Trainer(config).fit()
    run = RunDir(config.out)
    saved = run.config_file.read_text()
    changed = run.load_config()
    changed.optim.lr, changed.train.epochs = 1e4, 4

    def diverge(self, epoch, step):
        self.diverged(epoch, step)

    monkeypatch.setattr(Trainer, "_train_epoch", diverge)
    with pytest.raises(TrainingDiverged, match="the last good checkpoint .* is kept"):
        Trainer(changed, resume=True).fit()
    assert run.config_file.read_text() == saved  # not the LR that diverged
    monkeypatch.undo()
    Trainer(changed, resume=True).fit()  # a resume that trains an epoch records its changes
    assert run.load_config().optim.lr == 1e4 and run.load_config().train.epochs == 4


def test_embeddings_that_go_nan_stop_the_run_and_say_the_checkpoint_is_kept(tiny_config,
                                                                            monkeypatch):
    """The loss can stay finite while the features do not: the health check stops the run
    through the same door as a NaN loss, saying what is kept."""
    import torch

    from selfsup.errors import TrainingDiverged
    from selfsup.methods.simclr import SimCLR

    config = tiny_config("train.epochs=2")
    original = SimCLR.health_embeddings
    calls = {"n": 0}

    def nan_in_epoch_two(self, x):
        calls["n"] += 1
        out = original(self, x)
        return out if calls["n"] <= 2 else {k: torch.full_like(v, float("nan")) for k, v in out.items()}

    monkeypatch.setattr(SimCLR, "health_embeddings", nan_in_epoch_two)
    with pytest.raises(TrainingDiverged, match=r"the encoder embeddings of the health batch became "
                                               r"NaN or infinite by step 6 \(epoch 2\); the last "
                                               r"good checkpoint .* is kept"):
        Trainer(config).fit()
    records = read_metrics(RunDir(config.out).metrics_file)
    assert records[-1]["event"] == "diverged"
    assert torch.load(RunDir(config.out).checkpoint_file, weights_only=True)["epoch"] == 1
