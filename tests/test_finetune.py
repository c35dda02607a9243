"""Fine-tuning: frozen vs full backbones, exact learning rates, label subsets, results file, CLI."""

from __future__ import annotations

import json
import statistics

import pytest
import torch
from PIL import Image

from selfsup.backbones import build_backbone
from selfsup.backbones.small_cnn import SmallCNN
from selfsup.backbones.vit import VisionTransformer
from selfsup.cli import main
from selfsup.run_config import load_config
from selfsup.data import load_split
from selfsup.data.sequences import SequenceSource
from selfsup.errors import ConfigError, DataError
from selfsup.config import FinetuneConfig
from selfsup.modalities.image import image_inputs
from selfsup.evaluate import run as run_module
from selfsup.evaluate.finetune import (
    Classifier,
    backbone_lr_scales,
    classifier_optimizer,
    default_layer_decay,
    finetune_model,
    finetune_run,
    initial_backbone,
    label_subsets,
    settings_from,
)
from selfsup.data import sequence_loader
from selfsup.modalities.sequence_baselines import encoder_features
from selfsup.modalities.sequence_finetune import SequenceInputs
from selfsup.report.finetune_report import finetune_section, format_finetune_table
from selfsup.run_dir import merge_finetune_results, read_finetune_results
from selfsup.tokenize import make_tokenizer
from selfsup.train import Trainer
from selfsup.train.checkpoint import load_encoder
from method_helpers import TINY_TRANSFORMER, save_token_run
from conftest import TINY

