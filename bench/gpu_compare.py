"""Training throughput on one GPU: our full pipeline vs lightly's standard recipe vs the floor.

For each method, on 32×32 RGB synthetic uint8 images (``--image-size``), batch 512, bf16 autocast
on CUDA, three rows measured in one run (images/s counts source images, each of which makes all of
a method's views):

  * selfsup pipeline — the real Trainer: uint8 data resident on the GPU, views made there,
    forward, loss, backward, LARS step (``gpu_throughput.trainer_rate``, whole epochs after a
    warm-up epoch);
  * lightly recipe — lightly's transform class for the method (``SimCLRTransform``,
    ``BYOLTransform``, ``DINOTransform``, ``MAETransform``) on PIL images in DataLoader worker
    processes (one per CPU core), batches copied to the GPU from pinned memory, and lightly's loss
    (``NTXentLoss``, ``NegativeCosineSimilarity``, ``DINOLoss``; lightly has no MAE loss class,
    so MAE keeps ours, a masked MSE);
  * floor — forward + backward + optimiser step on views made once before timing: no
    augmentation cost at all (built from the Trainer's own parts, so it trains the same model on
    views of the same size as the pipeline row).

Fairness: the lightly rows train *our* model (selfsup's ResNet-18 with the CIFAR stem, or ViT-S/4
for MAE, with our projection heads and EMA targets), with our LARS optimiser, channels_last and the
same autocast, and are torch.compile'd exactly when our rows are. Only the data pipeline and the
loss differ. lightly's transforms are given our recipe's parameters (crop scale, flip, colour
jitter, grayscale, blur and solarisation probabilities, crop sizes, number of local crops), read
off the view maker our pipeline builds, so both sides do the same augmentation work. A fourth row,
"lightly loader alone", times the DataLoader without any model: when the lightly recipe's rate is
close to it, the recipe is bound by its CPU augmentation.

    # on the GPU machine (lightly installed from carried wheels, see docs/gpu_session_plan.md)
    python bench/gpu_compare.py --methods simclr --out bench/results/gpu_compare.json
    python bench/gpu_compare.py --methods byol dino mae --repeats 1 --out bench/results/gpu_compare-more.json
    # CPU smoke run of the script itself (tiny sizes); --no-lightly where lightly is not installed
    python bench/gpu_compare.py --smoke --no-lightly
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent)]  # gpu_throughput (bench is no package) and selfsup
from gpu_throughput import timed, trainer_rate, write_synthetic

# The model each method is measured with (config overrides; --set wins over these).
MODELS = {
    "simclr": ["backbone.name=resnet18"],
    "byol": ["backbone.name=resnet18"],
    "dino": ["backbone.name=resnet18"],
    "mae": ["backbone.name=vit-small", "backbone.patch_size=4"],
}
# --smoke: sizes a 2-core CPU runs in about a minute (ResNet-18 stays as it is)
SMOKE_MODELS = {**MODELS, "mae": ["backbone.name=vit-tiny", "backbone.patch_size=8", "backbone.depth=2"]}
PIPELINE, LIGHTLY, FLOOR, LOADER = ("selfsup pipeline", "lightly recipe", "floor (no views)",
                                    "lightly loader alone")
PREFETCH = 2  # DataLoader batches each worker keeps ready (torch's default)


# ------------------------------------------------------------------------------------ lightly
def import_lightly():
    """lightly, or SystemExit saying how to get it (checked before any device time is spent)."""
    try:
        import lightly
        import lightly.loss
        import lightly.transforms
    except ImportError as error:
        raise SystemExit(
            f"bench/gpu_compare.py: cannot import lightly ({error}).\n"
            "On the GPU machine carry the wheels in .whl (docs/gpu_session_plan.md) and start the "
            "command with\n  python3 -m pip install -q --no-index --no-deps --target /tmp/site "
            ".whl/*.whl && export PYTHONPATH=/tmp/site\n"
            "lightly also needs torchvision and pytorch-lightning (installed there). "
            "To measure our side only, pass --no-lightly.") from error
    return lightly


def _colour(spec) -> dict[str, float]:
    """lightly's colour arguments for one of our ViewSpecs (lightly multiplies the four jitter
    strengths by cj_strength, so that is 1 here)."""
    brightness, contrast, saturation, hue = spec.jitter
    return {"cj_prob": spec.jitter_prob, "cj_strength": 1.0, "cj_bright": brightness,
            "cj_contrast": contrast, "cj_sat": saturation, "cj_hue": hue,
            "random_gray_scale": spec.grayscale_prob, "hf_prob": spec.flip_prob}


def lightly_transform(lightly, method: str, specs: tuple) -> Callable:
    """lightly's transform for ``method``, doing the augmentations our view specs describe."""
    T = lightly.transforms
    first = specs[0]
    side, min_scale = first.size[0], first.crop_scale[0]
    if method == "simclr":
        return T.SimCLRTransform(input_size=side, min_scale=min_scale, gaussian_blur=first.blur_prob,
                                 **_colour(first))
    if method == "byol":
        views = [cls(input_size=side, min_scale=min_scale, gaussian_blur=spec.blur_prob,
                     solarization_prob=spec.solarize_prob, **_colour(spec))
                 for cls, spec in zip((T.BYOLView1Transform, T.BYOLView2Transform), specs)]
        return T.BYOLTransform(view_1_transform=views[0], view_2_transform=views[1])
    if method == "dino":
        global1, global2, local = specs[0], specs[1], specs[-1]
        return T.DINOTransform(global_crop_size=side, global_crop_scale=first.crop_scale,
                               local_crop_size=local.size[0], local_crop_scale=local.crop_scale,
                               n_local_views=len(specs) - 2,
                               gaussian_blur=(global1.blur_prob, global2.blur_prob, local.blur_prob),
                               solarization_prob=global2.solarize_prob, **_colour(first))
    if method == "mae":  # crop and flip only (lightly's flip probability is fixed at 0.5, as ours)
        return T.MAETransform(input_size=side, min_scale=min_scale)
    raise ValueError(f"no lightly recipe for {method!r}")


