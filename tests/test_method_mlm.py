"""Tests of masked language modelling: the loss counts chosen positions only, logs, and learning."""

from __future__ import annotations

import pytest
import torch
from method_helpers import assert_loss_falls, step_losses

from selfsup.backbones import build_backbone
from selfsup.errors import ConfigError, DataError
from selfsup.methods import build_method
from selfsup.tokenize import IGNORE_LABEL, ProteinTokenizer
from selfsup.views.sequence_recipes import make_sequence_views

PROTEIN = ProteinTokenizer()
SEQUENCES = ["MKVLAAGIVGLLLAVSA", "PEPTIDEPEPTIDE", "ACDEFGHIKLMNPQRSTVWY", "MSTNPKPQRKTKRNTNRRPQ"]


def tiny_mlm(**options):
    torch.manual_seed(0)
    encoder = build_backbone({"name": "transformer-tiny", "vocab_size": PROTEIN.vocab_size,
                              "dim": 32, "depth": 1, "ffn_dim": 64}, 0, 0)
    return build_method({"name": "mlm", **options}, encoder)


def masked_views(seed: int = 0, rate: float = 0.3):
    views = make_sequence_views("mlm", PROTEIN, {"rate": rate})
    return views(PROTEIN.encode_batch(SEQUENCES), torch.Generator().manual_seed(seed))


def test_mlm_recipe_masks_by_the_bert_rule():
    ids = PROTEIN.encode_batch(SEQUENCES).ids
    inputs, labels = masked_views()
    chosen = labels != IGNORE_LABEL
    assert chosen.any() and not chosen.all()
    assert torch.equal(labels[chosen], ids[chosen])  # labels are the original tokens
    assert torch.equal(inputs[~chosen], ids[~chosen])  # nothing else changes
    assert not chosen[ids == PROTEIN.pad_id].any() and not chosen[:, 0].any()  # no special chosen


def test_loss_is_cross_entropy_over_chosen_positions_only():
    method = tiny_mlm(score_chosen_only=False)  # full (B, L, V) logits, to see every position
    inputs, labels = masked_views()
    captured = {}
    method.head.register_forward_hook(lambda module, args, out: captured.update(logits=out))
    out = method([inputs, labels])
    logits = captured["logits"]
    logits.retain_grad()
    out.loss.backward()
    # independent formula: mean over chosen (b, t) of −log softmax(logits[b, t])[label]
    terms = []
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1]):
            if labels[b, t] != IGNORE_LABEL:
                row = logits[b, t].detach().double()
                terms.append(torch.logsumexp(row, 0) - row[labels[b, t]])
    torch.testing.assert_close(out.loss.double(), torch.stack(terms).mean())
    chosen = labels != IGNORE_LABEL
    assert logits.grad[~chosen].abs().max() == 0  # unchosen positions get no gradient
    assert logits.grad[chosen].abs().sum(dim=-1).min() > 0


def test_logs_masked_accuracy_and_perplexity():
    method = tiny_mlm(score_chosen_only=False)
    inputs, labels = masked_views()
    captured = {}
    method.head.register_forward_hook(lambda module, args, out: captured.update(logits=out))
    out = method([inputs, labels])
    chosen = labels != IGNORE_LABEL
    expected_accuracy = (captured["logits"].argmax(-1)[chosen] == labels[chosen]).float().mean()
    torch.testing.assert_close(out.logs["masked_accuracy"], expected_accuracy)
    torch.testing.assert_close(out.logs["perplexity"], out.loss.detach().exp())
    assert out.embeddings.shape == (len(SEQUENCES), 32)


def test_scoring_only_the_chosen_positions_gives_the_same_loss_and_gradients():
    inputs, labels = masked_views()
    results = []
    for chosen_only in (False, True):
        method = tiny_mlm(score_chosen_only=chosen_only)
        out = method([inputs, labels])
        out.loss.backward()
        grads = {name: p.grad.clone() for name, p in method.named_parameters() if p.grad is not None}
        results.append((out.loss.detach(), out.logs["masked_accuracy"], grads))
    (full_loss, full_acc, full_grads), (picked_loss, picked_acc, picked_grads) = results
    torch.testing.assert_close(picked_loss, full_loss)
    torch.testing.assert_close(picked_acc, full_acc)
    assert full_grads.keys() == picked_grads.keys()
    for name in full_grads:
        torch.testing.assert_close(picked_grads[name], full_grads[name], msg=name)


def test_chosen_only_scoring_is_on_by_default_when_the_vocabulary_is_wider_than_the_model():
    assert not tiny_mlm().scores_chosen_only  # 30 protein tokens < 32 dims
    narrow = build_backbone({"name": "transformer-tiny", "vocab_size": PROTEIN.vocab_size,
                             "dim": 16, "depth": 1, "ffn_dim": 32, "num_heads": 2}, 0, 0)
    assert build_method({"name": "mlm"}, narrow).scores_chosen_only


def test_tied_head_shares_the_embedding_and_untied_does_not():
    tied, untied = tiny_mlm(), tiny_mlm(tie_embeddings=False)
    assert tied.head.decoder.weight is tied.encoder.token_embedding.weight
    extra = PROTEIN.vocab_size * 32
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731  (shared once)
    assert count(untied) - count(tied) == extra


def test_embed_gives_the_pooled_encoder_features():
    method = tiny_mlm().eval()
    batch = PROTEIN.encode_batch(SEQUENCES)
    with torch.no_grad():
        expected = method.encoder.pool_tokens(method.encoder.forward_tokens(batch.ids), batch.attention_mask)
        torch.testing.assert_close(method.embed(batch), expected)
        assert set(method.health_embeddings(batch.ids)) == {"encoder"}


def test_image_backbone_is_rejected_by_name():
    encoder = build_backbone({"name": "small-cnn", "widths": [8]}, 1, 8)
    with pytest.raises(ConfigError, match="mlm needs a token backbone.*transformer-small"):
        build_method({"name": "mlm"}, encoder)


def _real_or_synthetic_sequences(count: int, length: int) -> list[str]:
    try:
        from selfsup.data import load_split

        source = load_split("swissprot-loc", "train")
        return [s[:length] for s in source.sequences if len(s) >= length][:count]
    except DataError:
        pytest.skip("swissprot-loc is not installed (sudo apt-get install predictnls)")


def test_loss_falls_on_real_proteins():
    """15 Adam steps on 16 Swiss-Prot proteins cropped to 48 residues, fresh masks each step."""
    sequences = _real_or_synthetic_sequences(16, 48)
    method = tiny_mlm()
    optimizer = torch.optim.Adam(method.parameters(), lr=3e-3)
    views = make_sequence_views("mlm", PROTEIN, {})
    batch = PROTEIN.encode_batch(sequences)
    generator = torch.Generator().manual_seed(0)
    losses = step_losses(method, optimizer, lambda: views(batch, generator))
    # starts near log(30) ≈ 3.4 (uniform over the vocabulary); the amino-acid frequencies alone
    # bring it below log(20) ≈ 3.0
    assert_loss_falls(losses, margin=0.25)