CPU = torch.device("cpu")
QUICK = dict(epochs=1, min_steps=4, batch_size=64, seeds=1, flip_prob=0.0)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny SimCLR run on digits (the tiny_config recipe), shared by the tests of this module."""
    out = tmp_path_factory.mktemp("finetune") / "run"
    Trainer(load_config(None, TINY + [f"out={out}"])).fit()
    return out


@pytest.fixture(scope="module")
def digits():
    return load_split("digits", "train"), load_split("digits", "test")


def state_copy(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def train_small(model, digits, count=128, **settings):
    train, test = digits
    config = FinetuneConfig(**{**QUICK, **settings})
    return finetune_model(model, train.subset(torch.arange(count)), test, config, seed=0,
                          device=CPU, backbone_scales=backbone_lr_scales(model.backbone),
                          inputs=image_inputs(config))


# --- modes -------------------------------------------------------------------------------------


def test_frozen_mode_leaves_every_backbone_parameter_and_buffer_bit_identical(run_dir, digits):
    encoder, _ = load_encoder(run_dir)
    before = state_copy(encoder)
    model = Classifier(encoder, num_classes=10, freeze_backbone=True)
    head_before = state_copy(model.head)
    model.train()
    assert not model.backbone.training and model.head.training  # BN would update its statistics
    train_small(model, digits)

    after = model.backbone.state_dict()
    assert set(after) == set(before) and any("running_mean" in name for name in before)
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name
    assert not torch.equal(model.head[1].weight, head_before["1.weight"])  # the head did train


def test_full_mode_changes_backbone_weights_and_batchnorm_statistics(run_dir, digits):
    encoder, _ = load_encoder(run_dir)
    before = state_copy(encoder)
    model = Classifier(encoder, num_classes=10, freeze_backbone=False)
    train_small(model, digits)
    after = model.backbone.state_dict()
    for name, tensor in before.items():
        if name.endswith(("weight", "running_mean", "running_var")):
            assert not torch.equal(after[name], tensor), name


def test_training_accuracy_on_the_labelled_subset_rises_over_epochs(digits):
    torch.manual_seed(0)
    model = Classifier(SmallCNN(1, (8, 16)), num_classes=10, freeze_backbone=False)
    outcome = train_small(model, digits, count=320, epochs=8, min_steps=0)
    history = outcome.history
    assert [h["epoch"] for h in history] == list(range(1, 9))
    assert outcome.steps == 8 * (320 // 64)
    assert history[-1]["loss"] < history[0]["loss"] - 0.3
    assert history[-1]["train_accuracy"] > history[0]["train_accuracy"] + 0.3
    assert 0.0 <= outcome.test_accuracy <= 1.0


def test_small_subsets_run_more_epochs_to_reach_min_steps(digits):
    torch.manual_seed(0)
    model = Classifier(SmallCNN(1, (8,)), num_classes=10, freeze_backbone=True)
    outcome = train_small(model, digits, count=20, epochs=1, min_steps=7, batch_size=64)
    # the batch shrinks to the 20 images: one step per epoch, so 7 epochs for 7 steps
    assert (outcome.batch_size, outcome.epochs, outcome.steps) == (20, 7, 7)


# --- learning rates ----------------------------------------------------------------------------


def group_of(optimizer, param):
    (group,) = [g for g in optimizer.param_groups if any(p is param for p in g["params"])]
    return group


def test_layerwise_lr_decay_gives_each_vit_layer_its_exact_rate():
    depth, scale, decay, lr, wd = 3, 0.5, 0.6, 2e-3, 0.05
    vit = VisionTransformer(in_channels=1, img_size=8, patch_size=4, embed_dim=16, depth=depth,
                            num_heads=2)
    model = Classifier(vit, num_classes=10, freeze_backbone=False)
    optimizer = classifier_optimizer(model, lr, wd, backbone_lr_scales(vit, scale, decay))
    # worked by hand for depth 3: embeddings are layer 0, block i layer i + 1, the rest layer 4
    expected_exponent = {"patch_embed": 4, "cls_token": 4, "pos_embed": 4,
                         "blocks.0": 3, "blocks.1": 2, "blocks.2": 1, "norm": 0}
    checked = 0
    for name, param in vit.named_parameters():
        prefix = ".".join(name.split(".")[:2]) if name.startswith("blocks.") else name.split(".")[0]
        group = group_of(optimizer, param)
        assert group["lr"] == pytest.approx(lr * scale * decay ** expected_exponent[prefix]), name
        no_decay = param.ndim < 2 or name in ("cls_token", "pos_embed")
        assert group["weight_decay"] == (0.0 if no_decay else wd), name
        checked += 1
    assert checked == len(list(vit.parameters()))
    for param in model.head.parameters():  # the head: the base rate
        assert group_of(optimizer, param)["lr"] == pytest.approx(lr)
    top_block = vit.blocks[-1].mlp[0].weight
    assert group_of(optimizer, top_block)["lr"] / lr == pytest.approx(scale * decay)


def test_default_layer_decay_depends_on_depth():
    assert default_layer_decay(12) == 0.65 and default_layer_decay(24) == 0.65
    assert default_layer_decay(4) == 0.75
    vit = VisionTransformer(in_channels=1, img_size=8, patch_size=4, embed_dim=8, depth=2, num_heads=2)
    scales = backbone_lr_scales(vit, 1.0)  # scale 1: exactly the BEiT/MAE rule
    assert scales["pos_embed"] == pytest.approx(0.75 ** 3)
    assert scales["norm.weight"] == 1.0


def test_cnn_backbone_trains_at_a_tenth_of_the_head_rate():
    cnn = SmallCNN(1, (8, 16))
    model = Classifier(cnn, num_classes=10, freeze_backbone=False)
    optimizer = classifier_optimizer(model, 1e-2, 0.05, backbone_lr_scales(cnn))
    for param in cnn.parameters():
        assert group_of(optimizer, param)["lr"] == pytest.approx(1e-3)
    head_lr = group_of(optimizer, model.head[1].weight)["lr"]
    assert head_lr / group_of(optimizer, cnn.features[0].weight)["lr"] == pytest.approx(10)


def test_frozen_backbone_is_not_in_the_optimizer():
    model = Classifier(SmallCNN(1, (8,)), num_classes=3, freeze_backbone=True)
    optimizer = classifier_optimizer(model, 1e-2, 0.05, backbone_lr_scales(model.backbone))
    optimised = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert optimised == {id(p) for p in model.head.parameters()}


# --- data and initialisations ------------------------------------------------------------------


def test_label_subsets_are_stratified_and_differ_across_seeds(digits):
    labels = digits[0].labels
    subsets = label_subsets(labels, 0.1, seeds=3)
    class_counts = torch.bincount(labels)
    expected = torch.tensor([max(1, round(0.1 * int(n))) for n in class_counts])
    for subset in subsets:
        assert torch.equal(torch.bincount(labels[subset], minlength=10), expected)
        assert len(set(subset.tolist())) == len(subset)
    assert not torch.equal(subsets[0], subsets[1]) and not torch.equal(subsets[1], subsets[2])
    assert all(torch.equal(a, b) for a, b in zip(subsets, label_subsets(labels, 0.1, seeds=3)))


def test_scratch_is_a_fresh_random_init_and_pretrained_a_private_copy(run_dir):
    encoder, spec = load_encoder(run_dir)
    trained = state_copy(encoder)
    scratch0 = initial_backbone(encoder, spec, "scratch", seed=0).state_dict()
    scratch1 = initial_backbone(encoder, spec, "scratch", seed=1).state_dict()
    conv = "features.0.weight"
    assert scratch0[conv].shape == trained[conv].shape
    assert not torch.equal(scratch0[conv], trained[conv])
    assert not torch.equal(scratch0[conv], scratch1[conv])
    # a fresh init's BatchNorm statistics are the defaults, not the trained ones
    running_var = scratch0["features.1.running_var"]
    assert torch.equal(running_var, torch.ones_like(running_var))

    copy_ = initial_backbone(encoder, spec, "pretrained", seed=0)
    with torch.no_grad():
        copy_.features[0].weight.add_(1.0)
    assert torch.equal(encoder.state_dict()[conv], trained[conv])  # the run's encoder is untouched
    with pytest.raises(ConfigError, match="unknown initialisation 'imagenet'"):
        initial_backbone(encoder, spec, "imagenet", seed=0)


# --- results file ------------------------------------------------------------------------------


def entry(mean: float) -> dict:
    return {"accuracy": [mean], "mean": mean, "std": 0.0}


def test_merge_keeps_earlier_entries_and_replaces_the_same_one(tmp_path):
    path = tmp_path / "finetune.json"
    merge_finetune_results(path, {"digits": {"full": {"pretrained": {"0.1": entry(0.5)}}}})
    merge_finetune_results(path, {"digits": {"full": {"pretrained": {"1.0": entry(0.9)},
                                             "scratch": {"0.1": entry(0.4)}},
                                    "frozen": {"pretrained": {"0.1": entry(0.3)}}},
                         "other": {"full": {"pretrained": {"0.1": entry(0.2)}}}})
    merged = merge_finetune_results(path, {"digits": {"full": {"pretrained": {"0.1": entry(0.6)}}}})
    assert merged == json.loads(path.read_text())
    digits = merged["datasets"]["digits"]
    assert digits["full"]["pretrained"] == {"0.1": entry(0.6), "1.0": entry(0.9)}
    assert digits["full"]["scratch"] == {"0.1": entry(0.4)}
    assert digits["frozen"]["pretrained"] == {"0.1": entry(0.3)}
    assert merged["datasets"]["other"]["full"]["pretrained"] == {"0.1": entry(0.2)}


def test_damaged_results_file_is_a_named_error(tmp_path):
    path = tmp_path / "finetune.json"
    path.write_text("{not json")
    with pytest.raises(DataError, match="finetune.json is not valid JSON"):
        read_finetune_results(path)
    path.write_text("[1, 2]")  # JSON, but no object: the run dir's one JSON reader says so
    with pytest.raises(DataError, match="finetune.json must hold a JSON object"):
        merge_finetune_results(path, {})
    path.write_text('{"results": []}')
    with pytest.raises(DataError, match="not a fine-tuning results file"):
        merge_finetune_results(path, {})


def test_finetune_run_twice_merges_and_records_seeds_and_settings(run_dir, tmp_path):
    out = tmp_path / "ft.json"
    settings = FinetuneConfig(**{**QUICK, "seeds": 2})
    finetune_run(run_dir, [0.1], settings=settings, device="cpu", out=out, log=lambda _: None)
    merged = finetune_run(run_dir, [1.0], modes=["frozen"], inits=["scratch"], settings=settings,
                          device="cpu", out=out, log=lambda _: None)
    assert set(merged["datasets"]["digits"]) == {"full", "frozen"}
    result = merged["datasets"]["digits"]["full"]["pretrained"]["0.1"]
    assert len(result["accuracy"]) == 2 and result["seeds"] == [0, 1]
    assert result["mean"] == pytest.approx(statistics.fmean(result["accuracy"]))
    assert result["std"] == pytest.approx(statistics.pstdev(result["accuracy"]))
    assert result["settings"]["backbone_lr_scale"] == 0.1 and result["settings"]["layer_decay"] is None
    scratch = merged["datasets"]["digits"]["frozen"]["scratch"]["1.0"]
    assert scratch["settings"]["backbone_lr_scale"] == 1.0  # nothing pretrained to protect
    assert scratch["train_examples"] == [len(load_split("digits", "train"))] * 2


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(fractions=[0.0]), ConfigError, "label fraction 0.0 is not in"),
    (dict(fractions=[0.1, 1.5]), ConfigError, "label fraction 1.5 is not in"),
    (dict(fractions=[0.1], modes=["partial"]), ConfigError, "unknown fine-tune mode 'partial'"),
    (dict(fractions=[0.1], inits=["imagenet"]), ConfigError, "unknown initialisation"),
])
def test_bad_choices_fail_before_any_training(run_dir, kwargs, error, message):
    with pytest.raises(error, match=message):
        finetune_run(run_dir, settings=FinetuneConfig(**QUICK), device="cpu",
                     log=lambda line: pytest.fail(f"trained despite bad input: {line}"), **kwargs)


def test_run_dir_without_encoder_or_config_is_a_named_error(run_dir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(DataError, match="not a selfsup run dir"):
        finetune_run(bare, [0.1])
    (bare / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    with pytest.raises(DataError, match="holds no trained encoder"):
        finetune_run(bare, [0.1])


@pytest.mark.parametrize("overrides, message", [
    (["nope=1"], "unknown config key finetune.nope"),
    (["lr=0"], "lr, backbone_lr_scale and layer_decay must be above 0"),
    (["backbone_lr_scale=2"], "backbone_lr_scale must be a number in"),
    (["crop_scale=[0.9, 0.5]"], "crop_scale must satisfy"),
    (["precision=fp8"], "precision must be auto, bf16 or fp32"),
])
def test_bad_settings_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        settings_from({"epochs": None}, overrides)


# --- report and command line -------------------------------------------------------------------


def test_table_cells_and_gain_are_computed_from_the_entries():
    results = {"datasets": {"digits": {"full": {
        "pretrained": {"0.01": {"mean": 0.80, "std": 0.02}, "1.0": {"mean": 0.95, "std": 0.001}},
        "scratch": {"0.01": {"mean": 0.55, "std": 0.05}, "1.0": {"mean": 0.96, "std": 0.0}}}}}}
    lines = format_finetune_table(results).splitlines()
    assert "1% labels" in lines[0] and "100% labels" in lines[0]
    row = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines[2:]}
    assert row["pretrained, fine-tuned"] == ["80.0% ± 2.0", "95.0% ± 0.1"]
    assert row["scratch, trained"] == ["55.0% ± 5.0", "96.0% ± 0.0"]
    assert row["gain over scratch (full)"] == ["+25.0 pt", "-1.0 pt"]
    one_seed = {"datasets": {"digits": {"frozen": {"pretrained": {"0.1": entry(0.7)}}}}}
    one_row = format_finetune_table(one_seed).splitlines()[2]
    assert [c.strip() for c in one_row.split("|")[1:-1]] == ["pretrained, frozen + head", "70.0%"]
    results["datasets"]["digits"]["full"]["scratch"]["1.0"]["mean"] = 96.0  # a percentage, not a fraction
    with pytest.raises(DataError, match=r"digits.full.scratch\[1.0\].mean = 96.0"):
        format_finetune_table(results)


def test_cli_finetune_compare_scratch_then_report_section(tiny_config, capsys):
    config = tiny_config()
    run = Trainer(config).fit()
    assert main(["finetune", str(run), "--labels-fraction", "0.1,1.0", "--compare-scratch",
                 "--seeds", "2", "--epochs", "1", "--batch-size", "128", "--device", "cpu",
                 "--set", "min_steps=2"]) == 0
    printed = capsys.readouterr().out
    assert "pretrained, fine-tuned" in printed and "gain over scratch (full)" in printed

    results = json.loads((run / "finetune.json").read_text())["datasets"]["digits"]["full"]
    labels = load_split("digits", "train").labels
    per_class = sum(max(1, round(0.1 * int(n))) for n in torch.bincount(labels))
    for init in ("pretrained", "scratch"):
        assert set(results[init]) == {"0.1", "1.0"}
        assert results[init]["0.1"]["train_examples"] == [per_class, per_class]
        assert all(0.0 <= a <= 1.0 for a in results[init]["1.0"]["accuracy"])
        assert results[init]["0.1"]["settings"]["batch_size"] == 128

    section = finetune_section(run)
    assert section[0] == "## Fine-tuning"
    assert not any(line.startswith("Run with other settings") for line in section)  # one protocol
    # the image modality words the augmentation (the defaults: crop-flip on)
    assert "crops of 0.8–1.0 of the area, flip probability 0.5" in "\n".join(section)
    assert "![Fine-tuning label efficiency](finetune_label_efficiency.png)" in section
    with Image.open(run / "finetune_label_efficiency.png") as image:
        assert image.width > 200 and image.height > 150


@pytest.mark.parametrize("args, message", [
    (["--labels-fraction", "0.1,2"], "label fraction 2.0 is not in (0, 1]"),
    (["--labels-fraction", "ten"], "--labels-fraction 'ten' is not a comma-separated list"),
    (["--mode", "partial"], "unknown fine-tune mode 'partial'"),
    (["--set", "nope=1"], "unknown config key finetune.nope"),
])
def test_cli_bad_input_exits_2_with_the_message(run_dir, args, message, capsys):
    assert main(["finetune", str(run_dir), "--device", "cpu", *args]) == 2
    assert message in capsys.readouterr().err


def test_cli_finetune_help_names_the_study_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--labels-fraction", "--mode", "--scratch", "--compare-scratch", "--seeds", "--out"):
        assert flag in out


def test_report_section_names_the_entries_run_with_another_schedule(tmp_path):
    protocol = {"epochs": 10, "min_steps": 300, "batch_size": 256, "lr": 0.01, "augment": True,
                "backbone_lr_scale": 0.1, "layer_decay": 0.75, "seeds": 3}

    def entry(**changes) -> dict:
        return {"accuracy": [0.8, 0.82], "mean": 0.81, "std": 0.01, "settings": {**protocol, **changes}}

    scratch = {"backbone_lr_scale": 1.0, "layer_decay": 1.0}  # differ by design: not reported
    # the quick 100 % run comes first in the file; the protocol is what most entries share
    results = {"datasets": {"digits": {"full": {
        "pretrained": {"1.0": entry(epochs=4, seeds=1), "0.1": entry(), "0.01": entry()},
        "scratch": {"0.1": entry(**scratch), "1.0": entry(**scratch, epochs=4, batch_size=128)},
    }}}}
    (tmp_path / "finetune.json").write_text(json.dumps(results))
    section = finetune_section(tmp_path)
    assert any(line.startswith("Protocol (full, pretrained):") and "at least 10 epochs" in line
               for line in section)
    notes = [line for line in section if line.startswith("Run with other settings")]
    assert notes == ["Run with other settings: pretrained, fine-tuned at 100% labels (digits): epochs 4; "
                     "scratch, trained at 100% labels (digits): batch_size 128, epochs 4."]

    # one entry each way, the quick one first: the tie goes to the longer schedule
    tied = {"datasets": {"digits": {"full": {"pretrained": {"1.0": entry(epochs=4), "0.1": entry()}}}}}
    (tmp_path / "finetune.json").write_text(json.dumps(tied))
    section = finetune_section(tmp_path)
    assert any(line.startswith("Protocol (full, pretrained):") and "at least 10 epochs" in line
               for line in section)


def test_report_section_without_results_says_how_to_make_them(tmp_path):
    assert "selfsup finetune" in " ".join(finetune_section(tmp_path))


# --- sequences ---------------------------------------------------------------------------------

SEQUENCE_MAX_LENGTH = 32
QUICK_SEQUENCES = dict(epochs=1, min_steps=4, batch_size=64, seeds=1)
MOTIF_FREE = "ACDEFGHIKLMNPQRSTVY"  # the 20 amino acids but W


def motif_proteins(count: int, seed: int, name: str = "motif") -> SequenceSource:
    """Random W-free proteins of 8 to 24 residues, every second one (label 1) with one W.

    A linear head on a random encoder's mean-pooled features sees the W only diluted among the other
    residues; an encoder that trains can make the W token stand out. Mixed lengths make the batches
    length-bucketed, so a prediction that lands on another sequence's row would show.
    """
    generator = torch.Generator().manual_seed(seed)
    sequences = []
    for index in range(count):
        length = int(torch.randint(8, 25, (1,), generator=generator))
        letters = [MOTIF_FREE[i] for i in torch.randint(len(MOTIF_FREE), (length,), generator=generator)]
        if index % 2:
            letters[int(torch.randint(length, (1,), generator=generator))] = "W"
        sequences.append("".join(letters))
    return SequenceSource([f"{name}{i}" for i in range(count)], sequences, "protein",
                          labels=[i % 2 for i in range(count)], classes=["no W", "W"], name=name)


def token_encoder(seed: int = 0):
    torch.manual_seed(seed)
    return build_backbone(TINY_TRANSFORMER, 0, 0, make_tokenizer("protein"))


def save_protein_run(run_dir):
    """A protein MLM's run dir (config.yaml and encoder) on swissprot-loc."""
    save_token_run(run_dir, max_length=SEQUENCE_MAX_LENGTH)
    return run_dir


