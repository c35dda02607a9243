"""The default recipe per sequence modality: chosen from the data when no method is named."""

from __future__ import annotations

from selfsup.run_config import load_config
from selfsup.data import data_modality
from selfsup.recipes import SEQUENCE_RECIPES


def test_sequence_data_without_a_method_gets_its_modality_recipe():
    for dataset, modality in (("swissprot-loc", "protein"), ("16s-reads", "dna"),
                              ("20newsgroups", "text")):
        config = load_config(None, [f"data.dataset={dataset}"])
        recipe = SEQUENCE_RECIPES[modality]
        assert config.method["name"] == recipe["method"]["name"]
        assert config.backbone["name"] == recipe["backbone"]["name"]
        assert config.train.budget_minutes == recipe["train"]["budget_minutes"] > 0


def test_what_the_user_writes_wins_over_the_recipe():
    config = load_config(None, ["data.dataset=swissprot-loc", "backbone.name=bytenet-small",
                                "train.epochs=3", "optim.lr=1e-3"])
    assert config.backbone["name"] == "bytenet-small"  # no bag options carried over
    assert config.train.budget_minutes == 0 and config.train.epochs == 3  # epochs: no budget
    assert config.optim.lr == 1e-3
    assert config.method["name"] == SEQUENCE_RECIPES["protein"]["method"]["name"]
    named = load_config(None, ["data.dataset=swissprot-loc", "method.name=mlm"])
    assert named.backbone["name"] == "transformer-small"  # the method's own defaults
    assert named.train.budget_minutes == 0


def test_images_keep_simclr_and_files_are_sniffed(tmp_path):
    assert load_config(None, ["data.dataset=digits"]).method["name"] == "simclr"
    reads, proteins = tmp_path / "reads.fasta", tmp_path / "proteins.fasta"
    reads.write_text("".join(f">r{i}\nACGTACGGTTAC{'ACGT'[i % 4]}\n" for i in range(20)))
    proteins.write_text("".join(f">p{i}\nMKLVWYQE{'ACDE'[i % 4]}\n" for i in range(20)))
    assert data_modality(str(reads)) == "dna" and data_modality(str(proteins)) == "protein"
    assert data_modality("fashion-mnist") == "image"
    assert load_config(None, [f"data.dataset={reads}"]).method["name"] == \
        SEQUENCE_RECIPES["dna"]["method"]["name"]


def test_a_recipe_carries_its_backbone_options_into_the_built_encoder():
    from selfsup.backbones import build_backbone
    from selfsup.tokenize import make_tokenizer

    config = load_config(None, ["data.dataset=20newsgroups"])
    wanted = {k: v for k, v in SEQUENCE_RECIPES["text"]["backbone"].items() if k != "name"}
    assert {k: config.backbone[k] for k in wanted} == wanted
    # the same options reach the encoder (a small vocabulary: only the widths matter here)
    encoder = build_backbone(config.backbone, 1, 1, tokenizer=make_tokenizer("protein"))
    assert encoder.out_dim == wanted["dim"] and encoder.max_n == wanted["max_n"]
