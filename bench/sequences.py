"""Sequence pretraining on real data, then frozen-feature evaluation against the issue's baselines.

Tasks (each: pretrain with the library's trainer, then ``evaluate_run`` on the run directory):

* ``protein``: ``mlm`` on swissprot-loc (train split) → subcellular location (10 classes), against
  amino-acid composition + dipeptide frequencies and the random-init encoder.
* ``dna``: ``dna-contrastive`` on 16s-reads → phylum of 150-bp reads (11 classes), against the 4-mer
  profile, the canonical (strand-merged) 4-mer profile and random init, with every feature set's
  reverse-complement consistency (mean cosine of f(x), f(rc x) vs random pairs).
* ``dna-rc``: the same with ``method.rc_invariant=true`` (strand-averaged encoder; 2× the cost).
* ``text``: ``mlm`` on 20newsgroups → topic (20 classes), against TF-IDF + the linear probe.

MLM rows also report the held-out perplexity of the masked tokens (the trainer's last ``held_out``
record) next to the context-free reference: the perplexity of the best guess from token
frequencies and the token shown at the position alone (``context_free_perplexities``; the plain
unigram perplexity is in the JSON too). An MLM below the reference has used the context.

    # GPU (issue 5's targets), one task per device call (each < 10 min), gathered with --merge;
    # the data files travel in .data/ (SELFSUP_DATA), see docs/gpu_session_plan.md
    python bench/sequences.py --tasks protein --backbone esm2-8m --epochs 20 --batch-size 128 \
        --max-length 512 --device cuda --json bench/results/sequences-h100.json --merge
    # CPU (bench/results/sequences-cpu.json, 2026-11-22): tiny encoder, 300 steps for protein
    # and DNA; text (its 8,192-way LM head at every position ran at 21 sequences/s) cut to
    # 120 steps with a 2,048-token vocabulary at length 128, added with --merge
    OMP_NUM_THREADS=1 python bench/sequences.py --tasks protein dna --backbone transformer-tiny \
        --epochs 3 --steps-per-epoch 100 --batch-size 64 --max-length 256 --device cpu \
        --dna-eval-reads-per-gene 2 --set optim.lr=4e-3 --json bench/results/sequences-cpu.json
    OMP_NUM_THREADS=1 python bench/sequences.py --tasks text --merge --backbone transformer-tiny \
        --epochs 2 --steps-per-epoch 60 --batch-size 64 --max-length 128 --device cpu \
        --set optim.lr=4e-3 --set data.vocab_size=2048 --json bench/results/sequences-cpu.json
    # smoke (about 4 minutes on 2 busy cores, most of it the TF-IDF probe of the text task)
    python bench/sequences.py --smoke

The 16s-reads data set has 10 reads per gene (40,590 train, 10,160 test reads); encoding them all
for the encoder, the random-init encoder and the RC checks takes minutes on a CPU.
``--dna-eval-reads-per-gene N`` evaluates on N reads per gene instead (the data set's
``reads_per_gene`` option: the same genes and gene split, its reads drawn afresh with the same
seed, so not a subset of the 10-per-gene reads), while pretraining reads the default 16s-reads.
Evaluation of protein and text reads every sequence.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from selfsup.config import build_options
from selfsup.run_config import load_config
from selfsup.data import load_split
from selfsup.data.dna_datasets import READS_NAME
from selfsup.evaluate.run import evaluate_run
from selfsup.tokenize import make_tokenizer
from selfsup.tokenize.base import Tokenizer
from selfsup.train import pretrain
from selfsup.train.checkpoint import load_encoder
from selfsup.train.metrics_log import read_metrics
from selfsup.views.sequence_recipes import MaskedTokenOptions

DEFAULT_READS_PER_GENE = 10  # 16s-reads as registered
REFERENCE_SEQUENCES = 2000  # sequences of each split the reference perplexities count
# the arguments a row's numbers depend on, kept in each row (rows of several runs share a table)
BUDGET_KEYS = ("backbone", "epochs", "steps_per_epoch", "batch_size", "max_length",
               "dna_eval_reads_per_gene", "set")


@dataclass(frozen=True)
class Task:
    method: str
    dataset: str
    target: str  # what the labels are, for the table's title
    overrides: tuple[str, ...] = ()


TASKS = {
    "protein": Task("mlm", "swissprot-loc", "subcellular location"),
    "dna": Task("dna-contrastive", READS_NAME, "phylum of 150-bp reads"),
    "dna-rc": Task("dna-contrastive", READS_NAME, "phylum of 150-bp reads",
                   ("method.rc_invariant=true",)),
    "text": Task("mlm", "20newsgroups", "newsgroup"),
}


def token_counts(tokenizer: Tokenizer, sequences: Sequence[str], max_length: int) -> np.ndarray:
    """(V,) how often each id occurs in ``sequences`` (cut to ``max_length`` tokens as the encoder
    sees them), specials left out."""
    counts = np.zeros(tokenizer.vocab_size)
    for sequence in sequences:
        np.add.at(counts, tokenizer.encode(sequence, max_length=max_length).numpy(), 1)
    counts[tokenizer.special_ids] = 0
    return counts


def context_free_perplexities(tokenizer: Tokenizer, train: Sequence[str], test: Sequence[str],
                              max_length: int, masking: MaskedTokenOptions) -> dict[str, float]:
    """Masked-token perplexities on ``test`` of two predictors that never look at the context, for
    an MLM's held-out perplexity to be read against:

    * ``unigram_perplexity``: the training split's token frequencies q (add-one smoothed);
    * ``context_free_perplexity``: the best guess from q and the token shown at the position
      alone, knowing BERT's rule (a chosen token shows as <mask> with probability m, as a uniform
      draw from the R replacement ids with r, as itself with k = 1 − m − r). Showing x has
      probability P(x | t) = k·[x = t] + r/R·[x ∈ R] given the true token t, so the guess is
      P(t | x) = q(t)·P(x | t) / Z(x) with Z(x) = k·q(x) + r/R·[x ∈ R]. The 10% kept tokens give
      their answer away: an MLM beats this reference only by using the context.
    """
    seen, queried = (token_counts(tokenizer, texts, max_length) for texts in (train, test))
    ordinary = np.ones(tokenizer.vocab_size, dtype=bool)
    ordinary[tokenizer.special_ids] = False
    q = np.where(ordinary, seen + 1, 0) / (seen.sum() + ordinary.sum())
    m, r = masking.mask_fraction, masking.random_fraction
    k = 1.0 - m - r
    replacement = np.zeros(tokenizer.vocab_size)
    replacement[tokenizer.replacement_ids] = 1.0
    size = replacement.sum()
    log_q = _log(q)
    z = k * q + r / size * replacement
    shown_itself = k + r / size * replacement  # P(x = t | t)
    # expected −log P(t | shown token) for each true token t, over the three outcomes
    loss = (m * -log_q
            + shown_itself * -(log_q + _log(shown_itself) - _log(z))
            + r / size * ((size - replacement) * -(log_q + _log(np.array(r / size)))
                          + (replacement * _log(z)).sum() - replacement * _log(z)))
    weights = queried / queried.sum()
    return {"unigram_perplexity": float(np.exp(-(weights * log_q).sum())),
            "context_free_perplexity": float(np.exp((weights * loss).sum()))}


def _log(values: np.ndarray) -> np.ndarray:
    """log where positive, 0 elsewhere: every such term has probability 0 in the sums above."""
    return np.log(np.where(values > 0, values, 1.0))


def mlm_extras(run_dir: Path, records: list[dict], dataset: str) -> dict[str, Any]:
    """Held-out perplexity and masked accuracy (first and last record) and the references."""
    held_out = [r for r in records if r["kind"] == "held_out"]
    _, spec = load_encoder(run_dir, "cpu")
    config = load_config(run_dir / "config.yaml")
    train, test = load_split(dataset, "train"), load_split(dataset, "test")
    return {
        "perplexity": held_out[-1]["perplexity"], "first_perplexity": held_out[0]["perplexity"],
        "masked_accuracy": held_out[-1]["masked_accuracy"],
        **context_free_perplexities(make_tokenizer(**spec["tokenizer"]),
                                    train.sequences[:REFERENCE_SEQUENCES],
                                    test.sequences[:REFERENCE_SEQUENCES], spec["max_length"],
                                    build_options(MaskedTokenOptions, config.views, "views")),
    }


def run_task(name: str, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    """Pretrain and evaluate one task; its feature sets' accuracies and the training record."""
    task = TASKS[name]
    run_dir = out_dir / name
    overrides = [f"method.name={task.method}", f"data.dataset={task.dataset}",
                 f"backbone.name={args.backbone}", f"train.epochs={args.epochs}",
                 f"train.steps_per_epoch={args.steps_per_epoch}",
                 f"train.batch_size={args.batch_size}", f"data.max_length={args.max_length}",
                 f"train.device={args.device}", "train.progress=false", f"out={run_dir}",
                 f"eval.label_fractions={json.dumps(args.eval_fractions)}",
                 f"eval.tsne_samples={args.tsne_samples}",
                 # the trainer's online probe at each epoch end: a cheap, bounded look
                 f"train.probe_train_samples={args.probe_samples}",
                 f"train.probe_test_samples={args.probe_samples}",
                 *task.overrides, *args.set]
    started = time.perf_counter()
    pretrain(load_config(None, overrides))
    train_seconds = time.perf_counter() - started
    eval_options = ({"reads_per_gene": args.dna_eval_reads_per_gene}
                    if task.dataset == READS_NAME else None)  # None: the run's own data options
    started = time.perf_counter()
    result = evaluate_run(run_dir, device=args.device, baselines=True, data_options=eval_options,
                          log=lambda message: print(f"  {message}", flush=True))
    eval_seconds = time.perf_counter() - started
    records = read_metrics(run_dir / "metrics.jsonl")
    epochs = [r for r in records if r["kind"] == "epoch"]
    row: dict[str, Any] = {
        "task": name, "method": task.method, "dataset": task.dataset, "target": task.target,
        "eval_options": eval_options, "num_train": result["num_train"],
        "num_test": result["num_test"], "run_dir": str(run_dir),
        "sets": {"ssl": _accuracies(result), **result["baselines"]},
        "rc_consistency": result.get("rc_consistency", {}),
        "effective_rank": result["health"]["effective_rank"], "feature_dim": result["feature_dim"],
        "steps": epochs[-1]["step"], "first_epoch_loss": epochs[0]["loss"],
        "last_epoch_loss": epochs[-1]["loss"],
        "sequences_per_s": statistics.median(r["images_per_s"] for r in epochs),
        "train_seconds": train_seconds, "eval_seconds": eval_seconds,
        "budget": {key: getattr(args, key) for key in BUDGET_KEYS},
    }
    if task.method == "mlm":
        row["mlm"] = mlm_extras(run_dir, records, task.dataset)
    return row


