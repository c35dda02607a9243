"""Where one training step of our pipeline spends its time: torch.profiler over the real parts.

The step is the Trainer's own (built by it, not re-implemented): a uint8 batch on the device,
the method's views made there, forward + loss under autocast, backward, LARS step, after_step.
Printed: wall-clock milliseconds of the views and of the rest of the step (each timed alone,
synchronised), then the profiler's top ops by self device time (self CPU time on a CPU) over
``--steps`` profiled steps, the device time inside the "views" and "train_step" ranges, and the
number of device kernels per step. A Chrome trace (open in https://ui.perfetto.dev or
chrome://tracing) is written to ``--trace`` (gzipped when the name ends in .gz).

    # GPU: SimCLR, ResNet-18 CIFAR stem, 32×32, batch 512, bf16, compiled as the trainer runs it
    python bench/profile_step.py --compile --trace bench/results/simclr_step_trace.json.gz
    # CPU smoke run (tiny sizes)
    python bench/profile_step.py --smoke --trace /tmp/simclr_step_trace.json
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench folder is not a package
from gpu_compare import built_parts
from gpu_throughput import write_synthetic


def make_step(trainer):
    """step(phase) runs one training step; phase "views" or "update" runs only that part (on views
    made once), "all" the whole step as the Trainer's loop does."""
    from selfsup.train.step import train_step

    generator = torch.Generator(device=trainer.device).manual_seed(0)
    batches = itertools.cycle([images for images, _ in trainer.stream.epoch(0)])
    fmt = trainer.memory_format
    fixed_views = None
    count = itertools.count()

    def views() -> list[torch.Tensor]:
        return [v.contiguous(memory_format=fmt) for v in trainer.views(next(batches), generator)]

    def update(made: list[torch.Tensor]) -> None:
        train_step(trainer.step_fn, [made], trainer.optimizer, trainer.device, trainer.precision)
        trainer.method.after_step(next(count), 10**6)

    def step(phase: str = "all") -> None:
        nonlocal fixed_views
        if phase == "views":
            views()
            return
        if phase == "update":
            if fixed_views is None:
                fixed_views = views()
            update(fixed_views)
            return
        with record_function("views"):
            made = views()
        with record_function("train_step"):
            update(made)

    return step


PARTS = ("views", "forward", "backward", "optimizer")


def part_milliseconds(trainer, repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median wall-clock milliseconds per step of each part of the Trainer's step on its real
    data: the views, forward + loss (under the run's autocast), backward, and the optimiser step
    with the method's ``after_step`` (e.g. an EMA update). Synchronised between parts on a GPU.
    Without gradient accumulation, clipping or a loss scaler: the parts of a plain step.
    Changes the trainer's weights (it trains): build a fresh one for the run itself."""
    from selfsup.train.device import autocast

    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    generator = torch.Generator(device=trainer.device).manual_seed(0)
    batches = itertools.cycle([images for images, _ in itertools.islice(
        trainer.stream.epoch(0), warmup + repeats)])
    samples: dict[str, list[float]] = {part: [] for part in PARTS}
    for i in range(warmup + repeats):
        images = next(batches)
        marks = [time.perf_counter()]
        views = [v.contiguous(memory_format=trainer.memory_format)
                 for v in trainer.views(images, generator)]
        sync()
        marks.append(time.perf_counter())
        with autocast(trainer.device, trainer.precision):
            loss = trainer.step_fn(views).loss.float()
        sync()
        marks.append(time.perf_counter())
        loss.backward()
        sync()
        marks.append(time.perf_counter())
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.method.after_step(i, 10**6)
        sync()
        marks.append(time.perf_counter())
        if i >= warmup:
            for part, start, end in zip(PARTS, marks, marks[1:]):
                samples[part].append(1000 * (end - start))
    return {part: statistics.median(values) for part, values in samples.items()}


def milliseconds(step, phase: str, repeats: int, device: torch.device) -> float:
    """Mean wall-clock milliseconds of ``step(phase)`` over ``repeats`` synchronised calls."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        step(phase)
    sync()
    return 1000 * (time.perf_counter() - start) / repeats


def write_trace(prof, path: Path) -> None:
    """The Chrome trace at ``path``, gzipped when the name ends in .gz (any torch version)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix != ".gz":
        prof.export_chrome_trace(str(path))
        return
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(plain))
        with open(plain, "rb") as source, gzip.open(path, "wb") as target:
            shutil.copyfileobj(source, target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="simclr")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=15, help="steps before timing (compilation, cuDNN autotuning)")
    parser.add_argument("--time-steps", type=int, default=30, help="steps per wall-clock phase timing")
    parser.add_argument("--steps", type=int, default=2, help="profiled steps")
    parser.add_argument("--rows", type=int, default=15, help="ops in the table")
    parser.add_argument("--compile", action="store_true", help="torch.compile the step, as train.compile=true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override")
    parser.add_argument("--trace", help="Chrome trace file (default bench/results/step_trace.json.gz; "
                                        "with --smoke, in the temporary folder)")
    parser.add_argument("--smoke", action="store_true", help="CPU smoke run: batch 8, 1 warm-up, 2 timed steps")
    args = parser.parse_args()
    if args.smoke:
        args.batch, args.warmup, args.time_steps, args.steps, args.device = 8, 1, 2, 1, "cpu"
    default_trace = Path(tempfile.gettempdir()) / "step_trace.json.gz" if args.smoke else \
        Path("bench/results/step_trace.json.gz")
    args.trace = str(args.trace or default_trace)
    device = torch.device(args.device)
    workdir = Path(tempfile.mkdtemp(prefix="selfsup-profile-"))
    side = args.image_size
    write_synthetic(workdir / "synthetic.npy", args.batch, 2, side)  # two batches to cycle through
    overrides = [f"data.dataset={workdir / 'synthetic.npy'}", f"method.name={args.method}",
                 f"backbone.name={args.backbone}", *args.set]
    trainer = built_parts(overrides, args.batch, args.device, args.compile, workdir / "run")
    step = make_step(trainer)
    for _ in range(args.warmup):
        step()
    step("update")  # compiles / autotunes for the fixed views too, before they are timed
    times = {phase: milliseconds(step, phase, args.time_steps, device) for phase in ("views", "update", "all")}

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    write_trace(prof, Path(args.trace))

    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"{args.method}, {args.backbone}, {side}×{side}, batch {args.batch}, {trainer.precision}, "
          f"{'compiled' if args.compile else 'eager'}, {name}, torch {torch.__version__}")
    print(f"wall clock per step: views {times['views']:.2f} ms, forward+loss+backward+step "
          f"{times['update']:.2f} ms, whole step {times['all']:.2f} ms "
          f"({args.batch / times['all'] * 1000:,.0f} images/s)")
    events = prof.key_averages()
    on_device = device.type == "cuda"
    sort_key = "self_device_time_total" if on_device else "self_cpu_time_total"
    print(f"\ntop {args.rows} ops by {sort_key} over {args.steps} profiled step(s):")
    print(events.table(sort_by=sort_key, row_limit=args.rows))
    for event in events:
        if event.key in ("views", "train_step"):
            device_part = f", device {event.device_time_total / 1000 / args.steps:8.2f} ms" if on_device else ""
            print(f"range {event.key:<10}: CPU {event.cpu_time_total / 1000 / args.steps:8.2f} ms{device_part} per step")
    if on_device:
        kernels = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
        print(f"device ops (kernels, copies) per step: {kernels / args.steps:.0f}")
    print(f"wrote {args.trace}")


if __name__ == "__main__":
    main()
