"""Config overrides and the backbones' shapes."""

from __future__ import annotations

import pytest
import torch

from selfsup.backbones import build_backbone
from selfsup.run_config import load_config
from selfsup.errors import ConfigError


def test_overrides_yaml_and_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 7\noptim:\n  lr: 0.5\n")
    config = load_config(path, ["optim.lr=0.25", "method.temperature=0.1", "optim.betas=[0.8, 0.9]",
                                "optim.weight_decay=1e-6"])
    assert config.train.epochs == 7 and config.optim.lr == 0.25 and config.optim.weight_decay == 1e-6
    assert config.method == {"name": "simclr", "temperature": 0.1}
    assert config.optim.betas == (0.8, 0.9)
    config.save(tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == config


@pytest.mark.parametrize("override, message", [
    ("train.epochs=many", "train.epochs must be a number"),
    ("train.compile=1", "train.compile must be true or false"),
    ("nope.key=1", "unknown config key nope"),
    ("novalue", "key=value"),
    # values of the right type but impossible: named when the config loads, not after an epoch
    ("train.epochs=0", r"train\.epochs must be a number in \[1, 100,000\], got 0"),
    ("train.epochs=1000000000", r"train\.epochs must be a number in \[1, 100,000\]"),
    ("train.batch_size=1", r"train\.batch_size must be a number in \[2, 16,777,216\], got 1"),
    ("train.probe_every=0", r"train\.probe_every must be a number ≥ 1"),
    # at load, on every process (the health hook runs on rank 0 alone)
    ("train.health_samples=100", r"train\.health_samples must be a number ≥ 512, got 100"),
    ("optim.lr=-1", r"optim\.lr must be a number > 0"),
    ("optim.lr=.nan", r"optim\.lr must be a number > 0, got nan"),
    ("optim.min_lr_ratio=2", r"optim\.min_lr_ratio must be a number in \[0, 1\], got 2"),
    ("optim.schedule=step", r"optim\.schedule must be one of cosine, linear, got 'step'"),
    ("optim.betas=[0.9]", r"optim\.betas must be two numbers in \[0, 1\)"),
    ("data.num_workers=-1", r"data\.num_workers must be a number ≥ 0"),
    ('data.dataset=""', r"data\.dataset is empty"),
    ("eval.knn_temperature=0", r"eval\.knn_temperature must be a number > 0"),
    ("eval.label_fractions=0.5", r"eval\.label_fractions must be a list, e.g. \[0.01, 0.1, 1.0\], got 0.5"),
    ("eval.label_fractions=[0.1, 2]", r"eval\.label_fractions must be a number in \(0, 1\], got 2"),
    ("train.sync_bn=maybe", r"train\.sync_bn must be true, false or null"),
    ("optim.betas=[0.9, 1]", r"optim\.betas must be two numbers in \[0, 1\)"),
    ("eval.knn_k=0", r"eval\.knn_k must be a whole number ≥ 1, got 0"),
    ("eval.knn_k=20.5", r"eval\.knn_k must be a whole number ≥ 1, got 20.5"),
    ("eval.knn_k=many", r"eval\.knn_k must be a whole number ≥ 1 or auto, got 'many'"),
])
def test_bad_overrides_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_knn_k_is_chosen_unless_fixed_and_survives_a_round_trip(tmp_path):
    assert load_config(None).eval.knn_k == "auto"
    assert load_config(None, ["eval.knn_k=null"]).eval.knn_k == "auto"
    assert load_config(None, ["eval.knn_k=20"]).eval.knn_k == 20
    load_config(None, ["eval.knn_k=20"]).save(tmp_path / "fixed.yaml")
    load_config(None).save(tmp_path / "auto.yaml")
    assert load_config(tmp_path / "fixed.yaml").eval.knn_k == 20
    assert load_config(tmp_path / "auto.yaml").eval.knn_k == "auto"


@pytest.mark.parametrize("name, dim", [("resnet18", 512), ("small-cnn", 256)])
@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32), (5, 16)])
def test_backbone_features(name, dim, channels, size):
    net = build_backbone({"name": name}, channels, size)
    out = net(torch.randn(2, channels, size, size))
    assert out.shape == (2, dim) == (2, net.out_dim)


