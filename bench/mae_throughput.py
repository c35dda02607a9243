"""MAE pretraining throughput with 75 % masking vs none: does the encoder really skip masked patches?

The real Trainer (views made on the device, bf16 autocast on CUDA) trains MAE with a ViT on
synthetic uint8 images; the only change between rows is ``method.mask_ratio``. With 75 % masking
the encoder runs on a quarter of the patch tokens, so attention and MLP work fall by ≥ 4× and only
the light decoder sees every patch; a pipeline that merely zeroed masked patches would show no gain.

    # issue 4's GPU number: ViT-S, patch 4, 32×32 RGB, batch 512
    python bench/mae_throughput.py --out bench/results/mae_throughput.json
    # CPU smoke run of the script itself
    python bench/mae_throughput.py --backbone vit-tiny --batch 32 --steps 3 --depth 2 --no-compile
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_throughput import trainer_rate, write_synthetic  # noqa: E402  (the bench folder is not a package)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="vit-small")
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--patch-size", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per epoch")
    parser.add_argument("--mask-ratios", type=float, nargs="+", default=[0.0, 0.75])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--out", default="bench/results/mae_throughput.json")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="selfsup-mae-bench-"))
    side = args.image_size
    write_synthetic(workdir / "synthetic.npy", args.batch, args.steps, side)
    rows = []
    for compiled in ([False] if args.no_compile else [False, True]):
        for ratio in args.mask_ratios:
            if args.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            overrides = [f"data.dataset={workdir / 'synthetic.npy'}", "method.name=mae",
                         f"method.mask_ratio={ratio}", f"backbone.name={args.backbone}",
                         f"backbone.depth={args.depth}", f"backbone.patch_size={args.patch_size}",
                         f"backbone.img_size={side}"]
            out = workdir / f"mask{ratio}-{'compiled' if compiled else 'eager'}"
            result = trainer_rate(overrides, args.batch, args.steps, out, args.device, compiled)
            rows.append({"mask_ratio": ratio, "mode": "compiled" if compiled else "eager", **result})
            torch._dynamo.reset()
    name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor()
    print(f"\nMAE, {args.backbone} depth {args.depth}, patch {args.patch_size}, {side}×{side} RGB, "
          f"batch {args.batch}, {'bf16' if args.device == 'cuda' else 'fp32'}, {name}, torch {torch.__version__}")
    print(f"{'mask ratio':>10} {'mode':<9} {'images/s':>10} {'peak GiB':>9} {'vs 0 %':>7}")
    for r in rows:
        base = next((b for b in rows if b["mode"] == r["mode"] and b["mask_ratio"] == 0.0), None)
        speedup = f"{r['images_per_s'] / base['images_per_s']:.2f}×" if base else "—"
        print(f"{r['mask_ratio']:>10.2f} {r['mode']:<9} {r['images_per_s']:>10,.0f} "
              f"{r['peak_gib']:>9.2f} {speedup:>7}")
    result = {"device": name, "torch": torch.__version__, "args": vars(args),
              "date": time.strftime("%Y-%m-%d"), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