def _options_text(options: dict | None) -> str:
    return f" ({', '.join(f'{k}={v}' for k, v in options.items())})" if options else ""


def _accuracies(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result[k] for k in ("knn_top1", "linear_top1", "linear_top1_std") if k in result}


def print_table(rows: list[dict], fractions: list[float]) -> None:
    """One table: a line per (task, feature set); the encoder's line carries the training time."""
    keys = [str(float(f)) for f in fractions]
    header = (f"{'task':<8} {'features':<16} {'k-NN':>6} "
              + " ".join(f"{'lin@' + k:>9}" for k in keys) + f"  {'extra':<34} {'train s':>8}")
    print("\n" + header + "\n" + "-" * len(header))
    for row in rows:
        for name, acc in row["sets"].items():
            extra = ""
            rc = row["rc_consistency"].get(name)
            if rc:
                extra = f"rc {rc['rc_cosine']:.3f} / random {rc['random_pair_cosine']:.3f}"
            if name == "ssl" and "mlm" in row:
                m = row["mlm"]
                extra = (f"ppl {m['perplexity']:.1f} (context-free "
                         f"{m['context_free_perplexity']:.1f})")
            seconds = f"{row['train_seconds']:>8.0f}" if name == "ssl" else ""
            print(f"{row['task']:<8} {name:<16} {acc['knn_top1']:>6.3f} "
                  + " ".join(f"{acc['linear_top1'].get(k, math.nan):>9.3f}" for k in keys)
                  + f"  {extra:<34} {seconds}")
    for row in rows:
        budget = row.get("budget")
        if budget:
            print(f"{row['task']}: {budget['backbone']}, {row['steps']} steps × batch "
                  f"{budget['batch_size']}, max length {budget['max_length']}, "
                  f"{row['sequences_per_s']:,.0f} sequences/s; test: {row['num_test']:,} of "
                  f"{row['dataset']}{_options_text(row.get('eval_options'))}" + (f"; {' '.join(budget['set'])}" if budget["set"] else ""))