class LightlyStep(nn.Module):
    """One training step's loss: our method's networks, lightly's loss function."""

    def __init__(self, method: nn.Module, name: str, lightly) -> None:
        super().__init__()
        self.method, self.name = method, name
        o = getattr(method, "options", None)
        losses = lightly.loss
        if name == "simclr":
            self.criterion = losses.NTXentLoss(temperature=o.temperature)
        elif name == "byol":
            self.criterion = losses.NegativeCosineSimilarity()
        elif name == "dino":
            self.criterion = losses.DINOLoss(output_dim=o.num_prototypes,
                                             warmup_teacher_temp=o.warmup_teacher_temp,
                                             teacher_temp=o.teacher_temp, student_temp=o.student_temp,
                                             center_momentum=o.center_momentum)
        elif name != "mae":
            raise ValueError(f"no lightly loss for {name!r}")

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        m = self.method
        if self.name == "simclr":
            z = m.projector(m.encoder(torch.cat(views)))
            return self.criterion(*z.chunk(2))
        if self.name == "byol":
            x = torch.cat(views)
            p1, p2 = m.predictor(m.projector(m.encoder(x))).chunk(2)
            with torch.no_grad():
                t1, t2 = m.target(x).chunk(2)
            return 0.5 * (self.criterion(p1, t2) + self.criterion(p2, t1))
        if self.name == "dino":
            from selfsup.methods.dino import same_size_runs

            runs = same_size_runs(views)  # the globals as one batch, the locals as another
            student = [logits for run in runs
                       for logits in m.head(m.encoder(torch.cat(run))).chunk(len(run))]
            with torch.no_grad():
                teacher = list(m.teacher(torch.cat(views[:2])).chunk(2))
            return self.criterion(teacher, student)
        return m(views).loss  # MAE: lightly has no MAE loss class


class PILImages(torch.utils.data.Dataset):
    """uint8 (N, H, W, 3) images handed to a transform as PIL images, as torchvision's CIFAR10
    does; ``length`` may exceed N (images repeat) so one epoch covers warm-up and timing."""

    def __init__(self, images: np.ndarray, transform: Callable, length: int) -> None:
        self.images, self.transform, self.length = images, transform, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.transform(Image.fromarray(self.images[index % len(self.images)])), 0


def lightly_batches(images: np.ndarray, transform: Callable, batch: int, batches: int,
                    workers: int, device: torch.device, memory_format: torch.memory_format):
    """Batches of views from a DataLoader over PIL images, copied to ``device``."""
    loader = torch.utils.data.DataLoader(
        PILImages(images, transform, batch * batches), batch_size=batch, shuffle=True,
        num_workers=workers, drop_last=True, pin_memory=device.type == "cuda",
        prefetch_factor=PREFETCH if workers else None)
    for views, _ in loader:
        yield [v.to(device, non_blocking=True).contiguous(memory_format=memory_format) for v in views]


