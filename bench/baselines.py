"""The baseline rows of every evaluation table, under the evaluation protocol as it is now.

``selfsup evaluate`` puts each encoder beside fixed baselines: raw pixels, amino-acid composition
+ dipeptides, 4-mer and canonical 4-mer profiles, TF-IDF. Those rows need no training, so when the
protocol changes (how the linear probe chooses its decay and scaling, how k-NN chooses k) they can
be re-measured on their own: this script runs ``evaluate_features`` — exactly what
``selfsup evaluate`` runs — on each baseline feature set of ``bench/probe_strength.py`` and prints
k-NN (with the chosen k) and the linear probe at each label fraction.

    python bench/baselines.py --json bench/results/baselines-cpu.json
    python bench/baselines.py --sets 16s-kmer4 16s-canonical4 --rank genus --reads-per-gene 10
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import probe_strength  # noqa: E402  (a sibling script, not a package)

from selfsup.evaluate.protocol import evaluate_features  # noqa: E402

DEFAULT_SETS = ["fmnist-raw", "swissprot-composition", "16s-kmer4", "16s-canonical4",
                "20news-tfidf"]


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=DEFAULT_SETS)
    parser.add_argument("--run", help="image run dir, for the fmnist-encoder/-random-init sets")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--reads-per-gene", type=int, default=2, help="16s-reads reads per gene")
    parser.add_argument("--rank", default="phylum", help="16s-reads taxonomic rank")
    parser.add_argument("--json", default="bench/results/baselines.json")
    parser.add_argument("--smoke", action="store_true", help="digits only: seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.sets, args.json = ["digits-raw"], "runs/bench-baselines/smoke.json"
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    makers = probe_strength.feature_sets(args)
    rows: list[dict[str, Any]] = []
    print(f"{'feature set':<22} {'k-NN':>6} {'k':>4} "
          + " ".join(f"{'lin@' + format(f, 'g'):>12}" for f in args.fractions) + "  seconds")
    for name in args.sets:
        data = makers[name]()
        started = time.perf_counter()
        result = evaluate_features(data.train, data.train_labels, data.test, data.test_labels,
                                   int(torch.cat([data.train_labels, data.test_labels]).max()) + 1,
                                   fractions=args.fractions, seeds=args.seeds,
                                   train_groups=data.groups)
        seconds = time.perf_counter() - started
        cells = [f"{100 * result['linear_top1'][str(float(f))]:>5.1f} ± "
                 f"{100 * result['linear_top1_std'][str(float(f))]:>3.1f}" for f in args.fractions]
        print(f"{name:<22} {100 * result['knn_top1']:>6.1f} {result['knn_k']:>4} "
              + " ".join(f"{cell:>12}" for cell in cells) + f"  {seconds:>7.0f}", flush=True)
        rows.append({"set": name, "seconds": seconds, **result})
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), "date": time.strftime("%Y-%m-%d"),
                                               "rows": rows}, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