def test_small_cnn_grid_read_out_keeps_where_features_fire():
    net = build_backbone({"name": "small-cnn", "widths": [8, 16], "grid": 2}, 1, 28).eval()
    x = torch.randn(3, 1, 28, 28)
    feature_map = net.features(x)  # (3, 16, 14, 14)
    out = net(x)
    assert out.shape == (3, 16 * 4) == (3, net.out_dim)
    # channel-major cells: channel c's top-left 7 × 7 quadrant mean, then its top-right one
    cells = out.view(3, 16, 2, 2)
    torch.testing.assert_close(cells[:, :, 0, 0], feature_map[:, :, :7, :7].mean(dim=(2, 3)))
    torch.testing.assert_close(cells[:, :, 0, 1], feature_map[:, :, :7, 7:].mean(dim=(2, 3)))
    # the quadrants' means average to the global pool of grid 1, the same weights
    one = build_backbone({"name": "small-cnn", "widths": [8, 16]}, 1, 28).eval()
    one.load_state_dict(net.state_dict())
    torch.testing.assert_close(one(x), cells.mean(dim=(2, 3)))
    with pytest.raises(ConfigError, match="backbone.grid of small-cnn must be ≥ 1"):
        build_backbone({"name": "small-cnn", "grid": 0}, 1, 28)


def test_resnet18_has_the_cifar_stem():
    net = build_backbone({"name": "resnet18"}, 3, 32)
    stem = net.stem[0]
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in net.modules())
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(11.17e6, rel=0.01)


def test_unknown_backbone_options_are_named():
    with pytest.raises(ConfigError, match="unknown config key backbone.depth"):
        build_backbone({"name": "resnet18", "depth": 3}, 3, 32)


def test_adapter_wraps_any_module():
    from selfsup.backbones import FeatureAdapter

    module = torch.nn.Sequential(torch.nn.Conv2d(3, 7, 3), torch.nn.ReLU())
    net = FeatureAdapter(module, (3, 16, 16))
    assert net.out_dim == 7 and net(torch.randn(2, 3, 16, 16)).shape == (2, 7)


def test_missing_external_library_is_a_named_error(monkeypatch):
    import sys

    for library in ("timm", "torchvision"):
        monkeypatch.setitem(sys.modules, library, None)  # `import` now fails, installed or not
        with pytest.raises(ConfigError, match=f"needs {library}"):
            build_backbone({"name": f"{library}:resnet18"}, 3, 32)


def test_method_defaults_sit_below_everything_the_user_writes(tmp_path):
    from selfsup import catalog
    from selfsup.registry import METHODS

    catalog.load()

    simsiam = METHODS.get("simsiam").config_defaults["optim"]
    config = load_config(None, ["method.name=simsiam"])
    assert (config.optim.name, config.optim.lr) == (simsiam["name"], simsiam["lr"])
    assert load_config(None, ["method.name=simsiam", "optim.lr=0.01"]).optim.lr == 0.01
    path = tmp_path / "c.yaml"
    path.write_text("method:\n  name: simsiam\noptim:\n  name: adamw\n")
    from_file = load_config(path)
    assert from_file.optim.name == "adamw" and from_file.optim.lr == simsiam["lr"]
    # another method named by an override replaces the file's method and its defaults
    byol = METHODS.get("byol").config_defaults["optim"]
    assert load_config(None, ["method.name=byol"]).optim.lr == byol["lr"] != simsiam["lr"]
    # a method without defaults keeps the dataclass defaults
    from selfsup.config import OptimConfig

    assert load_config(None, ["method.name=rotation"]).optim == OptimConfig()


def test_a_methods_default_backbone_options_follow_the_backbone_the_user_names():
    # BEiT defaults to a mean-pooled ViT-Tiny: another ViT keeps pool=mean, a ResNet drops it
    assert load_config(None, ["method.name=beit"]).backbone == {"name": "vit-tiny", "pool": "mean"}
    assert load_config(None, ["method.name=beit", "backbone.name=vit-small"]).backbone == {
        "name": "vit-small", "pool": "mean"}
    assert load_config(None, ["method.name=beit", "backbone.name=resnet18"]).backbone == {
        "name": "resnet18"}
