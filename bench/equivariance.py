"""Invariance vs equivariance to 90° rotations (C4), measured both ways.

Trains the `equivariance` method twice on the same budget — positive pairs (f(g·x), f(x))
("invariant") or (f(g·x), ρ(g)·f(x)) ("equivariant", ρ rotating pairs of embedding dimensions by
g's angle) — then reports for each, and for the untrained network as a reference:
  * how much the representation changes under g: invariance error ‖f̂(gx) − f̂(x)‖ and equivariance
    error ‖f̂(gx) − ρ(g)f̂(x)‖ of the projector outputs (unit vectors, so 0 … 2), and the invariance
    error of the encoder features evaluation uses;
  * downstream accuracy of the encoder: k-NN and linear probes at 1 % and 100 % labels (upright
    test images, as `selfsup evaluate` runs them).

    python bench/equivariance.py                       # CPU: small CNN, a few minutes
    python bench/equivariance.py --device cuda --backbone resnet18 --epochs 30 --steps-per-epoch 0
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from selfsup.backbones import build_backbone
from selfsup.config import Config, EvalConfig
from selfsup.run_config import load_config
from selfsup.data import load_split
from selfsup.evaluate.run import evaluate_run
from selfsup.methods import Method, build_method
from selfsup.methods.equivariance import equivariance_error
from selfsup.train import Trainer
from selfsup.train.device import seed_everything


def untrained(config: Config, in_shape: tuple[int, int, int]) -> Method:
    """The method as the trainer builds it before the first step (same seed, same order)."""
    seed_everything(config.train.seed)
    return build_method(config.method, build_backbone(config.backbone, in_shape[0], in_shape[1]),
                        in_shape)


def errors(method, images: torch.Tensor) -> dict[str, float]:
    method.eval()
    with torch.no_grad():
        projected = equivariance_error(lambda x: method.projector(method.encoder(x)), images)
        encoder = equivariance_error(method.encoder, images)
    return {"projector_invariance_error": projected["invariance_error"],
            "projector_equivariance_error": projected["equivariance_error"],
            "encoder_invariance_error": encoder["invariance_error"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--backbone", default="small-cnn")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps-per-epoch", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--error-samples", type=int, default=2000)
    parser.add_argument("--out-dir", default="runs/bench-equivariance")
    parser.add_argument("--json", default="bench/results/equivariance.json")
    args = parser.parse_args()
    out_dir = Path(args.out_dir) / time.strftime("%Y%m%d-%H%M%S")
    test = load_split(args.dataset, "test")
    images = test.get(torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[: args.error_samples])
    rows = []
    for mode in ("invariant", "equivariant"):
        config = load_config(None, [
            "method.name=equivariance", f"method.mode={mode}", f"data.dataset={args.dataset}",
            f"backbone.name={args.backbone}", f"train.epochs={args.epochs}",
            f"train.steps_per_epoch={args.steps_per_epoch}", f"train.batch_size={args.batch_size}",
            f"train.device={args.device}", "train.progress=false", "optim.warmup_epochs=1",
            f"out={out_dir / mode}"])
        if mode == "invariant":  # reference: the network both runs start from (same seed)
            rows.append({"model": "untrained", **errors(untrained(config, test.shape), images)})
        trainer = Trainer(config)
        started = time.perf_counter()
        trainer.fit()
        seconds = time.perf_counter() - started
        result = evaluate_run(config.out, device=args.device, baselines=False, log=lambda _: None,
                              eval_config=EvalConfig(label_fractions=[0.01, 1.0], tsne_samples=200))
        rows.append({"model": mode, **errors(trainer.parts.method, images.to(trainer.parts.device)),
                     "knn_top1": result["knn_top1"], "linear_top1": result["linear_top1"],
                     "train_seconds": seconds})
    print(f"\n{args.dataset}, {args.backbone}, {args.epochs} × {args.steps_per_epoch or 'all'} steps "
          f"of batch {args.batch_size}; errors on {len(images)} test images, mean over g ≠ e")
    print(f"{'model':<12} {'proj inv err':>12} {'proj eqv err':>12} {'enc inv err':>11} "
          f"{'k-NN':>6} {'lin@1%':>7} {'lin@100%':>8}")
    for r in rows:
        acc = (f"{r['knn_top1']:>6.3f} {r['linear_top1']['0.01']:>7.3f} {r['linear_top1']['1.0']:>8.3f}"
               if "knn_top1" in r else "")
        print(f"{r['model']:<12} {r['projector_invariance_error']:>12.3f} "
              f"{r['projector_equivariance_error']:>12.3f} {r['encoder_invariance_error']:>11.3f} {acc}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"args": vars(args), "date": time.strftime("%Y-%m-%d"),
                                           "rows": rows}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
