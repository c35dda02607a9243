"""End-to-end: pretrain sequence methods with the Trainer, then evaluate the run."""

from __future__ import annotations

import json

import pytest

from selfsup.run_config import load_config
from selfsup.errors import DataError
from selfsup.evaluate.run import evaluate_run
from selfsup.train import Trainer

TINY_SEQUENCES = [
    "backbone.name=transformer-tiny", "backbone.dim=32", "backbone.depth=1", "backbone.ffn_dim=64",
    "data.max_length=48", "train.batch_size=32", "train.epochs=2", "train.steps_per_epoch=3",
    "train.health_samples=512", "train.probe_every=1", "train.probe_train_samples=256",
    "train.probe_test_samples=256", "train.progress=false", "train.device=cpu",
    "optim.warmup_epochs=0.5", "eval.seeds=1", "eval.label_fractions=[1.0]", "eval.tsne_samples=100",
    "eval.batch_size=256", "eval.knn_k=20",
]


def run(tmp_path, *extra):
    config = load_config(None, TINY_SEQUENCES + [f"out={tmp_path / 'run'}", *extra])
    try:
        run_dir = Trainer(config).fit()
    except DataError as error:
        pytest.skip(str(error))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return run_dir, records


def test_mlm_on_swissprot(tmp_path):
    run_dir, records = run(tmp_path, "method.name=mlm", "data.dataset=swissprot-loc")
    kinds = {r["kind"] for r in records}
    assert {"step", "epoch", "health", "probe", "held_out"} <= kinds
    held_out = [r for r in records if r["kind"] == "held_out"]
    assert all(r["perplexity"] > 1 for r in held_out)
    spec = json.loads((run_dir / "encoder.json").read_text())
    assert spec["tokenizer"] == {"name": "protein", "k": 1} and spec["backbone"]["vocab_size"] == 30


def test_dna_contrastive_rc_invariant_trains(tmp_path):
    run_dir, records = run(tmp_path, "method.name=dna-contrastive", "method.rc_invariant=true",
                           "data.dataset=16s-reads", "data.max_length=160")
    assert any(r["kind"] == "health" for r in records)
    spec = json.loads((run_dir / "encoder.json").read_text())
    assert spec["backbone"]["rc_invariant"] is True  # the saved encoder stays strand-invariant


@pytest.mark.slow  # evaluation encodes the 50k reads of 16s-reads several times: ~2 min on 2 cores
def test_dna_contrastive_rc_invariant_then_evaluate(tmp_path):
    run_dir, records = run(tmp_path, "method.name=dna-contrastive", "method.rc_invariant=true",
                           "data.dataset=16s-reads", "data.max_length=160")
    assert any(r["kind"] == "health" for r in records)
    result = evaluate_run(run_dir, dataset=None, log=lambda message: None,
                          eval_config=None)
    assert set(result["baselines"]) == {"kmer4", "canonical_kmer4", "random_init"}
    assert result["rc_consistency"]["ssl"]["rc_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert result["rc_consistency"]["canonical_kmer4"]["rc_cosine"] == pytest.approx(1.0)


@pytest.mark.slow  # learns the BPE vocabulary and encodes 11,293 posts: ~45 s on 2 busy cores
def test_mlm_on_20newsgroups_saves_its_tokeniser(tmp_path):
    from selfsup.tokenize import make_tokenizer
    from selfsup.train.checkpoint import load_encoder

    run_dir, records = run(tmp_path, "method.name=mlm", "data.dataset=20newsgroups",
                           "data.vocab_size=1024", "data.max_length=64")
    assert all(r["perplexity"] > 1 for r in records if r["kind"] == "held_out")
    _, spec = load_encoder(run_dir)
    assert spec["tokenizer"]["name"] == "text" and spec["backbone"]["vocab_size"] == 1024
    tokenizer = make_tokenizer(**spec["tokenizer"])  # the run dir's tokenizer.json
    assert tokenizer.vocab_size == 1024
    assert tokenizer.config()["sha256"] == spec["tokenizer"]["sha256"]


@pytest.mark.parametrize("backbone", ["bytenet-tiny", "bag-tiny"])
def test_new_backbones_pretrain_then_embed_and_finetune(tmp_path, backbone):
    """The CNN and the bag go through the whole product like the Transformer: contrastive
    pretraining, the saved encoder reloaded for embed and for fine-tuning."""
    import numpy as np

    from selfsup.evaluate.finetune import FinetuneConfig, finetune_run
    from selfsup.apps.embeddings import embed_run

    tiny = [item for item in TINY_SEQUENCES if not item.startswith("backbone.")]
    config = load_config(None, tiny + [f"backbone.name={backbone}", "method.name=seq-contrastive",
                                       "data.dataset=swissprot-loc", f"out={tmp_path / 'run'}"])
    run_dir = Trainer(config).fit()
    spec = json.loads((run_dir / "encoder.json").read_text())
    assert spec["backbone"]["name"] == backbone
    features = embed_run(run_dir, None, "test", tmp_path / "test.npy", device="cpu")
    assert features.shape[0] > 1000 and np.isfinite(features).all()
    settings = FinetuneConfig(epochs=1, min_steps=2, batch_size=64, seeds=1)
    result = finetune_run(run_dir, fractions=[0.01], settings=settings, device="cpu",
                          log=lambda message: None)
    entry = result["datasets"]["swissprot-loc"]["full"]["pretrained"]
    (fraction, scores), = entry.items()  # the one fraction asked for
    assert float(fraction) == 0.01 and scores["num_test"] == features.shape[0]
    assert len(scores["accuracy"]) == 1 and 0.0 <= scores["mean"] <= 1.0
