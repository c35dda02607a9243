"""``selfsup export RUN --format FORMAT --out DIR``: a run's encoder for the tools people deploy with.

Formats:

* ``torchscript``: ``DIR/encoder.torchscript.pt``, the encoder traced with ``torch.jit.trace``;
  loads with ``torch.jit.load`` alone, without selfsup. Checked before it is kept: loaded back and
  run on made-up inputs other than the ones it was traced on, its outputs must match selfsup's
  encoder within ``MAX_DIFFERENCE``.
* ``onnx``: ``DIR/encoder.onnx`` (any batch size; token inputs any length), checked the same
  way with onnxruntime (the ``onnx`` extra);
* ``hf``: for protein Transformers, ``DIR/config.json`` and ``DIR/model.safetensors`` that
  HuggingFace's ``EsmForMaskedLM.from_pretrained`` loads (ESM-2's layout, the inverse of
  ``backbone.init=hf:``), with the run's MLM head when it has one;
* ``safetensors``: ``DIR/encoder.safetensors`` and ``DIR/encoder.json``, selfsup's own keys and
  description (``selfsup.api.load_encoder(DIR)`` rebuilds it; ``backbone.init=DIR`` starts a run
  from it).

Every export folder holds a ``README.md`` model card: the method, backbone and data, the health
verdict, the evaluation table when the run was evaluated, the config, and how to load the encoder
in three lines. timm and torchvision layouts are not written yet.
"""

from __future__ import annotations

import io
import json
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from selfsup.errors import ConfigError, DataError
from selfsup.files import atomic_write, atomic_write_text
from selfsup.modalities import Modality, modality_for_spec
from selfsup.report.report import format_eval_table
from selfsup.run_dir import RunDir
from selfsup.train.checkpoint import load_encoder

MAX_DIFFERENCE = 1e-4  # largest |exported − selfsup| allowed on the check's outputs
TORCHSCRIPT_FILE = "encoder.torchscript.pt"
ONNX_FILE = "encoder.onnx"
MODEL_CARD = "README.md"


