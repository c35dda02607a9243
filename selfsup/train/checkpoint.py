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

from selfsup.errors import ConfigError, DataError
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


def check_finite_weights(state: dict[str, torch.Tensor], path: Path, fix: str) -> None:
    """DataError naming ``path``, its first non-finite tensors and ``fix`` when any floating
    tensor of ``state`` holds NaN or infinity."""
    broken = [name for name, tensor in state.items()
              if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if broken:
        raise DataError(f"{path} holds NaN or infinite weights ({', '.join(broken[:3])}"
                        f"{', ...' if len(broken) > 3 else ''}): {fix}")


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
    check_finite_weights(state, weights, "the run diverged before its export or the file is "
                                         "damaged; train it again, with a lower optim.lr")
    try:
        encoder.load_state_dict(state)
    except RuntimeError as error:  # missing or unexpected keys, shapes that differ
        first = str(error).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise DataError(f"{weights} does not fit the encoder {run.encoder_spec} describes "
                        f"({detail}): the two files are from different runs, or one was "
                        "replaced; copy both back together, or train the run again") from None
    return encoder.to(device), spec


STATE_DICT_KEYS = ("state_dict", "model", "encoder")  # where saved training states nest weights


def load_initial_weights(encoder: nn.Module, source: str | Path) -> Path:
    """Load the weights a run starts from into ``encoder``, strictly; return the file read.

    ``source`` is a ``.safetensors`` file, a PyTorch state-dict file (``.pt``/``.pth``/``.bin``,
    read with ``weights_only=True``; a dict nesting it under ``state_dict``, ``model`` or
    ``encoder`` is opened), or a selfsup run directory (its ``encoder.safetensors``: continue
    from another run's encoder). Nothing is downloaded: a missing file is a DataError naming it.
    The keys and shapes must be exactly the backbone's: the error lists the missing and the
    unexpected keys and the shapes that differ.
    """
    text = str(source)
    if text.split(":", 1)[0] in ("timm", "torchvision") and not Path(text).exists():
        raise ConfigError(f"backbone.init={text}: starting from {text.split(':')[0]} weights is "
                          "not supported yet; convert them to a state-dict file of this backbone's "
                          "keys, or start from a selfsup run directory (hf:FOLDER reads ESM-2)")
    path = Path(text).expanduser()
    if path.is_dir():
        path = RunDir(path).encoder_weights
    if not path.is_file():
        raise DataError(f"backbone.init: no weights file at {path}. selfsup never downloads at run "
                        "time: copy the file there (fetch it on a machine with network access), "
                        "or point backbone.init at a .safetensors/.pt file or a run directory")
    state = _read_weights(path)
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{key} {tuple(state[key].shape)} (the backbone's: {tuple(expected[key].shape)})"
              for key in sorted(set(state) & set(expected))
              if tuple(state[key].shape) != tuple(expected[key].shape)]
    if missing or unexpected or shapes:
        hint = (" (every key starts with 'module.': a DDP-wrapped model's; strip the prefix)"
                if unexpected and all(key.startswith("module.") for key in state) else "")
        raise DataError(f"{path} does not fit backbone {getattr(encoder, 'name', type(encoder).__name__)}"
                        f"{hint}: " + "; ".join(part for part in (
                            _listed("missing keys", missing), _listed("unexpected keys", unexpected),
                            _listed("other shapes", shapes)) if part))
    check_finite_weights(state, path, "start from another file")
    encoder.load_state_dict(state)
    return path


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise DataError(f"{path} cannot be read as weights ({type(error).__name__}: {error}); "
                        "give a .safetensors file or a PyTorch state dict") from None
    for key in STATE_DICT_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise DataError(f"{path} holds no state dict (a mapping of names to tensors)")
    return state


def _listed(what: str, items: list[str], shown: int = 5) -> str:
    if not items:
        return ""
    more = f", … ({len(items)} in all)" if len(items) > shown else ""
    return f"{what}: {', '.join(items[:shown])}{more}"