def merged_with(earlier: list[dict], rows: list[dict]) -> list[dict]:
    """``earlier`` rows of the tasks not in ``rows``, then ``rows``: one table gathered from runs in
    separate device sessions (each row keeps its own budget)."""
    fresh = {row["task"] for row in rows}
    return [row for row in earlier if row["task"] not in fresh] + rows


def save(path: Path, args: argparse.Namespace, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"args": vars(args), "date": time.strftime("%Y-%m-%d"),
                                "rows": rows}, indent=2))


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=["protein", "dna", "text"])
    parser.add_argument("--backbone", default="transformer-small",
                        choices=["transformer-tiny", "transformer-small", "esm2-8m"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps-per-epoch", type=int, default=0, help="0: one pass over the data")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-length", type=int, default=512,
                        help="tokens per sequence, specials included (reads need 152)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--eval-fractions", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    parser.add_argument("--dna-eval-reads-per-gene", type=int, default=DEFAULT_READS_PER_GENE,
                        help="evaluate DNA on this many reads per gene (CPU: 2)")
    parser.add_argument("--probe-samples", type=int, default=2000,
                        help="bank and queries of the trainer's online k-NN probe")
    parser.add_argument("--tsne-samples", type=int, default=500)
    parser.add_argument("--set", action="append", default=[],
                        help="extra config override for every run, e.g. optim.lr=3e-3")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU smoke test: a 1-block 32-wide encoder, 2×3 steps, short inputs")
    parser.add_argument("--out-dir", default="runs/bench-sequences")
    parser.add_argument("--json", default="bench/results/sequences.json")
    parser.add_argument("--merge", action="store_true",
                        help="keep --json's rows of other tasks (one table from several sessions)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.backbone, args.epochs, args.steps_per_epoch, args.batch_size = "transformer-tiny", 2, 3, 32
        args.max_length, args.device, args.dna_eval_reads_per_gene = 48, "cpu", 1
        args.eval_fractions, args.probe_samples, args.tsne_samples = [1.0], 256, 100
        args.set = ["backbone.dim=32", "backbone.depth=1", "backbone.ffn_dim=64",
                    "data.vocab_size=1024", "eval.seeds=1", *args.set]
        args.json = "runs/bench-sequences/smoke.json"
    return args


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    out_dir = Path(args.out_dir) / time.strftime("%Y%m%d-%H%M%S")
    path = Path(args.json)
    earlier = json.loads(path.read_text())["rows"] if args.merge and path.is_file() else []
    rows: list[dict] = []
    for i, name in enumerate(args.tasks):
        task = TASKS[name]
        print(f"[{i + 1}/{len(args.tasks)}] {name}: {task.method} on {task.dataset} → {task.target}",
              flush=True)
        rows.append(run_task(name, args, out_dir))
        save(path, args, merged_with(earlier, rows))  # after each task: a cut-short run keeps it
        print(f"  trained {rows[-1]['train_seconds']:.0f} s, evaluated {rows[-1]['eval_seconds']:.0f} s",
              flush=True)
    print_table(merged_with(earlier, rows), args.eval_fractions)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
