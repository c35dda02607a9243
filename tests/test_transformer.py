"""Tests of the token Transformer: padding, causal mask, rotary positions, checkpointing, presets."""

from __future__ import annotations

import math

import pytest
import torch

from selfsup.backbones import build_backbone
from selfsup.backbones.transformer import (
    LanguageModelHead, RotaryEmbedding, TransformerEncoder, TransformerOptions,
)
from selfsup.errors import ConfigError, DataError
from selfsup.tokenize import ProteinTokenizer

PROTEIN = ProteinTokenizer()
SEQUENCES = ["MKVLAAGIVGLLL", "PEPTIDE", "ACDEFGHIKLMNPQRSTVWY"]


def tiny(**options) -> TransformerEncoder:
    torch.manual_seed(0)
    defaults = dict(vocab_size=PROTEIN.vocab_size, dim=32, depth=2, num_heads=4, ffn_dim=64)
    return TransformerEncoder(TransformerOptions(**{**defaults, **options})).eval()


def with_extra_padding(ids: torch.Tensor, extra: int) -> torch.Tensor:
    pads = torch.full((ids.shape[0], extra), PROTEIN.pad_id, dtype=ids.dtype)
    return torch.cat([ids, pads], dim=1)


# ---------------------------------------------------------------- padding


@pytest.mark.parametrize("options", [
    dict(positions="rotary", pool="mean"), dict(positions="learned", pool="mean"),
    dict(positions="rotary", pool="cls"), dict(positions="rotary", pool="mean", causal=True),
])
def test_padding_never_changes_a_sequences_embedding(options):
    encoder = tiny(**options)
    batch = PROTEIN.encode_batch(SEQUENCES)
    with torch.no_grad():
        alone = [encoder(PROTEIN.encode_batch([s]).ids) for s in SEQUENCES]  # no padding at all
        padded = encoder(batch.ids, batch.attention_mask)
        more = encoder(with_extra_padding(batch.ids, 7))  # mask derived from <pad>
        tokens = encoder.forward_tokens(batch.ids, batch.attention_mask)
        more_tokens = encoder.forward_tokens(with_extra_padding(batch.ids, 7))
    torch.testing.assert_close(padded, torch.cat(alone), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(more, padded, atol=1e-5, rtol=1e-5)
    real = batch.attention_mask
    torch.testing.assert_close(more_tokens[:, : real.shape[1]][real], tokens[real], atol=1e-5, rtol=1e-5)


def test_ignoring_the_mask_would_change_the_embedding():
    """The padding test can fail: attending to pads (mask all True) changes the features."""
    encoder = tiny()
    ids = with_extra_padding(PROTEIN.encode_batch(["MKVL"]).ids, 6)
    with torch.no_grad():
        masked = encoder(ids)
        unmasked = encoder(ids, torch.ones_like(ids, dtype=torch.bool))
    assert not torch.allclose(masked, unmasked, atol=1e-4)


def test_token_batch_input_equals_ids_and_mask():
    encoder = tiny()
    batch = PROTEIN.encode_batch(SEQUENCES)
    with torch.no_grad():
        assert torch.equal(encoder(batch), encoder(batch.ids, batch.attention_mask))


# ---------------------------------------------------------------- causal mask


def test_causal_mask_blocks_the_future():
    encoder = tiny()
    ids = PROTEIN.encode_batch(["MKVLAAGIVGLL"]).ids
    t = 5
    changed = ids.clone()
    changed[0, t + 1:-1] = PROTEIN.index["W"]  # every token after t but the <eos>
    with torch.no_grad():
        before = encoder.forward_tokens(ids, causal=True)
        after = encoder.forward_tokens(changed, causal=True)
        bidirectional = encoder.forward_tokens(ids), encoder.forward_tokens(changed)
    assert torch.equal(before[:, : t + 1], after[:, : t + 1])
    assert not torch.allclose(before[:, t + 1:], after[:, t + 1:])
    # without the causal mask the past does see the change
    assert not torch.allclose(bidirectional[0][:, : t + 1], bidirectional[1][:, : t + 1])


# ---------------------------------------------------------------- rotary positions


def test_rotary_matches_the_rotation_formula_for_one_channel_pair():
    """Head width 2: one pair rotated by angle = position × base^0 = position (radians)."""
    rotary = RotaryEmbedding(head_dim=2)
    x = torch.tensor([[1.0, 0.5]]).repeat(4, 1)  # (L=4, 2)
    cos, sin = rotary.angles(4, torch.device("cpu"))
    out = RotaryEmbedding.rotate(x, cos, sin)
    for position in range(4):
        c, s = math.cos(position), math.sin(position)
        expected = torch.tensor([1.0 * c - 0.5 * s, 1.0 * s + 0.5 * c])
        torch.testing.assert_close(out[position], expected)


def test_rotary_scores_depend_only_on_relative_position():
    head_dim, length = 8, 12
    rotary = RotaryEmbedding(head_dim)
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(head_dim, generator=generator).expand(length, head_dim)  # same content everywhere
    k = torch.randn(head_dim, generator=generator).expand(length, head_dim)
    cos, sin = rotary.angles(length, torch.device("cpu"))
    scores = RotaryEmbedding.rotate(q, cos, sin) @ RotaryEmbedding.rotate(k, cos, sin).T
    for shift in range(1, 4):  # S[m, n] = S[m + s, n + s]
        torch.testing.assert_close(scores[shift:, shift:], scores[:-shift, :-shift], atol=1e-5, rtol=1e-5)
    offsets = torch.diagonal(scores, 0), torch.diagonal(scores, 3)
    assert not torch.allclose(offsets[0][0], offsets[1][0])  # a different offset, another score
    torch.testing.assert_close(scores.diagonal(), (q[0] @ k[0]).expand(length))  # offset 0: unrotated


def test_learned_positions_reject_longer_inputs():
    encoder = tiny(positions="learned", max_positions=8)
    with pytest.raises(DataError, match="max_positions=8"):
        encoder(torch.full((1, 9), 5))


# ---------------------------------------------------------------- checkpointing, options, presets


def test_gradient_checkpointing_gives_the_same_gradients():
    plain, checkpointed = tiny(), tiny(grad_checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    batch = PROTEIN.encode_batch(SEQUENCES)
    grads = []
    for encoder in (plain, checkpointed):
        encoder.train()
        encoder(batch).pow(2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5)


def test_dropout_acts_in_training_only():
    encoder = tiny(dropout=0.5)
    ids = PROTEIN.encode_batch(SEQUENCES).ids
    with torch.no_grad():
        assert torch.equal(encoder(ids), encoder(ids))  # eval: deterministic
        encoder.train()
        assert not torch.allclose(encoder(ids), encoder(ids))


@pytest.mark.parametrize("options, message", [
    (dict(vocab_size=0), "vocab_size is not set"), (dict(dim=30), "multiple of"),
    (dict(positions="sine"), "positions"), (dict(pool="max"), "pool"),
    (dict(num_heads=16, dim=48), "even head width"),
])
def test_bad_options_raise_named_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        tiny(**options)


def test_esm2_preset_has_esm2_8m_shape_and_parameter_count():
    with torch.device("meta"):  # shapes only: no time spent initialising 7 M weights
        encoder = build_backbone({"name": "esm2-8m", "vocab_size": 33}, 0, 0)
    dim, ffn, depth, vocab = 320, 1280, 6, 33
    attention = (dim * 3 * dim + 3 * dim) + (dim * dim + dim)  # qkv and output projections
    feed_forward = (dim * ffn + ffn) + (ffn * dim + dim)
    per_block = attention + feed_forward + 4 * dim  # two LayerNorms
    expected = depth * per_block + vocab * dim + 2 * dim  # blocks, token embedding, final norm
    assert sum(p.numel() for p in encoder.parameters()) == expected
    assert (encoder.out_dim, len(encoder.blocks), encoder.blocks[0].num_heads) == (320, 6, 20)
    assert 7.3e6 < expected < 7.5e6  # ESM-2 8M without its LM head and unused position table


def test_config_rebuilds_the_same_encoder():
    encoder = build_backbone({"name": "transformer-tiny", "vocab_size": PROTEIN.vocab_size, "dim": 32,
                              "ffn_dim": 48, "positions": "learned"}, 0, 0).eval()
    rebuilt = build_backbone(encoder.config(), 0, 0).eval()
    rebuilt.load_state_dict(encoder.state_dict())
    ids = PROTEIN.encode_batch(SEQUENCES).ids
    with torch.no_grad():
        assert torch.equal(encoder(ids), rebuilt(ids))
    assert encoder.config()["name"] == "transformer-tiny" and encoder.config()["dim"] == 32


def test_tied_language_model_head_shares_the_embedding():
    encoder = tiny()
    tied, untied = LanguageModelHead(encoder, tied=True), LanguageModelHead(encoder, tied=False)
    assert tied.decoder.weight is encoder.token_embedding.weight
    assert untied.decoder.weight is not encoder.token_embedding.weight
    logits = tied(encoder.forward_tokens(PROTEIN.encode_batch(SEQUENCES).ids))
    assert logits.shape == (3, 22, PROTEIN.vocab_size)


def test_a_causal_encoder_cannot_pool_its_cls_token():
    # <cls> comes first, so under a causal mask it would be the same vector for every sequence
    from selfsup.backbones.transformer import TransformerEncoder, TransformerOptions

    with pytest.raises(ConfigError, match="pool=mean"):
        TransformerEncoder(TransformerOptions(vocab_size=30, causal=True, pool="cls"))
