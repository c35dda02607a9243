"""ESM-2 weights saved by HuggingFace read as selfsup's Transformer and MLM head: the same logits
and per-residue embeddings as HF's model on real proteins, padding included (issue 20)."""

from __future__ import annotations

import pytest
import torch

from selfsup.backbones import build_backbone
from selfsup.backbones.hf_esm import (
    esm_backbone_options, esm_encoder_state, esm_head_state, read_esm_folder,
)
from selfsup.backbones.transformer import LanguageModelHead
from selfsup.data import load_split
from selfsup.errors import ConfigError, DataError
from selfsup.tokenize import make_tokenizer

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def esm_folder(tmp_path_factory):
    """A tiny random ESM-2 (token dropout on, ESM's epsilon) saved as save_pretrained does."""
    torch.manual_seed(0)
    config = transformers.EsmConfig(
        vocab_size=33, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, position_embedding_type="rotary", token_dropout=True,
        pad_token_id=1, mask_token_id=32, max_position_embeddings=1026,
        emb_layer_norm_before=False, layer_norm_eps=1e-12)
    model = transformers.EsmForMaskedLM(config).eval()
    with torch.no_grad():  # weights of a trained model's spread, not the init's near-zero ones
        for parameter in model.parameters():
            parameter.normal_(0, 0.3)
    folder = tmp_path_factory.mktemp("esm") / "tiny-esm2"
    model.save_pretrained(folder)
    return folder, model


def _selfsup_model(folder):
    tokenizer = make_tokenizer("protein")
    config, weights = read_esm_folder(folder)
    encoder = build_backbone({"name": "esm2-8m", **esm_backbone_options(config)}, 0, 0, tokenizer)
    encoder.load_state_dict(esm_encoder_state(config, weights))
    head = LanguageModelHead(encoder, tied=True)
    head.load_state_dict(esm_head_state(weights))
    return tokenizer, encoder.eval(), head.eval()


@pytest.mark.parametrize("with_masks", [False, True])
def test_logits_and_residue_embeddings_match_huggingface_on_real_proteins(esm_folder, with_masks):
    folder, reference = esm_folder
    tokenizer, encoder, head = _selfsup_model(folder)
    proteins = [s[:70] for s in load_split("swissprot-loc", "test").sequences[:6]]
    batch = tokenizer.encode_batch(proteins)  # right-padded: lengths differ
    ids = batch.ids.clone()
    if with_masks:  # token dropout's rescaling depends on each sequence's share of <mask>
        ids[:, 3:9:2] = tokenizer.mask_id
    # our ids are ESM's for the first 29 tokens; <mask> is 29 here, 32 there
    esm_ids = torch.where(ids == tokenizer.mask_id, torch.tensor(32), ids)
    with torch.no_grad():
        hf = reference(input_ids=esm_ids, attention_mask=batch.attention_mask.long(),
                       output_hidden_states=True)
        states = encoder.forward_tokens(ids, batch.attention_mask)
        logits = head(states)
    real = batch.attention_mask
    torch.testing.assert_close(states[real], hf.hidden_states[-1][real], atol=1e-5, rtol=0)
    ours_in_esm_order = torch.tensor(list(range(29)) + [32])
    torch.testing.assert_close(logits[real], hf.logits[real][:, ours_in_esm_order],
                               atol=1e-5, rtol=0)


def test_a_folder_that_is_not_esm2_is_named(tmp_path, esm_folder):
    with pytest.raises(DataError, match="no config.json there. selfsup never downloads"):
        read_esm_folder(tmp_path)
    folder, _ = esm_folder
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(ConfigError, match="holds a 'bert' model"):
        read_esm_folder(tmp_path)


