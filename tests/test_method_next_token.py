"""Tests of next-token prediction: shifted targets, the causal loss, logs and learning."""

from __future__ import annotations

import pytest
import torch
from method_helpers import assert_loss_falls, step_losses

from selfsup.backbones import build_backbone
from selfsup.errors import ConfigError
from selfsup.methods import build_method
from selfsup.methods.next_token import next_token_targets
from selfsup.tokenize import IGNORE_LABEL, DnaTokenizer, ProteinTokenizer
from selfsup.views.sequence_recipes import make_sequence_views

PROTEIN = ProteinTokenizer()
SEQUENCES = ["MKVLAAGIVGLLLAVSA", "PEPTIDE", "ACDEFGHIKLMNPQRSTVWY"]


def tiny_next_token(vocab_size: int = PROTEIN.vocab_size, causal: bool = True, **options):
    torch.manual_seed(0)
    encoder = build_backbone({"name": "transformer-tiny", "vocab_size": vocab_size, "dim": 32,
                              "depth": 1, "ffn_dim": 64, "causal": causal}, 0, 0)
    return build_method({"name": "next-token", **options}, encoder)


def test_targets_are_the_next_ids_with_padding_ignored():
    ids = torch.tensor([[0, 5, 6, 2, 1, 1], [0, 7, 8, 9, 10, 2]])
    expected = torch.tensor([[5, 6, 2, IGNORE_LABEL, IGNORE_LABEL], [7, 8, 9, 10, 2]])
    assert torch.equal(next_token_targets(ids, ids != 1), expected)


def test_loss_is_the_mean_next_token_cross_entropy():
    method = tiny_next_token()
    batch = PROTEIN.encode_batch(SEQUENCES)
    captured = {}
    method.head.register_forward_hook(lambda module, args, out: captured.update(logits=out))
    out = method([batch.ids])
    logits, ids, mask = captured["logits"].detach().double(), batch.ids, batch.attention_mask
    terms = [torch.logsumexp(logits[b, t], 0) - logits[b, t, ids[b, t + 1]]
             for b in range(ids.shape[0]) for t in range(ids.shape[1] - 1) if mask[b, t + 1]]
    torch.testing.assert_close(out.loss.double(), torch.stack(terms).mean())
    assert len(terms) == sum(len(s) + 1 for s in SEQUENCES)  # every residue and the <eos>
    torch.testing.assert_close(out.logs["perplexity"], out.loss.detach().exp())
    scored = next_token_targets(ids, mask) != IGNORE_LABEL
    accuracy = (captured["logits"].argmax(-1)[scored] == ids[:, 1:][scored]).float().mean()
    torch.testing.assert_close(out.logs["next_token_accuracy"], accuracy)


def test_a_prediction_never_sees_its_target():
    """Changing token t + 1 (and later) leaves the logits at positions ≤ t unchanged."""
    method = tiny_next_token().eval()
    ids = PROTEIN.encode_batch(["MKVLAAGIVGLL"]).ids
    changed = ids.clone()
    changed[0, 6:-1] = PROTEIN.index["W"]
    captured = []
    method.head.register_forward_hook(lambda module, args, out: captured.append(out))
    with torch.no_grad():
        method([ids]), method([changed])
    assert torch.equal(captured[0][:, :5], captured[1][:, :5])  # logits of positions 0..4
    assert not torch.allclose(captured[0][:, 5:], captured[1][:, 5:])


def test_a_bidirectional_encoder_is_rejected():
    with pytest.raises(ConfigError, match="backbone.causal=true"):
        tiny_next_token(causal=False)


def test_defaults_make_a_causal_transformer():
    from selfsup.run_config import load_config

    config = load_config(None, ["method.name=next-token"])
    assert config.backbone["causal"] is True and config.views == {}
    assert config.optim.name == "adamw"


def test_loss_falls_on_a_tiny_synthetic_set():
    """Periodic DNA sequences: after a few steps the next base is predictable from the last ones."""
    dna = DnaTokenizer()
    generator = torch.Generator().manual_seed(0)
    motifs = ["ACGGT", "TTGCA", "GATC"]
    sequences = [(motifs[i % 3] * 8)[int(torch.randint(4, (1,), generator=generator)):][:30]
                 for i in range(12)]
    method = tiny_next_token(vocab_size=dna.vocab_size)
    optimizer = torch.optim.Adam(method.parameters(), lr=3e-3)
    views = make_sequence_views("tokens", dna, {})
    batch = dna.encode_batch(sequences)
    losses = step_losses(method, optimizer, lambda: views(batch, generator))
    assert_loss_falls(losses, margin=0.3)


def test_a_backbone_without_a_causal_mode_is_refused_by_name():
    from selfsup.backbones import build_backbone
    from selfsup.errors import ConfigError
    from selfsup.methods import build_method

    encoder = build_backbone({"name": "bytenet-tiny", "vocab_size": 30}, 0, 0)
    with pytest.raises(ConfigError, match="bytenet-tiny backbone has no causal mode"):
        build_method({"name": "next-token"}, encoder)
