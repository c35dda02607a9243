"""A run can start from weights the user has: another run's encoder, a .safetensors or a PyTorch
state-dict file of the backbone's keys; strictly checked, never downloaded (issue 20)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from selfsup.errors import ConfigError, DataError
from selfsup.train import Trainer
from selfsup.train.parts import build_parts


@pytest.fixture
def pretrained(tiny_config):
    """A finished tiny run and its encoder's weights."""
    config = tiny_config(out="first")
    Trainer(config).fit()
    return config.out, load_file(f"{config.out}/encoder.safetensors")


def _same(module, weights) -> bool:
    state = module.state_dict()
    return set(state) == set(weights) and all(torch.equal(state[k], weights[k]) for k in weights)


@pytest.mark.parametrize("form", ["run directory", "safetensors", "state dict", "nested"])
def test_a_run_starts_from_the_weights_given_in_any_form(tiny_config, pretrained, tmp_path, form):
    run, weights = pretrained
    source = {"run directory": run, "safetensors": f"{run}/encoder.safetensors"}.get(form)
    if form == "state dict":
        source = tmp_path / "w.pt"
        torch.save(weights, source)
    elif form == "nested":  # a training checkpoint of another tool: {"state_dict": ...}
        source = tmp_path / "w.pth"
        torch.save({"state_dict": weights, "epoch": 3}, source)
    parts = build_parts(tiny_config(f"backbone.init={source}", out="second"))
    assert _same(parts.method.encoder, weights)
    fresh = build_parts(tiny_config(out="third"))
    assert not _same(fresh.method.encoder, weights)  # the default stays a random init


def test_an_ema_teacher_starts_as_a_copy_of_the_initial_weights(tiny_config, pretrained):
    run, weights = pretrained
    parts = build_parts(tiny_config("method.name=byol", f"backbone.init={run}", out="byol"))
    assert _same(parts.method.encoder, weights)
    teacher = parts.method.target.net[0]  # the EMA copy of (encoder, projector)
    assert _same(teacher, weights)


def test_a_resume_takes_its_checkpoint_and_does_not_need_the_initial_file(tiny_config, pretrained,
                                                                         tmp_path):
    run, weights = pretrained
    copy = tmp_path / "init.safetensors"
    save_file(weights, str(copy))
    config = tiny_config(f"backbone.init={copy}", out="second")
    Trainer(config).fit()
    copy.unlink()
    config.train.epochs = 3
    Trainer(config, resume=True).fit()  # would fail if it read the (gone) initial file


def test_weights_of_another_architecture_are_refused_with_the_keys_and_shapes(tiny_config,
                                                                              pretrained, tmp_path):
    run, weights = pretrained
    wider = tiny_config("backbone.widths=[8, 32]", f"backbone.init={run}", out="wide")
    with pytest.raises(DataError, match=r"does not fit backbone .*other shapes: .*\(the "
                                        r"backbone's: \(32, 8, 3, 3\)\)"):
        build_parts(wider)
    renamed = tmp_path / "ddp.safetensors"
    save_file({f"module.{k}": v for k, v in weights.items()}, str(renamed))
    with pytest.raises(DataError, match=r"every key starts with 'module.'.*missing keys: "
                                        r".*unexpected keys: module\."):
        build_parts(tiny_config(f"backbone.init={renamed}", out="ddp"))


def test_a_missing_file_is_named_and_nothing_is_downloaded(tiny_config, tmp_path):
    with pytest.raises(DataError, match=r"no weights file at .*nowhere.safetensors\. selfsup "
                                        r"never downloads"):
        build_parts(tiny_config(f"backbone.init={tmp_path / 'nowhere.safetensors'}"))
    with pytest.raises(DataError, match=r"hf:facebook/esm2_t6_8M_UR50D: no config.json there\. "
                                        r"selfsup never downloads"):
        tiny_config("backbone.init=hf:facebook/esm2_t6_8M_UR50D")  # a hub name is no folder
    with pytest.raises(ConfigError, match="starting from timm weights is not supported yet"):
        build_parts(tiny_config("backbone.init=timm:resnet18"))


def test_the_pretrain_flag_reaches_the_config(tmp_path):
    from selfsup.cli import _pretrain_config, build_parser

    args = build_parser().parse_args(["pretrain", "--init", "runs/a", "--out", str(tmp_path / "x")])
    assert _pretrain_config(args).backbone["init"] == "runs/a"
