"""Tests of the ByteNet (CARP) dilated CNN encoder: shapes, padding, receptive field, options,
masked-LM training and reverse-complement invariance."""

from __future__ import annotations

import pytest
import torch

from selfsup.backbones import build_backbone
from selfsup.backbones.bytenet import ByteNetEncoder, ByteNetOptions, dilation_schedule
from selfsup.backbones.token_encoder import token_backbone_names
from selfsup.errors import ConfigError
from selfsup.methods import build_method
from selfsup.tokenize import DnaTokenizer, ProteinTokenizer
from selfsup.views.sequence import reverse_complement
from selfsup.views.sequence_recipes import make_sequence_views

PROTEIN = ProteinTokenizer()
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
SEQUENCES = ["MKVLAAGIVGLLLAVSA", "PEPTIDEPEPTIDE", "ACDEFGHIKLMNPQRSTVWY", "MSTNPKPQRKTKRNTNRRPQ"]


def tiny(**options) -> ByteNetEncoder:
    """3 blocks (dilations 1, 2, 4; receptive field 29): wider than the short test sequences, so
    padding that leaked into a convolution would show."""
    torch.manual_seed(0)
    defaults = dict(vocab_size=PROTEIN.vocab_size, dim=32, depth=3)
    return ByteNetEncoder(ByteNetOptions(**{**defaults, **options})).eval()


def random_protein(length: int, seed: int) -> str:
    generator = torch.Generator().manual_seed(seed)
    return "".join(AMINO_ACIDS[i] for i in torch.randint(0, 20, (length,), generator=generator))


# ---------------------------------------------------------------- shapes and presets


def test_output_shapes_for_variable_lengths():
    encoder = tiny()
    with torch.no_grad():
        for length in (1, 2, 7, 50):  # shorter and longer than the receptive field
            ids = torch.randint(4, 24, (3, length))
            assert encoder.forward_tokens(ids).shape == (3, length, 32)
            assert encoder(ids).shape == (3, 32)
        batch = PROTEIN.encode_batch(SEQUENCES)
        assert encoder.forward_tokens(batch).shape == (*batch.ids.shape, 32)
        assert torch.isfinite(encoder(batch)).all()


def test_presets_are_registered_token_backbones_with_carps_dilations():
    assert {"bytenet-tiny", "bytenet-small", "carp-600k"} <= set(token_backbone_names())
    small = build_backbone({"name": "bytenet-small", "vocab_size": PROTEIN.vocab_size}, 0, 0)
    assert small.dilations == (1, 2, 4, 8, 1, 2, 4, 8) and small.receptive_field == 1 + 4 * 30
    carp = build_backbone({"name": "carp-600k", "vocab_size": PROTEIN.vocab_size}, 0, 0)
    assert carp.dilations == 2 * (1, 2, 4, 8, 16, 32, 64, 128) and carp.out_dim == 128
    # CARP-600k: ~600k parameters in its blocks (d_model 128, convolutions on 64 channels)
    assert 590_000 < sum(p.numel() for p in carp.blocks.parameters()) < 610_000
    assert dilation_schedule(5, 1) == (1, 1, 1, 1, 1)
    rebuilt = build_backbone(small.config(), 0, 0)  # the config a checkpoint stores rebuilds it
    assert rebuilt.preset == "bytenet-small" and rebuilt.dilations == small.dilations


@pytest.mark.parametrize("options, message", [
    (dict(dim=0), "must be positive"),
    (dict(depth=0), "must be positive"),
    (dict(dim=33), "must be even"),
    (dict(kernel_size=4), "kernel_size must be odd"),
    (dict(kernel_size=1), "kernel_size must be odd and at least 3"),
    (dict(max_dilation=6), "power of two"),
    (dict(max_dilation=0), "power of two"),
    (dict(dropout=1.0), "dropout"),
    (dict(vocab_size=0), "vocab_size is not set"),
])
def test_bad_options_raise_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        tiny(**options)


# ---------------------------------------------------------------- padding


