"""Every registered image method at one fixed budget, then the same evaluation for all.

Methods that do not run on the chosen backbone (MAE and BEiT need a ViT) are skipped with their
reason, unless named with --methods.

Columns: k-NN top-1, linear top-1 at 1 % and 100 % labels, effective rank of the test features,
training images/s (median epoch) and wall time; the raw-pixel and random-init baselines once.

    # GPU (issue 3's table): Fashion-MNIST, ResNet-18, same epochs and batch for every method
    python bench/methods.py --dataset fashion-mnist --backbone resnet18 --epochs 50 --batch-size 512
    # CPU smoke table: digits, small CNN, a few steps
    python bench/methods.py --smoke
    # a few methods per device session, merged into one table (same dataset/backbone/budget)
    python bench/methods.py --methods byol dino --merge
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Optional

from selfsup.backbones import build_backbone
from selfsup.config import Config
from selfsup.run_config import load_config
from selfsup.data import load_split
from selfsup.errors import ConfigError
from selfsup.evaluate.run import evaluate_run
from selfsup.files import atomic_write
from selfsup.methods import build_method
from selfsup.registry import METHODS
from selfsup.train import pretrain
from selfsup.train.metrics_log import read_metrics
from selfsup.views.sequence_recipes import is_sequence_recipe


def method_config(name: str, args, run_dir: Path) -> Config:
    """The config method ``name`` runs with at the bench's budget, --set and --smoke included."""
    overrides = [f"method.name={name}", f"data.dataset={args.dataset}",
                 f"backbone.name={args.backbone}", f"train.epochs={args.epochs}",
                 f"train.batch_size={args.batch_size}", f"train.device={args.device}",
                 f"train.steps_per_epoch={args.steps_per_epoch}", "train.progress=false",
                 f"train.compile={str(args.compile).lower()}", f"out={run_dir}",
                 f"eval.label_fractions={json.dumps(args.fractions)}"] + args.set
    if args.smoke:
        overrides += ["backbone.widths=[16, 32]", "train.health_samples=512",
                      "train.probe_train_samples=512", "train.probe_test_samples=256",
                      "eval.tsne_samples=100"]
    return load_config(None, overrides)


def run_method(name: str, args, out_dir: Path, baselines: bool) -> dict:
    run_dir = out_dir / name
    started = time.perf_counter()
    pretrain(method_config(name, args, run_dir))
    train_seconds = time.perf_counter() - started
    result = evaluate_run(run_dir, device=args.device, baselines=baselines, log=lambda _: None)
    epochs = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "epoch"]
    return {
        "method": name, "knn_top1": result["knn_top1"], "knn_k": result.get("knn_k"),
        "linear_top1": result["linear_top1"],
        "effective_rank": result["health"]["effective_rank"], "feature_dim": result["feature_dim"],
        "images_per_s": statistics.median(r["images_per_s"] for r in epochs),
        "train_seconds": train_seconds, "baselines": result.get("baselines", {}),
    }


def refuses_backbone(name: str, args, shape: tuple[int, int, int]) -> Optional[str]:
    """Why method ``name`` cannot be built on the bench's backbone as its run would configure it
    (its ConfigError), or None. ``shape``: the data's (C, H, W)."""
    try:
        config = method_config(name, args, Path(args.out_dir) / name)
        build_method(config.method, build_backbone(config.backbone, shape[0], shape[1]), shape)
    except ConfigError as error:
        return str(error)
    return None


BUDGET_KEYS = ("dataset", "backbone", "epochs", "batch_size", "steps_per_epoch")


def merged_rows(path: Path, args, rows: list[dict], baselines: dict) -> tuple[list[dict], dict]:
    """Rows of an earlier table at the same budget, with this run's rows replacing same-named ones."""
    if not path.is_file():
        return rows, baselines
    earlier = json.loads(path.read_text())
    mismatched = [k for k in BUDGET_KEYS if earlier["args"].get(k) != getattr(args, k)]
    if mismatched:
        raise SystemExit(f"--merge: {path} was measured with different {', '.join(mismatched)}; "
                         "use another --json or the same budget")
    fresh = {r["method"] for r in rows}
    return [r for r in earlier["rows"] if r["method"] not in fresh] + rows, earlier["baselines"] or baselines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="*", help="default: every registered method")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps-per-epoch", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--fractions", type=float, nargs="*", default=[0.01, 1.0])
    parser.add_argument("--set", action="append", default=[], help="extra config override for every run")
    parser.add_argument("--smoke", action="store_true", help="CPU smoke test: digits, small CNN, few steps")
    parser.add_argument("--out-dir", default="runs/bench-methods")
    parser.add_argument("--json", default="bench/results/methods.json")
    parser.add_argument("--merge", action="store_true",
                        help="add these rows to --json's table (replacing rows of the same method) "
                             "when it was measured at the same data set, backbone and budget")
    args = parser.parse_args()
    if args.smoke:
        args.dataset, args.backbone, args.epochs, args.batch_size = "digits", "small-cnn", 2, 128
        args.steps_per_epoch, args.device = 10, "cpu"
    out_dir = Path(args.out_dir) / time.strftime("%Y%m%d-%H%M%S")
    names = args.methods or [n for n in METHODS.names()
                             if not is_sequence_recipe(METHODS.get(n).view_recipe)]
    # e.g. MAE and BEiT need a ViT: they belong to another table, not to this backbone's
    shape = load_split(args.dataset, "train").shape
    skipped = {} if args.methods else {n: reason for n in names
                                       if (reason := refuses_backbone(n, args, shape)) is not None}
    names = [n for n in names if n not in skipped]
    rows = []
    for i, name in enumerate(names):
        print(f"[{i + 1}/{len(names)}] {name}", flush=True)
        rows.append(run_method(name, args, out_dir, baselines=(i == 0)))
    baselines = rows[0]["baselines"]
    if args.merge:
        rows, baselines = merged_rows(Path(args.json), args, rows, baselines)
    keys = [str(float(f)) for f in args.fractions]
    header = f"{'method':<16} {'k-NN':>6} " + " ".join(f"{'lin@' + k:>9}" for k in keys) + \
             f" {'rank':>7} {'img/s':>9} {'train s':>8}"
    print(f"\n{args.dataset}, {args.backbone}, {args.epochs} epochs × batch {args.batch_size}")
    print(header)
    for r in rows:
        print(f"{r['method']:<16} {r['knn_top1']:>6.3f} " +
              " ".join(f"{r['linear_top1'][k]:>9.3f}" for k in keys) +
              f" {r['effective_rank']:>7.1f} {r['images_per_s']:>9,.0f} {r['train_seconds']:>8.1f}")
    for name, b in baselines.items():
        print(f"{'(' + name + ')':<16} {b['knn_top1']:>6.3f} " +
              " ".join(f"{b['linear_top1'][k]:>9.3f}" for k in keys))
    for name, reason in skipped.items():
        print(f"{name:<16} skipped: {reason}")
    table = {"args": vars(args), "date": time.strftime("%Y-%m-%d"), "rows": rows,
             "baselines": baselines, "skipped": skipped}
    # atomically: --merge reads this file back in a later session
    atomic_write(args.json, lambda tmp: tmp.write_text(json.dumps(table, indent=2)))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
