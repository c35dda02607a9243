"""MLM training step with the LM head on every position vs on the chosen (~15 %) positions only.

``selfsup.methods.mlm`` scores only the chosen positions when the vocabulary is wider than the
model (``MLMOptions.score_chosen_only``): the (B, L, V) logits of a text vocabulary dominate a
step, while picking the chosen positions costs one host-device wait. This times whole training
steps (forward, backward, AdamW) both ways for a protein vocabulary (30 tokens) and a text BPE
vocabulary (``--text-vocab``, 8,192 by default as ``data.vocab_size``), on random ids masked by
BERT's rule, and prints tokens/s and the speed-up; ``--json`` writes the rows.

    OMP_NUM_THREADS=1 python bench/mlm_logits.py --device cpu --json bench/results/mlm-logits-cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from selfsup.backbones import build_backbone  # noqa: E402
from selfsup.methods import build_method  # noqa: E402
from selfsup.tokenize.base import IGNORE_LABEL  # noqa: E402


def time_steps(method: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor, steps: int,
               warmup: int) -> float:
    """Seconds per training step, after ``warmup`` untimed steps."""
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-4)
    device = inputs.device

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        method([inputs, labels]).loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - started) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="transformer-tiny")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--text-vocab", type=int, default=8192)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json")
    args = p.parse_args()
    device = torch.device(args.device)
    rows = []
    for task, vocab in (("protein", 30), ("text", args.text_vocab)):
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(5, vocab, (args.batch_size, args.length), generator=generator)
        chosen = torch.rand(ids.shape, generator=generator) < 0.15
        inputs = torch.where(chosen, 4, ids).to(device)  # chosen positions → <mask> (id 4)
        labels = torch.where(chosen, ids, IGNORE_LABEL).to(device)
        seconds = {}
        for chosen_only in (False, True):
            torch.manual_seed(0)
            encoder = build_backbone({"name": args.backbone, "vocab_size": vocab}, 0, 0)
            method = build_method({"name": "mlm", "score_chosen_only": chosen_only},
                                  encoder).to(device)
            seconds[chosen_only] = time_steps(method, inputs, labels, args.steps, args.warmup)
        tokens = args.batch_size * args.length
        row = {"task": task, "vocab": vocab, "backbone": args.backbone,
               "batch_size": args.batch_size, "length": args.length,
               "tokens_per_s_all_positions": tokens / seconds[False],
               "tokens_per_s_chosen_only": tokens / seconds[True],
               "speedup": seconds[False] / seconds[True],
               "default_scores_chosen_only": vocab > encoder.out_dim}
        rows.append(row)
        default = "chosen only" if row["default_scores_chosen_only"] else "all positions"
        print(f"{task:8s} vocab {vocab:6d}: all positions {row['tokens_per_s_all_positions']:9.0f} "
              f"tok/s, chosen only {row['tokens_per_s_chosen_only']:9.0f} tok/s, "
              f"×{row['speedup']:.2f} (default: {default})", flush=True)
    if args.json:
        meta = {"device": str(device), "torch": torch.__version__, "machine": platform.node(),
                "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
