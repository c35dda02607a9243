"""Checkpoints that survive crashes, and encoder export through safetensors.

A checkpoint is written to a temporary file in the same directory, flushed to disk, then renamed
over the old one: ``os.replace`` is atomic on POSIX, so a kill at any moment leaves either the old
or the new checkpoint, never a torn one. Loading uses ``weights_only=True``: no code path unpickles
arbitrary objects from a file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from selfsup.errors import DataError
from selfsup.files import atomic_write
from selfsup.run_dir import ENCODER_SPEC_FILE, ENCODER_WEIGHTS_FILE, RunDir

WEIGHTS_SHA256 = "weights_sha256"  # encoder.json's record of encoder.safetensors' SHA-256


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Save a training state (tensors, numbers, strings, lists, dicts) atomically."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint without unpickling code (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no checkpoint at {path}; start without --resume, or point at the run dir")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise DataError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); "
                        "it may be from another program or damaged") from None


def save_encoder(run_dir: str | Path, encoder: nn.Module, spec: dict[str, Any]) -> None:
    """Write ``encoder.safetensors`` and ``encoder.json`` (how to rebuild the module)."""
    run = RunDir(run_dir)
    tensors = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    atomic_write(run.encoder_weights, lambda tmp: save_file(tensors, str(tmp)))
    # the weights' fingerprint beside them: a flipped byte is caught at load, not as odd numbers
    run.write_json(run.encoder_spec, {**spec, WEIGHTS_SHA256: file_sha256(run.encoder_weights)})


def file_sha256(path: Path) -> str:
    """The SHA-256 of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def encoder_from_spec(spec: dict[str, Any]) -> nn.Module:
    """The backbone an ``encoder.json`` (``spec``) describes, freshly initialised: its backbone
    section and input shape (0 × 0 for token encoders, whose section holds the vocabulary)."""
    from selfsup.backbones import build_backbone

    return build_backbone(spec["backbone"], spec["in_channels"], spec["image_size"])


def random_init_encoder(spec: dict[str, Any], seed: int, device: str | torch.device) -> nn.Module:
    """The random-init baseline and the fine-tuning scratch start: :func:`encoder_from_spec`
    built under ``seed`` (the run's training seed, or a fine-tuning seed), on ``device``."""
    torch.manual_seed(seed)
    return encoder_from_spec(spec).to(device)


def load_encoder(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the encoder from ``encoder.json`` and load ``encoder.safetensors`` into it."""
    run = RunDir(run_dir)
    if not run.has_encoder():
        raise DataError(f"{run} holds no trained encoder ({ENCODER_SPEC_FILE} + "
                        f"{ENCODER_WEIGHTS_FILE}); run `selfsup pretrain` first, or pass the run "
                        "dir it wrote")
    spec = run.read_encoder_spec()
    tokenizer = spec.get("tokenizer") or {}
    if tokenizer.get("file"):  # a learnt (text) tokeniser, saved in the run dir
        spec["tokenizer"] = {**tokenizer, "file": str(run.path / tokenizer["file"])}
    weights = run.encoder_weights
    recorded = spec.get(WEIGHTS_SHA256)  # runs exported before it was recorded have none
    if recorded is not None and file_sha256(weights) != recorded:
        raise DataError(f"{weights} is not the file exported with {run.encoder_spec} (its SHA-256 "
                        "differs from the one recorded there): it was changed or damaged; copy "
                        "both back from a backup, or train the run again")
    try:
        encoder = encoder_from_spec(spec)
    except (KeyError, TypeError) as error:
        raise DataError(f"{run.encoder_spec} lacks what its encoder is rebuilt from ({error}): it "
                        "is damaged or from an incompatible version; train the run again") from None
    try:
        state = load_file(str(weights))
    except Exception as e:
        raise DataError(f"{weights} cannot be read: {e}") from None
    broken = [name for name, tensor in state.items()
              if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if broken:
        raise DataError(f"{weights} holds NaN or infinite weights ({', '.join(broken[:3])}"
                        f"{', ...' if len(broken) > 3 else ''}): the run diverged before its "
                        "export or the file is damaged; train it again, with a lower optim.lr")
    try:
        encoder.load_state_dict(state)
    except RuntimeError as error:  # missing or unexpected keys, shapes that differ
        first = str(error).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise DataError(f"{weights} does not fit the encoder {run.encoder_spec} describes "
                        f"({detail}): the two files are from different runs, or one was "
                        "replaced; copy both back together, or train the run again") from None
    return encoder.to(device), spec
