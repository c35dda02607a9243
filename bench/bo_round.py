"""Wall time of one `selfsup bo` round on the whole GB1 pool, as a lab user runs it.

Writes the 149,361 GB1 variants as a pool CSV and 96 random measured variants (seed 0) as a
measurements CSV, then times ``propose_from_files`` (what ``selfsup bo`` calls: read both files,
featurise, fit the GP, choose ``--q`` candidates, write the CSV) once per acquisition. Prints a
table; ``--json`` writes it.

    OMP_NUM_THREADS=1 python bench/bo_round.py --featurizer onehot \
        --json bench/results/bo_round-cpu.json
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from selfsup.apps.bo import ACQUISITIONS, propose_from_files  # noqa: E402
from selfsup.data.gb1 import load_gb1  # noqa: E402


def write_inputs(folder: Path, measured: int, seed: int) -> tuple[Path, Path]:
    """The GB1 pool CSV and a CSV of ``measured`` random variants with their fitness."""
    sequences, _, fitness = load_gb1()
    pool, values = folder / "pool.csv", folder / "measured.csv"
    with open(pool, "w", newline="") as handle:
        csv.writer(handle).writerows([["sequence"], *([s] for s in sequences)])
    chosen = np.random.default_rng(seed).choice(len(sequences), measured, replace=False)
    with open(values, "w", newline="") as handle:
        csv.writer(handle).writerows([["sequence", "value"],
                                      *([sequences[i], repr(float(fitness[i]))] for i in chosen)])
    return pool, values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--featurizer", default="onehot",
                        help="onehot, descriptors or a protein run directory")
    parser.add_argument("--pooling", default="mean", choices=["mean", "sites"])
    parser.add_argument("--acquisitions", nargs="+", default=list(ACQUISITIONS))
    parser.add_argument("--q", type=int, default=96)
    parser.add_argument("--measured", type=int, default=96)
    parser.add_argument("--json")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="selfsup-bo-round-"))
    pool, values = write_inputs(folder, args.measured, seed=0)
    rows = []
    for acquisition in args.acquisitions:
        started = time.perf_counter()
        propose_from_files(pool, values, args.featurizer, args.q, acquisition,
                           folder / f"next-{acquisition}.csv", pooling=args.pooling)
        rows.append({"acquisition": acquisition, "seconds": time.perf_counter() - started})
        print(f"{args.featurizer} {acquisition:9s} {rows[-1]['seconds']:7.1f} s", flush=True)
    if args.json:
        meta = {"featurizer": args.featurizer, "pooling": args.pooling, "q": args.q,
                "measured": args.measured, "pool": 149_361, "threads": torch.get_num_threads(),
                "torch": torch.__version__, "machine": platform.node(),
                "date": time.strftime("%Y-%m-%d")}
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
