"""Golden runs: fixed-seed CPU runs whose outputs a refactor must keep (issue 18).

Each case is a list of ``selfsup`` command lines run in order in one folder (``{run}`` is the
run directory): pretraining, then ``evaluate`` or ``finetune``. What a case leaves is reduced to a
fingerprint: the SHA-256 of ``encoder.safetensors`` (the weights, bit for bit) and every number
of ``eval.json`` / ``finetune.json`` (timings left out). ``tests/test_golden_runs.py`` reruns the
cases and compares fingerprints with ``tests/golden/golden.json``.

Bit-identical weights are a promise of one machine: float reductions differ between CPU
instruction sets, thread counts and PyTorch versions. So the file holds one recording per
machine it was made on (its environment beside its cases), and the test compares with the
recording of the machine it runs on (skipping, with the reason, where there is none). Record
again, after checking that a difference is a fix, on every machine with a recording:

    OMP_NUM_THREADS=1 python tests/golden_runs.py --record

which replaces this machine's recording and keeps the others. A new machine records from the
commit before a change, then checks the change against that.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

GOLDEN_FILE = Path(__file__).parent / "golden" / "golden.json"

def _sets(*items: str) -> list[str]:
    """``--set`` flags for config items."""
    return [flag for item in items for flag in ("--set", item)]


# Spelt out here, not taken from conftest's TINY lists: a golden case must not change when another
# test's settings do.
_IMAGE = _sets("train.progress=false", "train.device=cpu", "train.health_samples=512",
               "train.probe_every=1", "train.probe_train_samples=256",
               "train.probe_test_samples=256", "eval.seeds=2", "eval.tsne_samples=100",
               "eval.batch_size=512")
_SEQUENCE = _sets("data.max_length=48", "train.batch_size=32", "train.epochs=2",
                  "train.steps_per_epoch=3", "train.health_samples=512", "train.probe_every=1",
                  "train.probe_train_samples=256", "train.probe_test_samples=256",
                  "train.progress=false", "train.device=cpu", "optim.warmup_epochs=0.5",
                  "eval.seeds=1", "eval.label_fractions=[1.0]", "eval.tsne_samples=100",
                  "eval.batch_size=256", "eval.knn_k=20")
_TINY_TRANSFORMER = ["--backbone", "transformer-tiny",
                     *_sets("backbone.dim=32", "backbone.depth=1", "backbone.ffn_dim=64")]

CASES: dict[str, list[list[str]]] = {
    "simclr-digits": [
        ["pretrain", "--method", "simclr", "--dataset", "digits", "--backbone", "small-cnn",
         "--epochs", "2", "--batch-size", "64",
         *_sets("backbone.widths=[8, 16]", "train.steps_per_epoch=3", "optim.name=lars",
                "optim.lr=0.3", "optim.warmup_epochs=0.5"), *_IMAGE, "--out", "{run}"],
        ["evaluate", "{run}", "--device", "cpu"],
        ["finetune", "{run}", "--labels-fraction", "0.1", "--seeds", "1", "--epochs", "1",
         "--device", "cpu"],
    ],
    "mae-digits": [
        ["pretrain", "--method", "mae", "--dataset", "digits", "--backbone", "vit-tiny",
         "--epochs", "2", "--batch-size", "64",
         *_sets("backbone.depth=1", "backbone.embed_dim=32", "backbone.num_heads=2",
                "backbone.patch_size=2", "train.steps_per_epoch=3"), *_IMAGE, "--out", "{run}"],
        ["evaluate", "{run}", "--device", "cpu"],
    ],
    "mlm-swissprot": [
        ["pretrain", "--method", "mlm", "--dataset", "swissprot-loc", *_TINY_TRANSFORMER,
         *_SEQUENCE, "--out", "{run}"],
        ["evaluate", "{run}", "--device", "cpu"],
    ],
    "dna-contrastive-16s": [
        ["pretrain", "--method", "dna-contrastive", "--dataset", "16s-reads", *_TINY_TRANSFORMER,
         *_SEQUENCE, *_sets("data.max_length=160", "method.rc_invariant=true"), "--out", "{run}"],
        ["evaluate", "{run}", "--device", "cpu"],
    ],
}
SLOW_CASES = ("dna-contrastive-16s",)  # its evaluation encodes 16s-reads' 50k reads: minutes
_TIMINGS = ("seconds", "time", "wall", "images_per_s", "elapsed")


def environment() -> dict[str, str]:
    """Where bit-identical results can be expected: the same of all these (the CPU model too:
    oneDNN picks its kernels by what the processor has)."""
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_model": _cpu_model(), "machine": platform.machine(),
            "threads": str(torch.get_num_threads())}


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor())


def _numbers(value: Any, path: str = "") -> dict[str, Any]:
    """Every number (and string) of a JSON tree by its dotted path, timings left out."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not any(word in str(key) for word in _TIMINGS):
                out.update(_numbers(item, f"{path}.{key}" if path else str(key)))
        return out
    if isinstance(value, list):
        out = {}
        for index, item in enumerate(value):
            out.update(_numbers(item, f"{path}[{index}]"))
        return out
    return {path: value} if isinstance(value, (int, float, str, bool)) or value is None else {}


def fingerprint(run_dir: Path) -> dict[str, Any]:
    """The weights' SHA-256 and the evaluation and fine-tuning numbers a case left."""
    result: dict[str, Any] = {
        "encoder_sha256": hashlib.sha256((run_dir / "encoder.safetensors").read_bytes()).hexdigest()}
    for name in ("eval.json", "finetune.json"):
        if (run_dir / name).is_file():
            result[name] = _numbers(json.loads((run_dir / name).read_text()))
    return result


def run_case(name: str, folder: Path) -> dict[str, Any]:
    """Run case ``name`` in ``folder`` through the command line; its fingerprint."""
    from selfsup.cli import main

    run_dir = folder / name
    for command in CASES[name]:
        argv = [part.replace("{run}", str(run_dir)) for part in command]
        if main(argv) != 0:
            raise RuntimeError(f"golden case {name}: `selfsup {' '.join(argv)}` failed")
    return fingerprint(run_dir)


def recordings() -> list[dict[str, Any]]:
    """Every recording of the file: ``{"environment", "cases"}`` per machine."""
    if not GOLDEN_FILE.is_file():
        return []
    return json.loads(GOLDEN_FILE.read_text())["recordings"]


def recording_here() -> dict[str, Any] | None:
    """The recording made on a machine like this one, or None."""
    here = environment()
    return next((r for r in recordings() if r["environment"] == here), None)


def record() -> None:
    torch.set_num_threads(1)  # as the tests run (conftest.py)
    with tempfile.TemporaryDirectory() as folder:
        cases = {name: run_case(name, Path(folder)) for name in CASES}
    here = environment()
    kept = [r for r in recordings() if r["environment"] != here]
    GOLDEN_FILE.parent.mkdir(exist_ok=True)
    GOLDEN_FILE.write_text(json.dumps({"recordings": kept + [{"environment": here, "cases": cases}]},
                                      indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN_FILE} ({len(kept) + 1} machines)")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record", action="store_true", help="rerun every case, write the file")
    if parser.parse_args().record:
        record()
