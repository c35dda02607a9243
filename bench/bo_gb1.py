"""Bayesian optimisation on the real GB1 landscape: how fast does each method find fit variants?

The protocol of published active-learning studies on GB1 (Wu et al. 2016 data, 149,361 measured
variants of sites 39/40/41/54): measure 96 random variants, then 4 rounds of 96 proposals, 480
measurements in all; repeat over seeds. Each arm of a seed starts from the same 96 variants.
Arms: ``random`` (random search), and ``FEATURIZER:ACQUISITION`` running
``selfsup.apps.bo.propose`` on the whole pool, ACQUISITION one of ``thompson``, ``qei``, ``qucb``.
FEATURIZER is ``onehot`` or ``descriptors`` of the four mutated sites, or ``RUN_DIR@POOLING``:
the per-residue states of a ``selfsup`` protein run's encoder, averaged over the whole sequence
(``@mean``, the default) or over the four mutated sites (``@sites``). Such an arm is named after
the run directory in the results, e.g. ``runs/uniprot-mlm@sites:thompson`` → ``uniprot-mlm:sites:
thompson``, so results of several encoders can share one file (their directories need distinct
names). The pool's embeddings are computed once, before the first seed, and cached in
``RUN_DIR/bo-embeddings``. The surrogate sees the measured fitness on its linear scale (relative
to the wild type).

Reported per arm, mean ± s.e.m. over seeds: the best normalised fitness found (fitness / the
landscape's maximum) after 96, 192, …, 480 measurements; the fraction of the top-1% variants
(1,494 of them) found; the wall time of one BO round (GP fit + acquisition over the pool).
Then each arm against ``--reference`` (one-hot Thompson), paired over seeds.
Results are written after every (arm, seed), so a long run can be stopped and resumed.

One thread on CPU (what a laptop user has; and the machine it was run on was shared):
    OMP_NUM_THREADS=1 python bench/bo_gb1.py --seeds 10 \
        --arms random,onehot:thompson,descriptors:thompson
then, added to the same results (qEI's greedy batch costs more: a shorter shortlist, 5 seeds):
    OMP_NUM_THREADS=1 python bench/bo_gb1.py --seeds 5 --resume --shortlist 256 \
        --arms random,onehot:thompson,descriptors:thompson,onehot:qei,descriptors:qei
and a pretrained protein encoder against them, with its random-init control (RUN from
``selfsup pretrain --method mlm --dataset uniprot-go --backbone transformer-tiny --out
runs/mlm-uniprot-tiny``; docs/benchmarks.md has the full commands):
    OMP_NUM_THREADS=1 python bench/bo_gb1.py --seeds 10 --resume --arms \
        random,onehot:thompson,runs/mlm-uniprot-tiny@mean:thompson,runs/mlm-uniprot-tiny@sites:thompson
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from selfsup.apps.bo import ACQUISITIONS, SHORTLIST, prepare_features, propose
from selfsup.apps.featurize import BUILTIN_FEATURIZERS, ENCODER_FILE, POOLINGS, make_featurizer
from selfsup.data.gb1 import MUTATED_SITES, load_gb1, normalised_fitness, top_variants
from selfsup.errors import SelfsupError
from selfsup.files import atomic_write

DEFAULT_ARMS = "random,onehot:thompson,descriptors:thompson"


@dataclass(frozen=True)
class Arm:
    """One arm of the comparison. ``label`` names it in the results and the table; ``features``
    names its feature set (shared by arms that differ only in the acquisition), built by
    ``make_featurizer(source, MUTATED_SITES, pooling)``; random search has neither."""

    label: str
    acquisition: Optional[str] = None  # None: random search
    features: Optional[str] = None
    source: Optional[str] = None  # "onehot", "descriptors" or a run directory
    pooling: str = "mean"


def parse_arm(text: str) -> Arm:
    """``random``, or ``FEATURIZER:ACQUISITION`` (see the module docstring)."""
    if text == "random":
        return Arm("random")
    featurizer, _, acquisition = text.rpartition(":")  # a run directory's path may hold a colon
    if acquisition not in ACQUISITIONS:
        raise SystemExit(f"arm {text!r}: the acquisition after the last ':' must be one of "
                         f"{', '.join(ACQUISITIONS)}; see --help")
    if featurizer in BUILTIN_FEATURIZERS:
        return Arm(text, acquisition, featurizer, featurizer)
    run_dir, at, pooling = featurizer.rpartition("@")
    if not at:  # no pooling named: the mean over the sequence
        run_dir, pooling = featurizer, "mean"
    if pooling not in POOLINGS:
        raise SystemExit(f"arm {text!r}: pooling {pooling!r} must be one of {', '.join(POOLINGS)}")
    features = f"{Path(run_dir).resolve().name}:{pooling}"
    return Arm(f"{features}:{acquisition}", acquisition, features, run_dir, pooling)


def parse_arms(text: str) -> list[Arm]:
    """The comma-separated arms; run directories whose names would give two feature sets one
    label are refused."""
    arms = [parse_arm(a.strip()) for a in text.split(",") if a.strip()]
    sources: dict[str, str] = {}
    for arm in arms:
        if arm.features is None:
            continue
        source = str(Path(arm.source).resolve())
        if sources.setdefault(arm.features, source) != source:
            raise SystemExit(f"run directories {sources[arm.features]} and {source} would both be "
                             f"named {arm.features.split(':')[0]!r} in the results; rename one")
    return arms


def pool_features(arms: list[Arm], sequences: list[str]) -> dict[str, np.ndarray]:
    """Each feature set the arms use, of the whole pool, computed and prepared for the surrogate
    once (run directories cache their embeddings)."""
    features: dict[str, np.ndarray] = {}
    for arm in arms:
        if arm.features is None or arm.features in features:
            continue
        started = time.perf_counter()
        try:
            featurizer = make_featurizer(arm.source, MUTATED_SITES, arm.pooling)
            # prepared once (unit cube, PCA where the featuriser asks): propose then only
            # checks them, round after round
            features[arm.features] = prepare_features(featurizer(sequences),
                                                      featurizer.max_dims).numpy()
        except SelfsupError as error:
            raise SystemExit(f"arm {arm.label}: {error}") from None
        print(f"features {arm.features}: {features[arm.features].shape[1]} columns in "
              f"{time.perf_counter() - started:.1f} s", flush=True)
    return features


def check_same_encoders(arms: list[Arm], results: dict) -> None:
    """Record the SHA-256 of each run arm's encoder in ``results["encoders"]``; SystemExit when an
    arm already has seeds from another encoder (the run directory was retrained), since the arm's
    seeds would then mix two encoders under one name."""
    stored = results.setdefault("encoders", {})
    for arm in arms:
        path = Path(arm.source or "") / ENCODER_FILE
        if arm.features is None or arm.source in BUILTIN_FEATURIZERS or not path.is_file():
            continue  # no encoder, or make_featurizer names the problem
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        has_seeds = any(r["arm"] == arm.label for r in results["runs"])
        if has_seeds and stored.get(arm.features, digest) != digest:
            raise SystemExit(f"arm {arm.label}: {path} is not the encoder its stored seeds used "
                             "(retrained?); use another --out, or rename the run directory")
        stored[arm.features] = digest


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--initial", type=int, default=96, help="random variants measured first")
    p.add_argument("--batch", type=int, default=96, help="proposals per round")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--arms", default=DEFAULT_ARMS,
                   help="comma-separated: random, or FEATURIZER:ACQUISITION with FEATURIZER one of "
                        f"{', '.join(BUILTIN_FEATURIZERS)} or RUN_DIR@POOLING (a protein run's "
                        f"encoder; POOLING {' or '.join(POOLINGS)}) and ACQUISITION one of "
                        f"{', '.join(ACQUISITIONS)} (default {DEFAULT_ARMS})")
    p.add_argument("--shortlist", type=int, default=SHORTLIST,
                   help="qei/qucb: candidates (best single-point acquisition) that the greedy "
                        f"batch selection considers (default {SHORTLIST}); cost grows linearly")
    p.add_argument("--out", default="bench/results/bo_gb1.json")
    p.add_argument("--plot", default="bench/results/bo_gb1.png")
    p.add_argument("--reference", default="onehot:thompson",
                   help="arm the others are compared with, seed by seed, after the table")
    p.add_argument("--resume", action="store_true",
                   help="keep the (arm, seed) results already in --out")
    return p.parse_args(argv)


def resumable_results(out: Path, protocol: dict) -> dict:
    """The runs stored in ``out`` and the encoder hashes they were run with (``runs``,
    ``encoders``); SystemExit when they followed another protocol (the thread count aside), since
    their curves could not be compared or averaged with new ones."""
    stored = json.loads(out.read_text())
    changed = sorted(key for key in protocol.keys() | stored["protocol"].keys()
                     if key != "threads" and protocol.get(key) != stored["protocol"].get(key))
    if changed:
        def settings(p: dict) -> str:
            return ", ".join(f"{key}={p.get(key)!r}" for key in changed)

        raise SystemExit(f"--resume: {out} holds runs with {settings(stored['protocol'])}, not "
                         f"{settings(protocol)}; resume with its settings or use another --out")
    return {"runs": stored["runs"], "encoders": stored.get("encoders", {})}


def run_arm(acquisition: Optional[str], features: Optional[np.ndarray], fitness: np.ndarray,
            initial: np.ndarray, batch: int, rounds: int, seed: int, shortlist: int) -> dict:
    """One arm from one initial set: the measured pool rows in order and per-round timings.
    ``acquisition`` None is random search (``features`` unused)."""
    measured = list(initial)
    round_seconds = []
    rng = np.random.default_rng([seed, 1])  # random search's own stream
    for round_index in range(rounds):
        started = time.perf_counter()
        if acquisition is None:
            unmeasured = np.setdiff1d(np.arange(len(fitness)), measured)
            chosen = rng.choice(unmeasured, batch, replace=False)
        else:
            chosen = propose(features, measured, fitness[measured], batch, acquisition,
                             seed=seed * 100 + round_index, shortlist=shortlist).indices
        round_seconds.append(time.perf_counter() - started)
        measured.extend(int(i) for i in chosen)
    return {"measured": [int(i) for i in measured], "round_seconds": round_seconds}


def curves(measured: list[int], fitness: np.ndarray, top: np.ndarray, initial: int,
           batch: int) -> tuple[list[float], list[float]]:
    """Best normalised fitness and fraction of the top variants found after each stage."""
    norm = normalised_fitness(fitness)
    top_set = set(top.tolist())
    stages = range(initial, len(measured) + 1, batch)
    best = [float(norm[measured[:n]].max()) for n in stages]
    found = [len(top_set.intersection(measured[:n])) / len(top_set) for n in stages]
    return best, found


def summarise(results: dict, arms: list[str], stages: list[int]) -> str:
    lines = ["| arm | seeds | " + " | ".join(f"best @{n}" for n in stages)
             + f" | top-1% found @{stages[-1]} | s / round |",
             "|---" * (len(stages) + 4) + "|"]
    for arm in arms:
        runs = [r for r in results["runs"] if r["arm"] == arm]
        if not runs:
            continue
        best = np.array([r["best"] for r in runs])
        found = np.array([r["top_found"][-1] for r in runs])
        seconds = np.concatenate([r["round_seconds"] for r in runs])
        cells = [f"{m:.3f} ± {s:.3f}" for m, s in zip(best.mean(0), sem(best))]
        lines.append(f"| {arm} | {len(runs)} | " + " | ".join(cells)
                     + f" | {found.mean():.3f} ± {sem(found):.3f} | {seconds.mean():.1f} |")
    return "\n".join(lines)


def paired_differences(results: dict, arms: list[str], reference: str) -> str:
    """Each arm minus ``reference`` in best normalised fitness at the last stage, paired over the
    seeds both ran (same initial variants): mean ± s.e.m., and seeds better / worse / tied."""
    final = {(r["arm"], r["seed"]): r["best"][-1] for r in results["runs"]}
    lines = [f"| arm − {reference} | seeds | best @end, paired | better / worse / tied |",
             "|---|---:|---:|---|"]
    for arm in arms:
        seeds = sorted(seed for a, seed in final if a == arm and (reference, seed) in final)
        if arm == reference or not seeds:
            continue
        diff = np.array([final[arm, seed] - final[reference, seed] for seed in seeds])
        lines.append(f"| {arm} | {len(seeds)} | {diff.mean():+.3f} ± {sem(diff):.3f} | "
                     f"{(diff > 0).sum()} / {(diff < 0).sum()} / {(diff == 0).sum()} |")
    return "\n".join(lines)


def sem(values: np.ndarray):
    """Standard error of the mean over the first axis (0 for a single seed)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return np.zeros(values.shape[1:]) if values.ndim > 1 else 0.0
    return values.std(0, ddof=1) / np.sqrt(len(values))


