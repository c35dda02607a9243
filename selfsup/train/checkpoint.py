"""Checkpoints that survive crashes, and encoder export through safetensors.

A checkpoint is written to a temporary file in the same directory, flushed to disk, then renamed
over the old one: ``os.replace`` is atomic on POSIX, so a kill at any moment leaves either the old
or the new checkpoint, never a torn one. Loading uses ``weights_only=True``: no code path unpickles
arbitrary objects from a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from selfsup.errors import DataError
from selfsup.files import atomic_write
from selfsup.run_dir import ENCODER_SPEC_FILE, ENCODER_WEIGHTS_FILE, RunDir


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
    run.write_json(run.encoder_spec, spec)


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
    encoder = encoder_from_spec(spec)
    try:
        state = load_file(str(run.encoder_weights))
    except Exception as e:
        raise DataError(f"{run.encoder_weights} cannot be read: {e}") from None
    encoder.load_state_dict(state)
    return encoder.to(device), spec
