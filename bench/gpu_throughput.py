"""SimCLR training throughput: the full selfsup pipeline vs the model's bare forward+backward.

ResNet-18 (CIFAR stem), 32×32 RGB synthetic uint8 images, batch 512, bf16 autocast on CUDA.
  * pipeline: the real Trainer — uint8 data on the GPU, two views made there, forward, NT-Xent,
    backward, LARS step — timed over whole epochs after a warm-up epoch (health checks excluded);
  * floor: forward + backward + optimiser step of the same model on two pre-made float views,
    no augmentation at all: what the pipeline could reach if views were free.
Both eager and torch.compile'd. "images/s" counts source images (each makes 2 views).

    python bench/gpu_throughput.py --out bench/results/gpu_throughput.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch


def synthetic_count(batch: int, steps: int) -> int:
    """Images in the synthetic array file so that its train split (the loader holds out a test
    fraction of an array file) still gives ``steps`` full batches per epoch."""
    from selfsup.data.arrays import TEST_FRACTION

    return math.ceil(batch * steps / (1 - TEST_FRACTION)) + batch


def write_synthetic(path: Path, batch: int, steps: int, side: int) -> np.ndarray:
    """Random uint8 (N, side, side, 3) images saved at ``path`` (an array file for
    ``data.dataset``) that make epochs of ``steps`` batches; returns the images."""
    shape = (synthetic_count(batch, steps), side, side, 3)
    images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    np.save(path, images)
    return images


def timed(step: Callable[[int], Any], warmup: int, steps: int, batch: int,
          device: torch.device) -> dict[str, float]:
    """Images/s and peak GPU memory of ``steps`` calls of ``step`` after ``warmup`` calls."""
    for i in range(warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    return {"images_per_s": steps * batch / seconds, "peak_gib": peak}


def trainer_rate(overrides: list[str], batch: int, steps: int, out: Path, device: str,
                 compile: bool) -> dict:
    """Images/s of the real Trainer over whole epochs after a warm-up epoch (health excluded)."""
    from selfsup.run_config import load_config
    from selfsup.train import Trainer
    from selfsup.train.metrics_log import read_metrics

    config = load_config(None, overrides + [
        f"train.batch_size={batch}", "train.epochs=3", f"train.steps_per_epoch={steps}",
        f"train.compile={str(compile).lower()}", "train.progress=false", f"train.device={device}",
        "train.health_every=100", "train.probe_every=100", "train.health_samples=512",
        f"out={out}", "optim.warmup_epochs=0"])
    Trainer(config).fit()
    records = read_metrics(out / "metrics.jsonl")
    epochs = [r for r in records if r["kind"] == "epoch"]
    # The steps the trainer took, not the ones asked for: an array file's train split holds out a
    # test fraction, so a file smaller than write_synthetic's makes shorter epochs.
    taken = next(r for r in records if r.get("event") == "start")["steps_per_epoch"]
    measured = epochs[1:]  # epoch 0 pays for compilation and cudnn autotuning
    images = taken * batch * len(measured)
    seconds = sum(r["epoch_seconds"] for r in measured)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    return {"images_per_s": images / seconds, "peak_gib": peak}


def pipeline_rate(compile: bool, batch: int, steps: int, workdir: Path, device: str) -> dict:
    out = workdir / f"pipeline-{'compiled' if compile else 'eager'}"
    overrides = [f"data.dataset={workdir.parent / 'synthetic.npy'}", "backbone.name=resnet18",
                 "optim.name=lars"]
    return trainer_rate(overrides, batch, steps, out, device, compile)


def floor_rate(compile: bool, batch: int, steps: int, device: str) -> dict:
    from selfsup.backbones import build_backbone
    from selfsup.config import OptimConfig
    from selfsup.methods.simclr import SimCLR
    from selfsup.train.optim import build_optimizer

    dev = torch.device(device)
    torch.manual_seed(0)
    method = SimCLR(build_backbone({"name": "resnet18"}, 3, 32)).to(dev)
    fmt = torch.channels_last if dev.type == "cuda" else torch.contiguous_format
    method = method.to(memory_format=fmt)
    opt = build_optimizer(method, OptimConfig(name="lars"), batch,
                          fixed_modules=method.fixed_lr_modules())
    fn = torch.compile(method) if compile else method
    views = [torch.randn(batch, 3, 32, 32, device=dev).contiguous(memory_format=fmt) for _ in range(2)]

    def step(_: int) -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss = fn(views).loss
        loss.float().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return timed(step, 15, steps, batch, dev)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=100, help="timed steps per epoch / floor run")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="bench/results/gpu_throughput.json")
    args = parser.parse_args()
    if args.device == "cuda":
        # The trainer sets these for itself; set them here too so the floor runs under the same
        # settings (a first run of this script measured the floor before they were on).
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    workdir = Path(tempfile.mkdtemp(prefix="selfsup-bench-"))
    for repeat in range(args.repeats):
        (workdir / f"r{repeat}").mkdir()
    write_synthetic(workdir / "synthetic.npy", args.batch, args.steps, 32)
    rows = []
    # Each measurement twice, in alternating order, so clock ramp-up or a noisy neighbour shows
    # as a spread between repeats instead of as a difference between floor and pipeline.
    for compiled in ([False] if args.no_compile else [False, True]):
        mode = "compiled" if compiled else "eager"
        for repeat in range(args.repeats):
            order = ["floor", "pipeline"] if repeat % 2 == 0 else ["pipeline", "floor"]
            for what in order:
                if args.device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                if what == "floor":
                    result = floor_rate(compiled, args.batch, args.steps, args.device)
                    label = "floor (fwd+bwd+step, no views)"
                else:
                    result = pipeline_rate(compiled, args.batch, args.steps,
                                           workdir / f"r{repeat}", args.device)
                    label = "selfsup pipeline (views on GPU)"
                rows.append({"what": label, "mode": mode, "repeat": repeat, **result})
                torch._dynamo.reset()
    name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor()
    print(f"\nSimCLR ResNet-18 (CIFAR stem), 32×32 RGB, batch {args.batch}, "
          f"{'bf16' if args.device == 'cuda' else 'fp32'}, {name}, torch {torch.__version__}")
    print(f"{'what':<34} {'mode':<9} {'run':>3} {'images/s':>10} {'peak GiB':>9}")
    for r in rows:
        print(f"{r['what']:<34} {r['mode']:<9} {r['repeat']:>3} {r['images_per_s']:>10,.0f} "
              f"{r['peak_gib']:>9.2f}")
    result = {"device": name, "torch": torch.__version__, "batch": args.batch, "steps": args.steps,
              "date": time.strftime("%Y-%m-%d"), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