def test_padding_never_changes_a_sequences_features():
    encoder = tiny()
    short, long = "MKVLAG", random_protein(80, seed=1)  # 8 vs 82 tokens with <cls>, <eos>
    alone = PROTEIN.encode_batch([short])
    batch = PROTEIN.encode_batch([short, long])
    real = alone.ids.shape[1]
    assert batch.ids.shape[1] > real + encoder.receptive_field  # padding reaches past the field
    with torch.no_grad():
        pooled_alone, tokens_alone = encoder(alone), encoder.forward_tokens(alone)
        pooled_batch, tokens_batch = encoder(batch), encoder.forward_tokens(batch)
    torch.testing.assert_close(pooled_batch[:1], pooled_alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tokens_batch[:1, :real], tokens_alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled_batch[1:], encoder(PROTEIN.encode_batch([long])),
                               atol=1e-5, rtol=1e-5)


def test_treating_padding_as_tokens_would_change_the_features():
    """The padding test can fail: with the mask all True, padded positions reach the convs."""
    encoder = tiny()
    batch = PROTEIN.encode_batch(["MKVLAG", random_protein(80, seed=1)])
    with torch.no_grad():
        masked = encoder.forward_tokens(batch)
        unmasked = encoder.forward_tokens(batch.ids, torch.ones_like(batch.attention_mask))
    real = batch.attention_mask
    assert not torch.allclose(masked[real], unmasked[real], atol=1e-4)


# ---------------------------------------------------------------- receptive field


def test_receptive_field_matches_what_a_position_sees():
    encoder = tiny()
    half = encoder.receptive_field // 2
    assert encoder.receptive_field == 1 + 4 * (1 + 2 + 4) and half == 14
    ids = torch.tensor([[PROTEIN.index[c] for c in random_protein(61, seed=2)]])
    centre = 30
    with torch.no_grad():
        reference = encoder.forward_tokens(ids)[0, centre]
        for distance in range(1, half + 5):
            for side in (-1, 1):
                changed = ids.clone()
                where = centre + side * distance
                changed[0, where] = PROTEIN.index["W" if ids[0, where] != PROTEIN.index["W"] else "A"]
                seen = not torch.equal(encoder.forward_tokens(changed)[0, centre], reference)
                assert seen == (distance <= half), f"a change at offset {side * distance}"


# ---------------------------------------------------------------- masked language modelling


def test_mlm_trains_with_bytenet():
    torch.manual_seed(0)
    encoder = build_backbone({"name": "bytenet-tiny", "vocab_size": PROTEIN.vocab_size}, 0, 0)
    method = build_method({"name": "mlm"}, encoder)
    assert method.head.decoder.weight is encoder.token_embedding.weight  # tied
    views = make_sequence_views("mlm", PROTEIN, {"rate": 0.3})
    inputs, labels = views(PROTEIN.encode_batch(SEQUENCES), torch.Generator().manual_seed(0))
    out = method([inputs, labels])
    assert torch.isfinite(out.loss) and out.embeddings.shape == (len(SEQUENCES), 32)
    out.loss.backward()
    for block in encoder.blocks:
        assert block.conv.weight.grad is not None and block.conv.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- reverse complement


def test_rc_invariant_encoder_gives_a_read_and_its_reverse_complement_equal_features():
    dna = DnaTokenizer()
    torch.manual_seed(0)
    encoder = ByteNetEncoder(ByteNetOptions(vocab_size=dna.vocab_size, pad_id=dna.pad_id)).eval()
    reads = dna.encode_batch(["ACGTTGCAAGGCTTAN", "GGGATC"])
    other_strand = reverse_complement(reads.ids, dna)
    with torch.no_grad():
        one_strand = encoder(reads), encoder(other_strand)
        encoder.make_rc_invariant(dna)
        both_strands = encoder(reads), encoder(other_strand)
    assert not torch.allclose(*one_strand, atol=1e-4)  # a plain encoder tells the strands apart
    torch.testing.assert_close(*both_strands)
    rebuilt = build_backbone(encoder.config(), 0, 0)  # the option survives a checkpoint's config
    assert rebuilt.rc_invariant and rebuilt.preset == "bytenet-tiny"
