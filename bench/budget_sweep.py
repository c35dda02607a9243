"""The machinery shared by the wall-budget benchmarks (``sequence_budget.py``, ``image_budget.py``).

Each candidate recipe runs as its own worker process (the bench script re-invoked with
``--worker NAME``) with a fixed number of threads, ``parallel`` of them side by side. A worker
writes its result row to ``<out_dir>/<name>/row.json``; a row already there is reused, so a sweep
cut short continues where it stopped, and ``collect`` gathers the rows without running anything.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the benches import selfsup from this checkout, run from anywhere
    sys.path.insert(0, str(ROOT))


def add_sweep_arguments(parser: argparse.ArgumentParser, budget: float, out_dir: str,
                        json_path: str) -> None:
    """The options every budget sweep has (``worker_argv`` hands them on to a worker)."""
    parser.add_argument("--budget", type=float, default=budget, help="minutes of pretraining each")
    parser.add_argument("--parallel", type=int, default=1, help="candidates side by side")
    parser.add_argument("--threads", type=int, default=2, help="threads per candidate")
    parser.add_argument("--eval-fractions", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    parser.add_argument("--seeds", type=int, default=3, help="label subsets per fraction below 1")
    parser.add_argument("--set", action="append", default=[],
                        help="extra config override for every candidate")
    parser.add_argument("--out-dir", default=out_dir)
    parser.add_argument("--json", default=json_path)
    parser.add_argument("--collect", action="store_true",
                        help="run nothing: gather the rows already in --out-dir into the table")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one candidate, run in this process


def worker_argv(args: argparse.Namespace) -> list[str]:
    """The sweep's options as a worker's command line."""
    return ["--budget", str(args.budget), "--out-dir", args.out_dir, "--seeds", str(args.seeds),
            "--threads", str(args.threads), "--eval-fractions", *map(str, args.eval_fractions),
            *[item for s in args.set for item in ("--set", s)]]


def row_path(out_dir: str | Path, name: str) -> Path:
    """Where candidate ``name``'s row lives."""
    return Path(out_dir) / name / "row.json"


def launch_worker(script: str | Path, name: str, worker_args: list[str], out_dir: str | Path,
                  threads: int) -> subprocess.Popen:
    """``script --worker name *worker_args`` as a process with ``threads`` threads (OpenMP and
    MKL), its output in ``<out_dir>/<name>.log``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONUNBUFFERED": "1"}
    log = open(Path(out_dir) / f"{name}.log", "w")
    return subprocess.Popen([sys.executable, str(script), "--worker", name, *worker_args],
                            env=env, stdout=log, stderr=subprocess.STDOUT,
                            cwd=ROOT)


def run_sweep(names: list[str], out_dir: str | Path, launch: Callable[[str], subprocess.Popen],
              parallel: int, collect: bool = False, note: str = "") -> list[dict[str, Any]]:
    """Run every candidate in ``names`` without a row (``launch(name)`` starts one), ``parallel``
    at a time, unless ``collect``; the rows of ``names`` that exist afterwards, in order."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    pending = [] if collect else [n for n in names if not row_path(out_dir, n).is_file()]
    running: list[tuple[str, subprocess.Popen]] = []
    while pending or running:
        while pending and len(running) < parallel:
            name = pending.pop(0)
            print(f"start {name} {note}".rstrip(), flush=True)
            running.append((name, launch(name)))
        time.sleep(2)
        for item in list(running):
            name, process = item
            if process.poll() is not None:
                running.remove(item)
                print(f"done {name} (exit {process.returncode}; log "
                      f"{Path(out_dir) / f'{name}.log'})", flush=True)
    return [json.loads(row_path(out_dir, n).read_text()) for n in names
            if row_path(out_dir, n).is_file()]


def write_results(path: str | Path, args: Any, rows: list[dict[str, Any]],
                  **extra: Any) -> Path:
    """The sweep's JSON: its arguments, date, machine and rows (and ``extra`` keys)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"args": vars(args), "date": time.strftime("%Y-%m-%d"),
                                "machine": os.uname().nodename, **extra, "rows": rows}, indent=2))
    return path