def plot(results: dict, arms: list[str], stages: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm in arms:
        runs = [r for r in results["runs"] if r["arm"] == arm]
        if not runs:
            continue
        best = np.array([r["best"] for r in runs])
        mean, err = best.mean(0), sem(best)
        ax.plot(stages, mean, marker="o", label=f"{arm} ({len(runs)} seeds)")
        ax.fill_between(stages, mean - err, mean + err, alpha=0.2)
    ax.set_xlabel("variants measured")
    ax.set_ylabel("best normalised fitness found")
    ax.set_title("GB1 (149,361 variants): mean ± s.e.m. over seeds")
    ax.set_xticks(stages)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save_results(path: Path, results: dict) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(results)))


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    arms = parse_arms(args.arms)
    labels = [arm.label for arm in arms]
    sequences, _, fitness = load_gb1()
    top = top_variants(fitness)
    stages = list(range(args.initial, args.initial + args.batch * args.rounds + 1, args.batch))
    out = Path(args.out)
    results = {"protocol": {"initial": args.initial, "batch": args.batch, "rounds": args.rounds,
                            "pool": len(sequences), "top_variants": len(top),
                            "target": "fitness, linear scale relative to wild type",
                            "threads": torch.get_num_threads()},
               "runs": []}
    if args.resume and out.is_file():
        # the stored hashes too: without them check_same_encoders cannot see a retrained encoder
        results.update(resumable_results(out, results["protocol"]))
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    done = {(r["arm"], r["seed"]) for r in results["runs"]}
    # only arms with a seed still to run need their features (a finished encoder arm's run
    # directory may be gone: its table can still be remade from the results)
    to_run = [arm for arm in arms if any((arm.label, seed) not in done for seed in seeds)]
    check_same_encoders(to_run, results)
    features = pool_features(to_run, sequences)
    for seed in seeds:
        initial = np.random.default_rng(seed).choice(len(sequences), args.initial, replace=False)
        for arm in arms:
            if (arm.label, seed) in done:
                continue
            run = run_arm(arm.acquisition, features.get(arm.features), fitness, initial,
                          args.batch, args.rounds, seed, args.shortlist)
            best, found = curves(run["measured"], fitness, top, args.initial, args.batch)
            results["runs"].append({"arm": arm.label, "seed": seed, "best": best,
                                    "top_found": found, "round_seconds": run["round_seconds"],
                                    "shortlist": args.shortlist,
                                    "measured": run["measured"]})
            print(f"seed {seed} {arm.label:<22} best {' '.join(f'{b:.3f}' for b in best)}  top-1% "
                  f"{found[-1]:.3f}  {np.mean(run['round_seconds']):.1f} s/round", flush=True)
            save_results(out, results)  # a kill between arms leaves a file --resume can read
    table = summarise(results, labels, stages)
    results["table"] = table
    save_results(out, results)
    plot(results, labels, stages, Path(args.plot))
    print(table)
    if args.reference in labels:
        print(paired_differences(results, labels, args.reference))
    print(f"wrote {out} and {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
