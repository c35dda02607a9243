"""Checkpoints that survive crashes, and encoder export through safetensors.

A checkpoint is written to a temporary file in the same directory, flushed to disk, then renamed
over the old one: ``os.replace`` is atomic on POSIX, so a kill at any moment leaves either the old
or the new checkpoint, never a torn one. Loading uses ``weights_only=True``: no code path unpickles
arbitrary objects from a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from selfsup.errors import DataError
from selfsup.files import atomic_write


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


def image_encoder_spec(backbone: dict[str, Any], in_shape: tuple[int, int, int],
                       dataset: str) -> dict[str, Any]:
    """``encoder.json`` of an image encoder: its backbone section and input shape (C, H, W)."""
    return {"backbone": dict(backbone), "in_channels": in_shape[0], "image_size": in_shape[1],
            "dataset": dataset}


def token_encoder_spec(encoder_config: dict[str, Any], tokenizer_config: dict[str, Any],
                       dataset: str, max_length: int) -> dict[str, Any]:
    """``encoder.json`` of a token encoder: its full options (vocabulary, reverse-complement
    invariance set by the method: the backbone's own ``config()``) and its tokeniser's."""
    return {"backbone": encoder_config, "in_channels": 0, "image_size": 0, "dataset": dataset,
            "tokenizer": tokenizer_config, "max_length": max_length}


def save_encoder(run_dir: str | Path, encoder: nn.Module, spec: dict[str, Any]) -> None:
    """Write ``encoder.safetensors`` and ``encoder.json`` (how to rebuild the module)."""
    run_dir = Path(run_dir)
    tensors = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    atomic_write(run_dir / "encoder.safetensors", lambda tmp: save_file(tensors, str(tmp)))
    atomic_write(run_dir / "encoder.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(spec, indent=2)))


def load_encoder(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the encoder from ``encoder.json`` and load ``encoder.safetensors`` into it."""
    from selfsup.backbones import build_backbone

    run_dir = Path(run_dir)
    spec_path, weights_path = run_dir / "encoder.json", run_dir / "encoder.safetensors"
    if not spec_path.is_file() or not weights_path.is_file():
        raise DataError(f"{run_dir} holds no trained encoder (encoder.json + encoder.safetensors); "
                        "run `selfsup pretrain` first, or pass the run dir it wrote")
    spec = json.loads(spec_path.read_text())
    tokenizer = spec.get("tokenizer") or {}
    if tokenizer.get("file"):  # a learnt (text) tokeniser, saved in the run dir
        spec["tokenizer"] = {**tokenizer, "file": str(run_dir / tokenizer["file"])}
    encoder = build_backbone(spec["backbone"], spec["in_channels"], spec["image_size"])
    try:
        state = load_file(str(weights_path))
    except Exception as e:
        raise DataError(f"{weights_path} cannot be read: {e}") from None
    encoder.load_state_dict(state)
    return encoder.to(device), spec