def export_run(run_dir: str | Path, format: str, out: str | Path) -> list[Path]:
    """Export the encoder of the run in ``run_dir`` as ``format`` into the folder ``out``;
    returns the files written (the model card last)."""
    exporters: dict[str, Callable[[nn.Module, dict, Modality, Path, RunDir], list[Path]]] = {
        "torchscript": _torchscript, "onnx": _onnx, "hf": _hf, "safetensors": _safetensors}
    if format not in exporters:
        raise ConfigError(f"export format {format!r} is not one selfsup writes; choose "
                          f"{' or '.join(exporters)}")
    out, run = Path(out), RunDir(run_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; name a folder for the export")
    encoder, spec = load_encoder(run.path, "cpu")
    encoder.eval()
    out.mkdir(parents=True, exist_ok=True)
    written = exporters[format](encoder, spec, modality_for_spec(spec), out, run)
    card = out / MODEL_CARD
    atomic_write_text(card, model_card(run, spec, format, [path.name for path in written]))
    return written + [card]


@torch.no_grad()
def _torchscript(encoder: nn.Module, spec: dict, modality: Modality, out: Path,
                 run: RunDir) -> list[Path]:
    traced_on = modality.example_inputs(4, torch.Generator().manual_seed(0))
    path = out / TORCHSCRIPT_FILE
    with warnings.catch_warnings():
        # torch 2.13 marks TorchScript deprecated (in favour of torch.export); the format is
        # still what deployment tools load, and the check below is what vouches for it
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        try:
            traced = torch.jit.trace(encoder, traced_on, check_trace=False)
        except Exception as error:  # an operation tracing cannot follow: say which encoder
            raise DataError(f"the encoder of {run} ({spec['backbone'].get('name')}) cannot be "
                            f"traced to TorchScript ({type(error).__name__}: {error}); export it "
                            "as safetensors instead") from None
        atomic_write(path, lambda tmp: torch.jit.save(traced, str(tmp)))
        loaded = torch.jit.load(str(path))
    _check_export(path, "TorchScript", encoder, loaded, modality, "safetensors")
    return [path]


@torch.no_grad()
def _onnx(encoder: nn.Module, spec: dict, modality: Modality, out: Path, run: RunDir) -> list[Path]:
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("the onnx export needs onnx and onnxruntime: pip install -e "
                          "'.[onnx]' (or pip install onnx onnxruntime)") from None
    traced_on = modality.example_inputs(4, torch.Generator().manual_seed(0))
    names = ["images"] if len(traced_on) == 1 else ["ids", "attention_mask"]
    # any batch size; token inputs any length too
    axes = {name: ({0: "batch"} if name == "images" else {0: "batch", 1: "tokens"})
            for name in names}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # the TorchScript-based exporter: torch 2.13 calls it legacy, but unlike the
        # torch.export-based one it needs no onnxscript, and the check below vouches for it
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        try:
            torch.onnx.export(encoder, traced_on, buffer, dynamo=False, input_names=names,
                              output_names=["features"],
                              dynamic_axes={**axes, "features": {0: "batch"}}, opset_version=17)
        except Exception as error:
            raise DataError(f"the encoder of {run} ({spec['backbone'].get('name')}) cannot be "
                            f"exported to ONNX ({type(error).__name__}: {error}); export it as "
                            "torchscript or safetensors instead") from None
    path = out / ONNX_FILE
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def exported(*inputs: torch.Tensor) -> torch.Tensor:
        feeds = {name: x.numpy() for name, x in zip(names, inputs)}
        return torch.from_numpy(session.run(None, feeds)[0])

    _check_export(path, "ONNX", encoder, exported, modality, "torchscript or safetensors")
    return [path]


def _check_export(path: Path, what: str, encoder: nn.Module, exported: Callable, modality: Modality,
                  instead: str) -> None:
    """Keep ``path`` only if the exported encoder (``exported``, called like ``encoder``) gives
    ``encoder``'s outputs within ``MAX_DIFFERENCE`` on made-up inputs (another batch size, other
    lengths) than those it was made with; else remove it and say what to use ``instead``."""
    checked_on = modality.example_inputs(5, torch.Generator().manual_seed(1))
    difference = float((exported(*checked_on) - encoder(*checked_on)).abs().max())
    if not difference <= MAX_DIFFERENCE:
        path.unlink()
        raise DataError(f"the {what} encoder differs from selfsup's by {difference:.3g} on inputs "
                        f"it was not made with (allowed {MAX_DIFFERENCE}); export it as {instead} "
                        "instead")


def _hf(encoder: nn.Module, spec: dict, modality: Modality, out: Path, run: RunDir) -> list[Path]:
    """ESM-2's HuggingFace folder (``config.json`` + ``model.safetensors``), with the run's MLM
    head when its checkpoint has one (``EsmForMaskedLM``), else the encoder alone (``EsmModel``)."""
    from safetensors.torch import save_file

    from selfsup.backbones.hf_esm import esm_export
    from selfsup.backbones.transformer import LanguageModelHead, TransformerEncoder
    from selfsup.train.checkpoint import load_checkpoint

    if not isinstance(encoder, TransformerEncoder):
        raise ConfigError(f"the hf export writes ESM-2 (a protein Transformer); {run} holds a "
                          f"{spec['backbone'].get('name')} encoder: export it as torchscript, onnx "
                          "or safetensors")
    head = None
    if run.checkpoint_file.is_file():
        state = load_checkpoint(run.checkpoint_file)["method"]
        head_state = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
        if head_state:  # an MLM run: its LM head, tied as the run's config says
            method = run.read_config_text()[1].get("method") or {}
            head = LanguageModelHead(encoder, tied=bool(method.get("tie_embeddings", True)))
            head.load_state_dict(head_state)
    config, weights = esm_export(encoder, head)
    written = [out / "config.json", out / "model.safetensors"]
    atomic_write_text(written[0], json.dumps(config, indent=2))
    atomic_write(written[1], lambda tmp: save_file(weights, str(tmp), metadata={"format": "pt"}))
    return written


def _safetensors(encoder: nn.Module, spec: dict, modality: Modality, out: Path,
                 run: RunDir) -> list[Path]:
    written = []
    for source in (run.encoder_weights, run.encoder_spec):
        target = out / source.name
        atomic_write(target, lambda tmp, source=source: shutil.copyfile(source, tmp))
        written.append(target)
    return written


LOAD_LINES = {
    "torchscript": ('import torch',
                    f'encoder = torch.jit.load("{TORCHSCRIPT_FILE}").eval()',
                    'features = encoder({inputs})  # (N, D)'),
    "onnx": ('import onnxruntime',
             f'session = onnxruntime.InferenceSession("{ONNX_FILE}")',
             'features, = session.run(None, {{{onnx_inputs}}})  # numpy arrays in, (N, D) out'),
    "hf": ('from transformers import EsmForMaskedLM  # EsmModel for the encoder alone',
           'model = EsmForMaskedLM.from_pretrained(".").eval()  # this folder',
           'logits = model(input_ids=ids, attention_mask=attention_mask).logits  # ESM-2 token ids'),
    "safetensors": ('from selfsup.api import load_encoder',
                    'encoder, spec = load_encoder(".")  # this folder',
                    'features = encoder.eval()({inputs})  # (N, D)'),
}


def model_card(run: RunDir, spec: dict[str, Any], format: str, files: list[str]) -> str:
    """The export's README.md (module docstring)."""
    config = run.read_config_text()[1]
    verdict = run.read_json(run.health_verdict_file) or {}
    evaluation = run.read_json(run.eval_file())
    method = (config.get("method") or {}).get("name", "?")
    backbone = spec["backbone"].get("name", "?")
    if spec.get("tokenizer"):
        inputs = "ids, attention_mask"
        onnx_inputs = '"ids": ids, "attention_mask": attention_mask'
        what = (f"token ids of the {spec['tokenizer'].get('name')} tokeniser "
                f"(`{spec['tokenizer']}`), right-padded, and their attention mask; rows of at most "
                f"{spec.get('max_length')} tokens")
    else:
        inputs = "images"
        onnx_inputs = '"images": images'
        what = (f"float images (N, {spec.get('in_channels')}, {spec.get('image_size')}, "
                f"{spec.get('image_size')}), scaled to [0, 1] and normalised with selfsup's "
                "mean and std (`selfsup.views.to_input` of uint8 images)")
    lines = [
        f"# {method} encoder ({backbone}) pretrained with selfsup", "",
        f"- method: `{method}`; backbone: `{backbone}`; data: `{spec.get('dataset')}` "
        f"({spec.get('modality', 'image')})",
        f"- files: {', '.join(f'`{name}`' for name in files)} ({format})",
        f"- health at the end of training: **{verdict.get('status', 'unknown')}**"
        + "".join(f"\n  - {message}" for message in verdict.get("messages", [])),
        "", "## Load it", "", "```python", *(line.format(inputs=inputs, onnx_inputs=onnx_inputs)
                                             for line in LOAD_LINES[format]), "```", "",
        f"Inputs: {what}.", "",
        "## Evaluation", "",
        (format_eval_table(evaluation) if evaluation else
         f"Not evaluated: run `selfsup evaluate {run.path}`, then export again."), "",
        "## Config", "", "```yaml", run.read_config_text()[0] or "(none)", "```", "",
    ]
    return "\n".join(lines)