# ------------------------------------------------------------------------------------ timing
def built_parts(overrides: list[str], batch: int, device: str, compile: bool, out: Path):
    """The parts a Trainer runs (model, views, optimiser, (compiled) step function), built, not
    run: ``selfsup.train.parts.build_parts``."""
    from selfsup.run_config import load_config
    from selfsup.train.parts import build_parts

    config = load_config(None, overrides + [
        f"train.batch_size={batch}", f"train.device={device}", f"train.compile={str(compile).lower()}",
        "train.progress=false", "optim.warmup_epochs=0", f"out={out}"])
    return build_parts(config)  # the same parts fit() trains with; nothing is written


def views_of(trainer) -> list[torch.Tensor]:
    """One batch of views, made by the trainer's own view maker from its first batch."""
    generator = torch.Generator(device=trainer.device).manual_seed(0)
    images, _ = next(iter(trainer.stream.epoch(0)))
    return [v.contiguous(memory_format=trainer.memory_format) for v in trainer.views(images, generator)]


def trainer_floor_rate(trainer, warmup: int, steps: int) -> dict[str, float]:
    """Forward + backward + step (+ the method's after_step, e.g. an EMA update) on fixed views."""
    from selfsup.train.step import train_step

    views = views_of(trainer)
    batch = trainer.config.train.batch_size

    def step(i: int) -> None:
        train_step(trainer.step_fn, [views], trainer.optimizer, trainer.device, trainer.precision)
        trainer.method.after_step(i, warmup + steps)

    return timed(step, warmup, steps, batch, trainer.device)


def lightly_rate(trainer, lightly, name: str, images: np.ndarray, warmup: int, steps: int,
                 workers: int, compile: bool, with_model: bool = True) -> dict[str, float]:
    """lightly's recipe training our model (or, without the model, its loader alone)."""
    device, batch = trainer.device, trainer.config.train.batch_size
    transform = lightly_transform(lightly, name, trainer.views.specs)
    # Every worker keeps PREFETCH batches ready: time only after those have been used up, or the
    # rate would include batches made while the first step compiled.
    warmup = max(warmup, 2 * workers * PREFETCH)
    batches = lightly_batches(images, transform, batch, warmup + steps, workers, device,
                              trainer.memory_format)
    try:
        if not with_model:
            return timed(lambda i: next(batches), warmup, steps, batch, device)
        return _lightly_training_rate(trainer, lightly, name, batches, warmup, steps, compile)
    finally:
        batches.close()  # shuts the loader's worker processes down now, not at garbage collection


def _lightly_training_rate(trainer, lightly, name: str, batches, warmup: int, steps: int,
                           compile: bool) -> dict[str, float]:
    from selfsup.train.device import autocast

    device, batch = trainer.device, trainer.config.train.batch_size
    loss_fn = LightlyStep(trainer.method, name, lightly).to(device)
    step_fn = torch.compile(loss_fn) if compile and device.type == "cuda" else loss_fn
    optimizer = trainer.optimizer

    def step(i: int) -> None:
        views = next(batches)
        with autocast(device, trainer.precision):
            loss = step_fn(views)
        loss.float().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        trainer.method.after_step(i, warmup + steps)

    return timed(step, warmup, steps, batch, device)


# ------------------------------------------------------------------------------------ report
def summary(rows: list[dict]) -> list[str]:
    """Per method and mode: ours against lightly and against the floor (means over repeats)."""
    def mean(method: str, what: str, mode: str) -> float | None:
        rates = [r["images_per_s"] for r in rows
                 if r["method"] == method and r["what"] == what and r["mode"] == mode]
        return sum(rates) / len(rates) if rates else None

    lines = []
    for method in dict.fromkeys(r["method"] for r in rows):
        for mode in dict.fromkeys(r["mode"] for r in rows if r["what"] == PIPELINE and r["method"] == method):
            ours = mean(method, PIPELINE, mode)
            parts = [f"{method} {mode}: ours {ours:,.0f} images/s"]
            lightly = mean(method, LIGHTLY, mode)
            if lightly:
                parts.append(f"{ours / lightly:.2f}× lightly ({lightly:,.0f})")
            for floor_mode in ("compiled", mode):
                floor = mean(method, FLOOR, floor_mode)
                if floor:
                    parts.append(f"{100 * ours / floor:.0f}% of the {floor_mode} floor ({floor:,.0f})")
                    break
            lines.append(", ".join(parts))
    return lines


