"""Does the read-out of a small CNN's last feature map change what its k-NN sees? No training.

Reads the same weights (a ``small-cnn`` run's encoder, and the same network at random init) four
ways: the last map average-pooled globally, to 2 × 2 and to 4 × 4 cells, and global average +
max; then the weighted k-NN of ``selfsup evaluate`` (cosine, T = 0.1, the whole training split as
the bank) at fixed k on the test split. Issue 17 found the global pool forgets where a feature
fires, which on centred, upright Fashion-MNIST is much of what tells classes apart.

    OMP_NUM_THREADS=1 python bench/readout_probe.py runs/bench-image-budget/simclr-linear \\
        --json bench/results/readout_probe-cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from selfsup.evaluate.knn import knn_predict  # noqa: E402
from selfsup.evaluate.run import labelled_splits, load_encoder, load_run_config  # noqa: E402
from selfsup.modalities.image import extract_features  # noqa: E402
from selfsup.modalities import modality_for_spec  # noqa: E402
from selfsup.train.checkpoint import random_init_encoder  # noqa: E402

READOUTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "global average": lambda m: m.mean(dim=(2, 3)),
    "2 x 2 cells": lambda m: F.adaptive_avg_pool2d(m, 2).flatten(1),
    "4 x 4 cells": lambda m: F.adaptive_avg_pool2d(m, 4).flatten(1),
    "global average + max": lambda m: torch.cat([m.mean(dim=(2, 3)), m.amax(dim=(2, 3))], 1),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a run folder whose encoder is a small-cnn")
    parser.add_argument("--k", type=int, nargs="+", default=[200, 20])
    parser.add_argument("--json", help="write the table here too")
    args = parser.parse_args()
    device = torch.device("cpu")
    config = load_run_config(args.run)
    encoder, spec = load_encoder(args.run, device)
    if not hasattr(encoder, "features"):
        parser.error(f"{args.run}: the encoder is not a small-cnn (no .features map to read)")
    _, train, test = labelled_splits(config, modality_for_spec(spec), args.run)
    networks = {"trained": encoder,
                "random init": random_init_encoder(spec, config.train.seed, device)}
    rows = []
    for network_name, network in networks.items():
        network.eval()
        for readout_name, readout in READOUTS.items():
            def read(x: torch.Tensor, n=network, r=readout) -> torch.Tensor:
                return r(n.features(x))

            bank = extract_features(read, train, device)
            queries = extract_features(read, test, device)
            row = {"network": network_name, "readout": readout_name, "dim": bank.shape[1]}
            for k in args.k:
                predicted = knn_predict(bank, train.labels, queries, train.num_classes, k=k)
                row[f"k={k}"] = round(100 * float((predicted == test.labels).float().mean()), 1)
            rows.append(row)
            print("  ".join(f"{key} {value}" for key, value in row.items()), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"run": args.run, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