def finetune_motif(mode: str, epochs: int = 8):
    """A random token encoder fine-tuned on 256 motif proteins; (model, encoder before, outcome)."""
    encoder = token_encoder()
    before = state_copy(encoder)
    model = Classifier(encoder, num_classes=2, freeze_backbone=mode == "frozen")
    settings = FinetuneConfig(epochs=epochs, min_steps=0, batch_size=32, seeds=1)
    outcome = finetune_model(model, motif_proteins(256, seed=0), motif_proteins(200, seed=1), settings,
                             seed=0, device=CPU, backbone_scales=backbone_lr_scales(encoder, 1.0),
                             eval_batch_size=64,
                             inputs=SequenceInputs(make_tokenizer("protein"), SEQUENCE_MAX_LENGTH))
    return model, before, outcome


def test_full_finetuning_learns_a_residue_motif_that_frozen_random_features_miss():
    *_, full = finetune_motif("full")
    *_, frozen = finetune_motif("frozen")
    # the same init, data order and head: only the backbone's training differs
    assert full.steps == frozen.steps == 8 * (256 // 32)
    assert full.test_accuracy >= 0.9  # chance is 0.5; labels and rows must line up to get here
    assert frozen.test_accuracy <= full.test_accuracy - 0.15


def test_frozen_mode_leaves_a_token_encoder_bit_identical():
    model, before, _ = finetune_motif("frozen", epochs=1)
    after = model.backbone.state_dict()
    assert set(after) == set(before)
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name
    full_model, full_before, _ = finetune_motif("full", epochs=1)
    assert not torch.equal(full_model.backbone.token_embedding.weight,
                           full_before["token_embedding.weight"])  # full mode does train it


def test_sequence_logits_tokenise_a_test_split_once(monkeypatch):
    tokenizer = make_tokenizer("protein")
    inputs = SequenceInputs(tokenizer, SEQUENCE_MAX_LENGTH)
    test = motif_proteins(20, seed=1)
    tokenised = []
    real = sequence_loader.EncodedSequences
    monkeypatch.setattr(sequence_loader, "EncodedSequences",
                        lambda source, tok: tokenised.append(source.name) or real(source, tok))
    first, second = token_encoder(seed=0), token_encoder(seed=1)
    logits = [inputs.logits(model, test, CPU, 8, "fp32") for model in (first, second)]
    assert tokenised == ["motif"]  # the second run reuses the first run's batches
    for model, result in zip((first, second), logits):
        torch.testing.assert_close(result, encoder_features(model, test, tokenizer, CPU, 8,
                                                            SEQUENCE_MAX_LENGTH))
    other = motif_proteins(20, seed=2, name="other")
    torch.testing.assert_close(inputs.logits(first, other, CPU, 8, "fp32"),
                               encoder_features(first, other, tokenizer, CPU, 8, SEQUENCE_MAX_LENGTH))


def test_token_transformer_trains_at_one_backbone_rate():
    encoder = token_encoder()
    assert set(backbone_lr_scales(encoder, 0.1).values()) == {0.1}  # no ViT layer decay


@pytest.fixture(scope="module")
def swissprot():
    try:
        return load_split("swissprot-loc", "train"), load_split("swissprot-loc", "test")
    except DataError as error:
        pytest.skip(str(error))


def test_sequence_results_have_the_image_shape_and_the_report_renders(run_dir, swissprot, tmp_path):
    image = finetune_run(run_dir, [0.1], settings=FinetuneConfig(**QUICK), device="cpu",
                         out=tmp_path / "image.json", log=lambda _: None)
    image_entry = image["datasets"]["digits"]["full"]["pretrained"]["0.1"]
    protein_run = save_protein_run(tmp_path / "protein")
    results = finetune_run(protein_run, [0.01], modes=["full", "frozen"], inits=["pretrained", "scratch"],
                           settings=FinetuneConfig(**QUICK_SEQUENCES), device="cpu",
                           log=lambda _: None)
    train, test = swissprot
    per_class = sum(max(1, round(0.01 * int(n))) for n in torch.bincount(train.labels))
    by_mode = results["datasets"]["swissprot-loc"]
    assert set(by_mode) == {"full", "frozen"} and set(by_mode["full"]) == {"pretrained", "scratch"}
    for mode, init in [("full", "pretrained"), ("full", "scratch"), ("frozen", "pretrained")]:
        entry = by_mode[mode][init]["0.01"]
        assert set(entry) == set(image_entry)
        assert set(entry["settings"]) == set(image_entry["settings"]) - {"crop_scale", "flip_prob"} | {
            "max_length"}
        assert entry["settings"]["max_length"] == SEQUENCE_MAX_LENGTH
        assert entry["settings"]["layer_decay"] is None
        assert entry["train_examples"] == [per_class] and entry["num_test"] == len(test)
        assert 0.0 <= entry["accuracy"][0] <= 1.0 and entry["mean"] == entry["accuracy"][0]
    assert by_mode["full"]["pretrained"]["0.01"]["settings"]["backbone_lr_scale"] == 0.1
    assert by_mode["full"]["scratch"]["0.01"]["settings"]["backbone_lr_scale"] == 1.0

    section = finetune_section(protein_run)
    assert section[0] == "## Fine-tuning"
    table = [[cell.strip() for cell in line.split("|")[1:-1]]
             for line in "\n".join(section).splitlines() if line.startswith("|")]
    assert table[0] == ["swissprot-loc: test top-1", "1% labels"]
    assert {row[0] for row in table[2:]} == {"pretrained, fine-tuned", "scratch, trained",
                                             "pretrained, frozen + head", "random init, frozen + head",
                                             "gain over scratch (full)", "gain over scratch (frozen)"}
    assert (f"sequences longer than {SEQUENCE_MAX_LENGTH} tokens cut to a random window"
            in "\n".join(section))  # augment is on: random windows, no crops or flips
    with Image.open(protein_run / "finetune_label_efficiency.png") as picture:
        assert picture.width > 200


@pytest.fixture
def fake_corpora(monkeypatch):
    """Tiny stand-ins for data sets too slow to load in a test (uniprot-go takes ~30 s)."""
    dna = motif_proteins(8, seed=0, name="dna-reads")
    sets = {
        "uniprot-go": SequenceSource(["a", "b"], ["MKV", "MKVL"], "protein", name="uniprot-go"),
        "dna-reads": SequenceSource(dna.ids, ["ACGT" * 3] * 8, "dna", dna.labels, name="dna-reads"),
        "motif": motif_proteins(64, seed=0),
    }
    real = run_module.load_split
    monkeypatch.setattr(run_module, "load_split", lambda name, split, *args: (
        sets[name] if name in sets else real(name, split, *args)))


@pytest.mark.parametrize("dataset, settings, error, message", [
    ("uniprot-go", {}, DataError, r"'uniprot-go' has no labels.*pass --dataset with a labelled protein "
                                  r"data set \(swissprot-loc\)"),
    ("dna-reads", {}, DataError, "holds dna sequences but the encoder of .* reads protein tokens"),
    ("digits", {}, DataError, "holds images but .* holds a token encoder"),
    ("motif", {"flip_prob": 0.0}, ConfigError, "finetune flip_prob applies to images only"),
    ("motif", {"crop_scale": (0.5, 1.0), "layer_decay": 0.75}, ConfigError,
     "finetune crop_scale, layer_decay apply to images only"),
])
def test_sequence_runs_refuse_mismatched_data_and_image_settings(tmp_path, fake_corpora, dataset,
                                                                 settings, error, message):
    protein_run = save_protein_run(tmp_path / "protein")
    with pytest.raises(error, match=message):
        finetune_run(protein_run, [1.0], settings=FinetuneConfig(**QUICK_SEQUENCES, **settings),
                     dataset=dataset, device="cpu",
                     log=lambda line: pytest.fail(f"trained despite bad input: {line}"))


def test_image_only_settings_are_refused_before_any_data_loads(tmp_path):
    protein_run = save_protein_run(tmp_path / "protein")
    with pytest.raises(ConfigError, match="finetune flip_prob applies to images only"):
        finetune_run(protein_run, [1.0], settings=FinetuneConfig(flip_prob=0.0),
                     dataset="no-such-data-set", device="cpu")  # loading it would be a DataError


def test_image_run_refuses_sequences(run_dir, fake_corpora):
    with pytest.raises(DataError, match="'motif' holds protein sequences but .* holds an image encoder"):
        finetune_run(run_dir, [1.0], dataset="motif", device="cpu",
                     log=lambda line: pytest.fail(f"trained despite bad input: {line}"))
