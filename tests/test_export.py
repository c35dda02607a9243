"""`selfsup export`: the encoder in a form other tools load, checked against selfsup's own, with
a model card (issue 20)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from method_helpers import save_image_run, save_token_run
from selfsup.apps.export import export_run
from selfsup.cli import main
from selfsup.data import load_split
from selfsup.errors import ConfigError, DataError
from selfsup.train.checkpoint import load_encoder
from selfsup.views import to_input


def test_a_torchscript_image_encoder_loads_without_selfsup_and_gives_its_features(tmp_path):
    run = tmp_path / "run"
    save_image_run(run)
    files = export_run(run, "torchscript", tmp_path / "out")
    assert [path.name for path in files] == ["encoder.torchscript.pt", "README.md"]
    images = to_input(load_split("digits", "test").images[:64])
    torch.save(images, tmp_path / "x.pt")
    # a fresh interpreter that never imports selfsup
    script = ("import sys, torch\nassert 'selfsup' not in sys.modules\n"
              f"encoder = torch.jit.load({str(files[0])!r}).eval()\n"
              f"torch.save(encoder(torch.load({str(tmp_path / 'x.pt')!r})), "
              f"{str(tmp_path / 'y.pt')!r})\n"
              "assert not any(name.startswith('selfsup') for name in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    encoder, _ = load_encoder(run)
    with torch.no_grad():
        expected = encoder.eval()(images)
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), expected, atol=1e-4, rtol=0)


def test_a_torchscript_token_encoder_reads_real_proteins_of_other_lengths(tmp_path):
    run = tmp_path / "run"
    encoder, tokenizer = save_token_run(run)
    (script,) = [p for p in export_run(run, "torchscript", tmp_path / "out") if p.suffix == ".pt"]
    loaded = torch.jit.load(str(script))
    proteins = [s[:50] for s in load_split("swissprot-loc", "test").sequences[:6]]
    batch = tokenizer.encode_batch(proteins)  # right-padded, lengths unlike the traced ones
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch.ids, batch.attention_mask),
                                   encoder(batch.ids, batch.attention_mask), atol=1e-4, rtol=0)


def test_a_safetensors_export_rebuilds_and_starts_a_new_run(tmp_path, tiny_config):
    from selfsup.train.parts import build_parts

    run = tmp_path / "run"
    original = save_image_run(run)
    export_run(run, "safetensors", tmp_path / "out")
    rebuilt, spec = load_encoder(tmp_path / "out")
    assert spec["weights_sha256"]
    for key, value in original.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value)
    parts = build_parts(tiny_config(f"backbone.init={tmp_path / 'out'}",
                                    out="continued"))
    assert all(torch.equal(parts.method.encoder.state_dict()[k], v)
               for k, v in original.state_dict().items())


def test_the_model_card_says_what_it_is_and_how_to_load_it(tmp_path, tiny_config, capsys):
    from selfsup.train import Trainer

    config = tiny_config()
    Trainer(config).fit()
    card = export_run(config.out, "safetensors", tmp_path / "bare")[-1].read_text()
    assert "# simclr encoder (small-cnn) pretrained with selfsup" in card
    assert "health at the end of training: **" in card
    assert "encoder, spec = load_encoder(\".\")" in card and "Not evaluated" in card
    assert "```yaml\nmethod:\n  name: simclr" in card
    assert main(["evaluate", config.out, "--device", "cpu", "--set", "eval.seeds=1",
                 "--set", "eval.label_fractions=[1.0]"]) == 0
    assert main(["export", config.out, "--format", "torchscript", "--out",
                 str(tmp_path / "ts")]) == 0
    card = (tmp_path / "ts" / "README.md").read_text()
    assert "| SSL " in card and "| raw pixels " in card  # the evaluation table
    assert 'torch.jit.load("encoder.torchscript.pt")' in card


def test_an_unknown_format_is_named(tmp_path):
    run = tmp_path / "run"
    save_image_run(run)
    with pytest.raises(ConfigError, match="export format 'timm' is not one selfsup writes"):
        export_run(run, "timm", tmp_path / "out")


@pytest.mark.parametrize("kind", ["image", "token"])
def test_an_onnx_export_runs_in_onnxruntime_on_real_data_like_selfsup(tmp_path, kind):
    onnxruntime = pytest.importorskip("onnxruntime")
    run = tmp_path / "run"
    if kind == "image":
        encoder = save_image_run(run)
        feeds = {"images": to_input(load_split("digits", "test").images[:33])}
        with torch.no_grad():
            expected = encoder.eval()(feeds["images"])
    else:
        encoder, tokenizer = save_token_run(run)
        proteins = [s[:60] for s in load_split("swissprot-loc", "test").sequences[:9]]
        batch = tokenizer.encode_batch(proteins)  # other batch size and lengths than exported
        feeds = {"ids": batch.ids, "attention_mask": batch.attention_mask}
        with torch.no_grad():
            expected = encoder(batch.ids, batch.attention_mask)
    (model, card) = export_run(run, "onnx", tmp_path / "out")
    assert model.name == "encoder.onnx" and "onnxruntime.InferenceSession" in card.read_text()
    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (found,) = session.run(None, {name: x.numpy() for name, x in feeds.items()})
    torch.testing.assert_close(torch.from_numpy(found), expected, atol=1e-4, rtol=0)


def test_without_onnxruntime_the_onnx_export_says_what_to_install(tmp_path, monkeypatch):
    run = tmp_path / "run"
    save_image_run(run)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[onnx\]'"):
        export_run(run, "onnx", tmp_path / "out")


def test_an_export_that_does_not_match_is_removed_with_a_named_error(tmp_path, monkeypatch):
    import selfsup.apps.export as export

    run = tmp_path / "run"
    save_image_run(run)
    monkeypatch.setattr(export, "MAX_DIFFERENCE", -1.0)  # no export can pass: the refusal path
    with pytest.raises(DataError, match=r"the TorchScript encoder differs from "
                                        r"selfsup's by .* export it as safetensors"):
        export_run(run, "torchscript", tmp_path / "out")
    assert not (tmp_path / "out" / "encoder.torchscript.pt").exists()
