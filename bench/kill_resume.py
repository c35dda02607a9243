"""Kill -9 a training run at random moments and resume it until it finishes: the weights must be
those of a run that was never interrupted, and the run directory whole.

Each trial starts `selfsup pretrain` (SimCLR, small CNN on digits, a few epochs) in a fresh
folder, kills it with SIGKILL after a random share of the uninterrupted run's wall time, and then resumes it (`--resume` once a
checkpoint exists, else a fresh start) — killing each attempt again with probability
``--rekill`` — until one attempt runs to the end. Then it compares with one uninterrupted run:

* the largest absolute difference of any encoder weight (exact resume gives 0.0);
* metrics.jsonl: every step logged once (no attempt's records left behind), closed by ``end``;
* no temporary file of a killed writer left, and the run's lock free again.

    python bench/kill_resume.py --trials 32 --json bench/results/kill_resume-cpu.json
    python bench/kill_resume.py --smoke     # 2 trials
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file

RUN_FLAGS = ["--dataset", "digits", "--backbone", "small-cnn", "--epochs", "6",
             "--batch-size", "64", "--device", "cpu",
             "--set", "backbone.widths=[8, 16]", "--set", "train.steps_per_epoch=8",
             "--set", "train.health_samples=512", "--set", "train.probe_every=1",
             "--set", "train.progress=false", "--set", "train.log_every=2"]


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--kill-at", type=float, nargs=2, default=(0.15, 0.95),
                        metavar=("MIN", "MAX"), help="when to kill an attempt, as a share of the "
                                                     "uninterrupted run's wall time")
    parser.add_argument("--rekill", type=float, default=0.3,
                        help="probability that a resuming attempt is killed too")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="bench/results/kill_resume-cpu.json")
    parser.add_argument("--smoke", action="store_true", help="2 trials")
    args = parser.parse_args(argv)
    if args.smoke:
        args.trials, args.json = 2, str(Path(tempfile.gettempdir()) / "kill_resume-smoke.json")
    return args


def attempt(out: Path, resume: bool, kill_after: Optional[float]) -> str:
    """One `selfsup pretrain` into ``out``: "finished", "killed" or "failed: ..."."""
    command = [sys.executable, "-m", "selfsup", "pretrain", "--out", str(out), *RUN_FLAGS]
    if resume:
        command.append("--resume")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        process.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
        return "killed"
    if process.returncode != 0:
        return f"failed: {process.stderr.read().decode()[-500:]}"
    return "finished"


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "encoder.safetensors"))


def check_run(run: Path, reference: dict[str, torch.Tensor]) -> dict[str, Any]:
    from selfsup.files import exclusive_lock
    from selfsup.train.metrics_log import read_metrics

    found = weights(run)
    difference = max(float((found[name].float() - reference[name].float()).abs().max())
                     for name in reference)
    records = read_metrics(run / "metrics.jsonl")
    steps = [r["step"] for r in records if r["kind"] == "step"]
    leftovers = [p.name for p in run.rglob("*") if ".tmp-" in p.name]
    with exclusive_lock(run / ".lock", str(run)):  # raises if a dead attempt still held it
        pass
    return {"max_weight_difference": difference,
            "steps_logged_twice": len(steps) - len(set(steps)),
            # the log closes with the end of the run (an attempt killed after its end record but
            # before it exited is resumed, finds nothing to train and closes the log again)
            "closed": bool(records) and records[-1].get("event") == "end",
            "temporaries_left": leftovers}


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    rng = random.Random(args.seed)
    trials: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        assert attempt(Path(folder) / "reference", False, None) == "finished"
        reference_seconds = time.perf_counter() - started
        reference = weights(Path(folder) / "reference")
        print(f"uninterrupted run: {reference_seconds:.1f} s")
        print(f"{'trial':>5} {'kills':>5} {'attempts':>8} {'max |Δw|':>9} {'steps twice':>11} "
              f"{'closed':>6} {'temporaries':>11}")
        for trial in range(args.trials):
            run = Path(folder) / f"trial-{trial}"
            kills = attempts = 0
            outcome = "killed"
            first = True
            while outcome == "killed":
                resume = (run / "checkpoints" / "last.pt").is_file()
                kill = first or rng.random() < args.rekill
                kill_after = rng.uniform(*args.kill_at) * reference_seconds
                outcome = attempt(run, resume, kill_after if kill else None)
                attempts += 1
                kills += outcome == "killed"
                first = False
                if attempts > 50:
                    outcome = "failed: more than 50 attempts"
            if outcome != "finished":
                trials.append({"trial": trial, "outcome": outcome})
                print(f"{trial:>5} {outcome}")
                continue
            result = {"trial": trial, "kills": kills, "attempts": attempts, **check_run(run, reference)}
            trials.append(result)
            print(f"{trial:>5} {kills:>5} {attempts:>8} {result['max_weight_difference']:>9.3g} "
                  f"{result['steps_logged_twice']:>11} {str(result['closed']):>6} "
                  f"{len(result['temporaries_left']):>11}")
    finished = [t for t in trials if "max_weight_difference" in t]
    summary = {
        "trials": len(trials), "finished": len(finished),
        "kills": sum(t["kills"] for t in finished),
        "max_weight_difference": max((t["max_weight_difference"] for t in finished), default=None),
        "steps_logged_twice": sum(t["steps_logged_twice"] for t in finished),
        "logs_not_closed": sum(not t["closed"] for t in finished),
        "temporaries_left": sum(len(t["temporaries_left"]) for t in finished),
        "reference_seconds": reference_seconds,
    }
    print(json.dumps(summary, indent=1))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv), "machine": os.uname().nodename,
                                           "date": time.strftime("%Y-%m-%d"), "flags": RUN_FLAGS,
                                           "summary": summary, "trials": trials}, indent=1))
    return 0 if len(finished) == len(trials) else 1


if __name__ == "__main__":
    sys.exit(main())