def write(path: Path, header: dict, rows: list[dict]) -> None:
    """The JSON result so far (written after every row: a run cut short keeps what it measured)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**header, "rows": rows, "summary": summary(rows)}, indent=2))


def compare_method(method: str, overrides: list[str], args, lightly, images: np.ndarray, workdir: Path,
                   record: Callable[..., None]) -> None:
    """Every row of one method: lightly's loader alone, then per mode and repeat the floor, our
    pipeline and lightly's recipe (in reversed order on odd repeats)."""
    device = torch.device(args.device)

    def trainer(compiled: bool, tag: str):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        return built_parts(overrides, args.batch, args.device, compiled, workdir / tag)

    if lightly is not None:  # what lightly's loader alone delivers, once per method
        record(method, LOADER, "-", 0,
               lightly_rate(trainer(False, f"{method}-loader"), lightly, method, images,
                            args.warmup, args.steps, args.workers, False, with_model=False))
    for mode in args.modes:
        compiled = mode == "compiled"
        for repeat in range(args.repeats):
            order = [FLOOR, PIPELINE, LIGHTLY]
            for what in (order if repeat % 2 == 0 else order[::-1]):
                tag = f"{method}-{mode}-{repeat}-{what.split()[0]}"
                if what == PIPELINE:
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                    result = trainer_rate(overrides, args.batch, args.steps, workdir / tag,
                                          args.device, compiled)
                elif what == FLOOR:
                    result = trainer_floor_rate(trainer(compiled, tag), args.warmup, args.steps)
                elif lightly is not None:
                    result = lightly_rate(trainer(False, tag), lightly, method, images, args.warmup,
                                          args.steps, args.workers, compiled)
                else:
                    continue
                record(method, what, mode, repeat, result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["simclr"], choices=sorted(MODELS))
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=60, help="timed steps (per epoch for the pipeline)")
    parser.add_argument("--warmup", type=int, default=15,
                        help="untimed steps first (lightly: at least 2 × workers × prefetch)")
    parser.add_argument("--modes", nargs="+", default=["compiled"], choices=["eager", "compiled"])
    parser.add_argument("--repeats", type=int, default=2, help="each row this often, in alternating order")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="lightly's DataLoader workers")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-lightly", action="store_true", help="our pipeline and the floor only")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every row (the model of all rows)")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU smoke run: batch 8, 3 steps, 1 repeat, eager, 2 workers, tiny ViT")
    parser.add_argument("--out", help="JSON path (default bench/results/gpu_compare.json; "
                                      "with --smoke, in the temporary folder)")
    args = parser.parse_args()
    models = MODELS
    if args.smoke:
        args.batch, args.steps, args.warmup, args.repeats = 8, 3, 3, 1
        args.modes, args.workers, args.device = ["eager"], 2, "cpu"
        models = SMOKE_MODELS
    default_out = Path(tempfile.gettempdir()) / "gpu_compare-smoke.json" if args.smoke else \
        Path("bench/results/gpu_compare.json")
    args.out = str(args.out or default_out)
    lightly = None if args.no_lightly else import_lightly()
    device = torch.device(args.device)
    workdir = Path(tempfile.mkdtemp(prefix="selfsup-compare-"))
    side = args.image_size
    images = write_synthetic(workdir / "synthetic.npy", args.batch, args.steps, side)
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    header = {"device": name, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
              "cpus": os.cpu_count(), "args": vars(args),
              "lightly": getattr(lightly, "__version__", None)}
    rows: list[dict] = []
    out = Path(args.out)

    def record(method: str, what: str, mode: str, repeat: int, result: dict) -> None:
        rows.append({"method": method, "what": what, "mode": mode, "repeat": repeat, **result})
        print(f"{method:<7} {what:<21} {mode:<9} {repeat:>3} {result['images_per_s']:>10,.0f} "
              f"{result['peak_gib']:>9.2f}", flush=True)
        write(out, header, rows)
        torch._dynamo.reset()
        gc.collect()  # the row's trainer and model, so the next row's peak memory starts clean
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print(f"{'method':<7} {'what':<21} {'mode':<9} {'run':>3} {'images/s':>10} {'peak GiB':>9}")
    for method in args.methods:
        overrides = [f"data.dataset={workdir / 'synthetic.npy'}", f"method.name={method}",
                     *models[method], *args.set]
        compare_method(method, overrides, args, lightly, images, workdir, record)
    precision = "bf16 autocast" if device.type == "cuda" else "fp32"
    print(f"\n{side}×{side} RGB, batch {args.batch}, {precision}, {name}, torch {torch.__version__}, "
          f"lightly {header['lightly']}, {args.workers} loader workers")
    for line in summary(rows):
        print(line)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
