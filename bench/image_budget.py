"""Which image recipe learns the most in a fixed wall-clock budget on this machine?

Every candidate (method × schedule × key options, on Fashion-MNIST) pretrains for the same
wall-clock budget (``train.budget_minutes``), then is evaluated with the demo's protocol: k-NN
(k = 200) and linear probes at 1 % (3 label subsets), 10 % (3 subsets) and 100 % of the labels,
beside raw pixels and the random-init encoder (evaluated once, with the first candidate: they do
not depend on the recipe). Before its run, each candidate's step is timed part by part on the real
data (``profile_step.part_milliseconds``: views, forward + loss, backward, optimiser), outside the
budget, so the table says where its time goes.

Each candidate runs as its own process (``--worker``) with ``--threads`` threads, ``--parallel``
side by side; rows land in ``<out-dir>/<recipe>/row.json`` and a row already there is reused.

    # issue 17's table: 6-minute budget, two candidates side by side, one thread each
    python bench/image_budget.py --budget 6 --parallel 2 --threads 1 \\
        --json bench/results/image_budget-cpu.json
    python bench/image_budget.py --smoke    # digits, seconds per recipe: every piece runs

Only budgets measured on the same machine, with the same threads and neighbours, compare.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

# run as a script, this folder is on sys.path; budget_sweep puts the repository there too
from budget_sweep import (
    add_sweep_arguments, launch_worker, row_path, run_sweep, worker_argv, write_results,
)


@dataclass(frozen=True)
class Recipe:
    """A candidate: a method and its config overrides."""

    method: str
    overrides: tuple[str, ...] = ()
    note: str = ""


# The demo's CPU recipe before this study (SimCLR, small CNN, LARS 0.6 per 256 at batch 128,
# τ = 0.2), its epochs replaced by the budget. Every other candidate changes one or two things.
DEMO = ("train.batch_size=128", "optim.name=lars", "optim.lr=0.6", "optim.warmup_epochs=1",
        "optim.weight_decay=1e-6", "method.temperature=0.2")
# The second pass (grid read-outs) builds on the first pass's best: SimCLR with a linear decay
LINEAR = DEMO + ("optim.schedule=linear",)
GRID4 = LINEAR + ("backbone.grid=4", "method.proj_hidden_dim=1024")  # 4,096-d, projector 1,024
# The demo's recipe after this study but for its middle stages (selfsup.cli.demo_overrides)
RECIPE_G4_W64 = GRID4 + ("backbone.widths=[32, 64, 128, 64]", "method.temperature=0.1")
RECIPES: dict[str, Recipe] = {
    "simclr-demo": Recipe("simclr", DEMO, "the demo's recipe before this study"),
    "simclr-linear": Recipe("simclr", LINEAR, "linear decay to 0 (budgeted training)"),
    "simclr-b256": Recipe("simclr", DEMO + ("train.batch_size=256",), "twice the batch"),
    "simclr-t0.1": Recipe("simclr", DEMO + ("method.temperature=0.1",)),
    "simclr-t0.5": Recipe("simclr", DEMO + ("method.temperature=0.5",)),
    "simclr-crop0.35": Recipe("simclr", DEMO + ("views.crop_scale=[0.35, 1]",),
                              "milder crops"),
    "simclr-grid2": Recipe("simclr", LINEAR + ("backbone.grid=2",),
                           "linear decay; features pooled to a 2×2 grid"),
    "simclr-grid2-b64": Recipe("simclr", LINEAR + ("backbone.grid=2", "train.batch_size=64"),
                               "the same at batch 64: twice the steps"),
    "simclr-grid4": Recipe("simclr", GRID4,
                           "linear decay; the whole 4×4 map (4,096-d), projector 1,024 wide"),
    "simclr-grid4-t0.1": Recipe("simclr", GRID4 + ("method.temperature=0.1",),
                                "the same at τ 0.1"),
    "simclr-g4-w128": Recipe("simclr", RECIPE_G4_W64 + ("backbone.widths=[32, 64, 128, 128]",),
                             "grid 4 at τ 0.1, last stage 128 wide (2,048-d)"),
    "simclr-g4-w64": Recipe("simclr", RECIPE_G4_W64,
                            "grid 4 at τ 0.1, last stage 64 wide (1,024-d)"),
    "simclr-g4-w64-crop0.35": Recipe("simclr", RECIPE_G4_W64 + ("views.crop_scale=[0.35, 1]",),
                                     "the same, crops of ≥ 35 % area"),
    "simclr-g4-w64-crop0.6": Recipe("simclr", RECIPE_G4_W64 + ("views.crop_scale=[0.6, 1]",),
                                    "the same, crops of ≥ 60 % area"),
    "simclr-g4-w96-192": Recipe("simclr", RECIPE_G4_W64 + ("backbone.widths=[32, 96, 192, 64]",),
                                "the same, middle stages 96 and 192 wide (~1.6× the FLOPs)"),
    "simclr-g4-w128-256": Recipe("simclr", RECIPE_G4_W64 + ("backbone.widths=[32, 128, 256, 64]",),
                                 "the same, middle stages 128 and 256 wide (~2.5× the FLOPs): "
                                 "the new demo's recipe, in fp32"),
    "byol": Recipe("byol", ("train.batch_size=128", "optim.warmup_epochs=1")),
    "vicreg": Recipe("vicreg", ("train.batch_size=128", "optim.warmup_epochs=1")),
    "barlow-twins": Recipe("barlow-twins", ("train.batch_size=128", "optim.warmup_epochs=1")),
    "mocov3": Recipe("mocov3", ("train.batch_size=128", "optim.warmup_epochs=1")),
    "dino-small-crops": Recipe("dino", ("train.batch_size=128", "optim.warmup_epochs=1",
                                        "views.num_local_views=4", "views.local_size=12"),
                               "2 global 28-px + 4 local 12-px crops"),
}
# health checks and the online probe every few hundred steps: they would eat into the budget
COMMON = ("data.dataset=fashion-mnist", "backbone.name=small-cnn", "train.device=cpu",
          "train.progress=false", "train.steps_per_epoch=180", "train.health_every=2",
          "train.probe_every=4", "train.probe_train_samples=5000",
          "train.probe_test_samples=2000", "eval.knn_k=200", "eval.tsne_samples=200")
SMOKE = ("data.dataset=digits", "backbone.widths=[8, 16]", "train.steps_per_epoch=5",
         "train.health_samples=512", "train.probe_train_samples=256",
         "train.probe_test_samples=128", "eval.tsne_samples=50")


def recipe_overrides(recipe: Recipe, args: argparse.Namespace, run_dir: Path) -> list[str]:
    """The pretraining config of one candidate."""
    return [f"method.name={recipe.method}", *COMMON, *recipe.overrides,
            f"train.budget_minutes={args.budget}", f"out={run_dir}",
            f"eval.label_fractions={json.dumps(args.eval_fractions)}", f"eval.seeds={args.seeds}",
            *(SMOKE if args.smoke else ()), *args.set]


def step_parts(overrides: list[str], repeats: int) -> dict[str, float]:
    """Median milliseconds of each part of the candidate's step, on a trainer built apart from
    the run (its weights move)."""
    from profile_step import part_milliseconds

    from selfsup.run_config import load_config
    from selfsup.train.parts import build_parts

    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(None, overrides + [f"out={tmp}/run", "train.budget_minutes=0"])
        parts = build_parts(config)  # the parts fit() trains with; nothing is written
        return part_milliseconds(parts, repeats)


def run_one(name: str, args: argparse.Namespace, baselines: bool) -> dict[str, Any]:
    """Time the step's parts, pretrain for the budget and evaluate, in this process; the row."""
    from selfsup.run_config import load_config
    from selfsup.evaluate.run import evaluate_run
    from selfsup.train import pretrain
    from selfsup.train.metrics_log import read_metrics

    recipe = RECIPES[name]
    run_dir = Path(args.out_dir) / name
    overrides = recipe_overrides(recipe, args, run_dir)
    parts = step_parts(overrides, 3 if args.smoke else 20)
    config = load_config(None, overrides)
    started = time.perf_counter()
    pretrain(config)
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    result = evaluate_run(run_dir, device="cpu", baselines=baselines,
                          log=lambda message: print(f"  [{name}] {message}", flush=True))
    eval_seconds = time.perf_counter() - started
    records = read_metrics(run_dir / "metrics.jsonl")
    budget = next(r for r in records if r.get("event") == "budget")
    probes = [(r["step"], r["knn_top1"]) for r in records if r["kind"] == "probe"]
    accuracies = {k: result[k] for k in ("knn_top1", "linear_top1", "linear_top1_std")
                  if k in result}
    return {
        "recipe": name, "method": recipe.method, "overrides": list(recipe.overrides) + args.set,
        "note": recipe.note, "budget_minutes": args.budget, "threads": args.threads,
        "batch_size": config.train.batch_size, "total_steps": budget["total_steps"],
        "steps_per_second": budget["steps_per_second"],
        "images_per_second": budget["steps_per_second"] * config.train.batch_size,
        "step_ms": parts, "train_seconds": train_seconds, "eval_seconds": eval_seconds,
        "online_knn": probes, "effective_rank": result["health"]["effective_rank"],
        "knn_k": result.get("knn_k"), "sets": {"ssl": accuracies, **result.get("baselines", {})},
    }