def test_domain_adaptive_pretraining_continues_esm2_on_our_proteins_and_is_evaluated(esm_folder,
                                                                                     tmp_path):
    """hf:FOLDER → continued MLM on swissprot-loc (tiny) → evaluated; the run starts exactly at
    ESM's weights (its first logits are HF's), and config.yaml records the checkpoint's shape."""
    from conftest import TINY_MLM
    from selfsup.evaluate.run import evaluate_run
    from selfsup.run_config import load_config
    from selfsup.run_dir import RunDir
    from selfsup.train import Trainer
    from selfsup.train.parts import build_parts

    folder, reference = esm_folder
    sets = [item for item in TINY_MLM if not item.startswith("backbone.")] + [
        "data.dataset=swissprot-loc", f"backbone.init=hf:{folder}", "eval.seeds=1",
        "eval.label_fractions=[1.0]", "eval.tsne_samples=50", f"out={tmp_path / 'adapted'}"]
    config = load_config(None, sets)
    assert config.backbone["name"] == "transformer-small"  # mlm's preset, at ESM's shape:
    assert config.backbone["dim"] == 32 and config.backbone["depth"] == 2
    assert config.backbone["token_dropout"] and config.backbone["norm_eps"] == 1e-12

    parts = build_parts(config)
    tokenizer = make_tokenizer("protein")
    batch = tokenizer.encode_batch(["MKVLAAGIW", "ACDEFGHIKLMNPQ"])
    with torch.no_grad():
        ours = parts.method.head(parts.method.encoder.forward_tokens(batch.ids, batch.attention_mask))
        hf = reference(input_ids=batch.ids, attention_mask=batch.attention_mask.long()).logits
    real = batch.attention_mask
    torch.testing.assert_close(ours[real], hf[real][:, list(range(29)) + [32]], atol=1e-5, rtol=0)

    run = Trainer(config).fit()
    result = evaluate_run(run, device="cpu", log=lambda line: None)
    assert "composition" in result["baselines"] and 0 < result["knn_top1"] <= 1
    saved = RunDir(run).load_config().backbone
    assert saved["dim"] == 32 and saved["init"] == f"hf:{folder}"


def test_the_hf_export_is_the_inverse_of_the_reading(esm_folder):
    from selfsup.backbones.hf_esm import esm_export

    folder, reference = esm_folder
    _, encoder, head = _selfsup_model(folder)
    config, weights = esm_export(encoder, head)
    original = {k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta",
                                                                          "LayerNorm.bias"): v
                for k, v in read_esm_folder(folder)[1].items()}
    rows = list(range(29)) + [32]
    for key, value in weights.items():
        if key in ("esm.embeddings.word_embeddings.weight", "lm_head.decoder.weight",
                   "lm_head.bias"):
            torch.testing.assert_close(value[rows], original.get(
                key, original["esm.embeddings.word_embeddings.weight"])[rows], atol=0, rtol=0)
        else:
            torch.testing.assert_close(value, original[key], atol=0, rtol=0)
    assert config["layer_norm_eps"] == 1e-12 and config["token_dropout"] is True


def test_a_trained_run_exported_as_hf_gives_selfsup_s_logits_in_transformers(esm_folder, tmp_path):
    from conftest import TINY_MLM
    from selfsup.apps.export import export_run
    from selfsup.run_config import load_config
    from selfsup.train import Trainer
    from selfsup.train.checkpoint import load_checkpoint, load_encoder

    folder, _ = esm_folder
    sets = [item for item in TINY_MLM if not item.startswith("backbone.")] + [
        "data.dataset=swissprot-loc", f"backbone.init=hf:{folder}", f"out={tmp_path / 'run'}"]
    run = Trainer(load_config(None, sets)).fit()  # two steps: the weights moved off ESM's
    files = export_run(run, "hf", tmp_path / "hf")
    assert [p.name for p in files] == ["config.json", "model.safetensors", "README.md"]
    model = transformers.EsmForMaskedLM.from_pretrained(tmp_path / "hf").eval()

    encoder, _ = load_encoder(run)
    head = LanguageModelHead(encoder, tied=True)
    state = load_checkpoint(run / "checkpoints" / "last.pt")["method"]
    head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
    tokenizer = make_tokenizer("protein")
    batch = tokenizer.encode_batch([s[:50] for s in load_split("swissprot-loc", "test").sequences[:5]])
    with torch.no_grad():
        ours = head(encoder.eval().forward_tokens(batch.ids, batch.attention_mask))
        theirs = model(input_ids=batch.ids, attention_mask=batch.attention_mask.long()).logits
    real = batch.attention_mask
    torch.testing.assert_close(theirs[real][:, list(range(29)) + [32]], ours[real], atol=1e-5,
                               rtol=0)
