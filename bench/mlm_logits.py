"""MLM training step with the LM head on every position vs on the chosen (~15 %) positions only.

``selfsup.methods.mlm`` scores only the chosen positions when the vocabulary is wider than the
model (``MLMOptions.score_chosen_only``): the (B, L, V) logits of a text vocabulary dominate a
step, while picking the chosen positions costs one host-device wait. This times whole training
steps (forward, backward, AdamW) both ways for a protein vocabulary (30 tokens) and a text BPE
vocabulary (``--text-vocab``, 8,192 by default as ``data.vocab_size``), on random ids with 15 % of
the positions chosen and replaced by ``<mask>``, and prints tokens/s and the speed-up; ``--json``
writes the rows. The steps are ``esm_throughput``'s (bf16 autocast on CUDA, float32 on the CPU).

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

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent)]  # esm_throughput (bench is no package) and selfsup
from esm_throughput import time_steps, training_step  # noqa: E402
from selfsup.backbones import build_backbone  # noqa: E402
from selfsup.methods import build_method  # noqa: E402
from selfsup.tokenize.base import IGNORE_LABEL, LEADING_SPECIALS  # noqa: E402


def mlm(backbone: str, vocab: int, **options) -> torch.nn.Module:
    """The ``mlm`` method on a freshly (seed 0) initialised ``backbone`` for ``vocab`` tokens."""
    torch.manual_seed(0)
    encoder = build_backbone({"name": backbone, "vocab_size": vocab}, 0, 0)
    return build_method({"name": "mlm", **options}, encoder)


def seconds_per_step(method: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                     steps: int, warmup: int) -> float:
    """Seconds per training step of ``method`` on one fixed batch, after ``warmup`` steps."""
    device = inputs.device
    precision = "bf16" if device.type == "cuda" else "fp32"
    step = training_step(method, lambda: method([inputs, labels]).loss, device, precision)
    return time_steps(step, steps, warmup, device)[0]


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
        # Every selfsup vocabulary puts the four leading specials first and <mask> last
        # (selfsup.tokenize.base): ordinary ids lie between them.
        mask_id = vocab - 1
        ids = torch.randint(len(LEADING_SPECIALS), mask_id, (args.batch_size, args.length),
                            generator=generator)
        chosen = torch.rand(ids.shape, generator=generator) < 0.15
        inputs = torch.where(chosen, mask_id, ids).to(device)
        labels = torch.where(chosen, ids, IGNORE_LABEL).to(device)
        seconds = {
            chosen_only: seconds_per_step(
                mlm(args.backbone, vocab, score_chosen_only=chosen_only).to(device),
                inputs, labels, args.steps, args.warmup)
            for chosen_only in (False, True)}
        tokens = args.batch_size * args.length
        row = {"task": task, "vocab": vocab, "backbone": args.backbone,
               "batch_size": args.batch_size, "length": args.length,
               "tokens_per_s_all_positions": tokens / seconds[False],
               "tokens_per_s_chosen_only": tokens / seconds[True],
               "speedup": seconds[False] / seconds[True],
               "default_scores_chosen_only": mlm(args.backbone, vocab).scores_chosen_only}
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