def _cells(acc: dict[str, Any], keys: list[str], knn_k: Any = "") -> str:
    return f"{100 * acc['knn_top1']:>6.1f} {acc.get('knn_k', knn_k):>3} " + " ".join(
        f"{100 * acc['linear_top1'].get(k, float('nan')):>8.1f}" for k in keys)


def print_table(rows: list[dict[str, Any]], fractions: list[float]) -> None:
    """Each recipe's accuracies, rate and step parts (share of the step), then the baselines."""
    from profile_step import PARTS

    keys = [str(float(f)) for f in fractions]
    header = (f"{'recipe / features':<20} {'k-NN':>6} {'k':>3} " + " ".join(f"{'lin@' + k:>8}" for k in keys)
              + f" {'steps':>6} {'img/s':>6}  " + " ".join(f"{p[:5]:>5}" for p in PARTS))
    print("\n" + header + "\n" + "-" * len(header))
    for row in rows:
        total = sum(row["step_ms"].values())
        shares = " ".join(f"{100 * row['step_ms'][p] / total:>4.0f}%" for p in PARTS)
        print(f"{row['recipe']:<20} {_cells(row['sets']['ssl'], keys, row['knn_k'])} "
              f"{row['total_steps']:>6} "
              f"{row['images_per_second']:>6.0f}  {shares}")
    for row in rows:
        for name, acc in row["sets"].items():
            if name != "ssl":
                print(f"{name + ' (' + row['recipe'] + ')':<20} {_cells(acc, keys)}")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    add_sweep_arguments(parser, 6.0, "runs/bench-image-budget", "bench/results/image_budget.json")
    parser.add_argument("--baselines", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--baselines-with", metavar="RECIPE",
                        help="the recipe whose evaluation adds the baselines (default: the first "
                             "of --recipes; one outside --recipes: none, as when two sweeps share "
                             "--out-dir)")
    parser.add_argument("--smoke", action="store_true",
                        help="digits, a tiny CNN, seconds of budget: every piece runs")
    args = parser.parse_args(argv)
    if args.smoke:
        if args.recipes == list(RECIPES):  # the default: two (DINO's 12-px crops need more than 8 px)
            args.recipes = ["simclr-demo", "byol"]
        args.budget, args.seeds, args.eval_fractions = 0.05, 1, [0.1]
        args.out_dir, args.json = "runs/bench-image-budget-smoke", "runs/bench-image-budget-smoke/smoke.json"
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.worker:
        row = run_one(args.worker, args, args.baselines)
        row_path(args.out_dir, args.worker).write_text(json.dumps(row, indent=2))
        return 0

    def launch(name: str) -> subprocess.Popen:
        # one recipe also evaluates the baselines: raw pixels and the random-init encoder
        extra = ["--baselines"] if name == (args.baselines_with or args.recipes[0]) else []
        return launch_worker(__file__, name, worker_argv(args) + extra
                             + (["--smoke"] if args.smoke else []), args.out_dir, args.threads)

    rows = run_sweep(args.recipes, args.out_dir, launch, args.parallel, args.collect,
                     f"({args.budget:g} min, {args.threads} threads)")
    path = write_results(args.json, args, rows)
    if rows:
        print_table(rows, args.eval_fractions)
    print(f"wrote {path}")
    return 0 if args.collect or len(rows) == len(args.recipes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
