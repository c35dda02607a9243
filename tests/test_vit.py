"""Vision Transformer: shapes, pooling, token dropping, mask tokens, position interpolation,
checkpointing, attention maps and options."""

from __future__ import annotations

import pytest
import torch
import torch.utils.checkpoint

from selfsup.backbones import build_backbone
from selfsup.backbones.vit import (
    SelfAttention,
    VisionTransformer,
    interpolate_pos_embed,
)
from selfsup.errors import ConfigError, DataError

TINY = {"embed_dim": 16, "depth": 2, "num_heads": 2}


def tiny_vit(**overrides) -> VisionTransformer:
    torch.manual_seed(0)
    options = {"in_channels": 1, "img_size": 28, "patch_size": 7, **TINY, **overrides}
    return VisionTransformer(**options).eval()


@pytest.mark.parametrize("patch", [2, 4, 7])
@pytest.mark.parametrize("size", [28, 32])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_through_the_registry(patch, size, channels):
    net = build_backbone({"name": "vit-tiny", "img_size": size, "patch_size": patch, **TINY},
                         channels, size)
    x = torch.randn(2, channels, size, size)
    grid = size // patch  # a partial last row/column of pixels is ignored
    assert net.out_dim == 16 and net.grid == (grid, grid)
    assert net(x).shape == (2, 16)
    assert net.forward_tokens(x).shape == (2, 1 + grid * grid, 16)


@pytest.mark.parametrize("name, dim, heads", [("vit-tiny", 192, 3), ("vit-small", 384, 6),
                                              ("vit-base", 768, 12)])
def test_presets_and_overrides(name, dim, heads):
    net = build_backbone({"name": name, "depth": 1}, 3, 32)
    assert net.out_dim == dim and net.blocks[0].attn.num_heads == heads
    assert len(net.blocks) == 1 and net.patch_size == 4 and net.grid == (8, 8)


def test_unknown_and_invalid_options_are_named():
    with pytest.raises(ConfigError, match="unknown config key backbone.patch"):
        build_backbone({"name": "vit-tiny", "patch": 4}, 3, 32)
    with pytest.raises(ConfigError, match="multiple of backbone.num_heads"):
        build_backbone({"name": "vit-tiny", "embed_dim": 10, "num_heads": 3}, 3, 32)
    with pytest.raises(ConfigError, match="backbone.pool"):
        build_backbone({"name": "vit-tiny", "pool": "max"}, 3, 32)


def test_init_follows_the_vit_recipe():
    net = tiny_vit(embed_dim=64, img_size=32, patch_size=2)
    for name, param in net.named_parameters():
        if name.endswith("bias"):
            assert torch.all(param == 0), name
        elif "norm" in name:
            assert torch.all(param == 1), name
        elif name in ("pos_embed", "cls_token") or param.ndim == 2:  # linears
            assert param.abs().max() <= 2 * 0.02, name  # truncated at two standard deviations
    big = torch.cat([net.pos_embed.flatten()] + [b.mlp[0].weight.flatten() for b in net.blocks])
    assert abs(big.std().item() - 0.02 * 0.88) < 0.002  # std of N(0, σ²) truncated at ±2σ ≈ 0.88σ


def test_mean_pooling_is_the_mean_of_patch_tokens_and_differs_from_cls():
    cls_net, mean_net = tiny_vit(pool="cls"), tiny_vit(pool="mean")
    mean_net.load_state_dict(cls_net.state_dict())
    x = torch.randn(3, 1, 28, 28)
    tokens = cls_net.forward_tokens(x)
    torch.testing.assert_close(cls_net(x), tokens[:, 0])
    torch.testing.assert_close(mean_net(x), tokens[:, 1:].mean(dim=1))
    assert not torch.allclose(cls_net(x), mean_net(x), atol=1e-3)


def test_keep_all_in_order_equals_the_plain_output():
    net = tiny_vit()
    x = torch.randn(2, 1, 28, 28)
    keep = torch.arange(16).expand(2, -1)
    torch.testing.assert_close(net.forward_tokens(x, keep), net.forward_tokens(x))


def test_keep_permutes_tokens_per_sample():
    # Attention without a mask is permutation-equivariant, so keeping every patch in another order
    # (different per sample) must return the same tokens in that order.
    net = tiny_vit()
    x = torch.randn(2, 1, 28, 28)
    keep = torch.stack([torch.randperm(16), torch.randperm(16)])
    full = net.forward_tokens(x)
    out = net.forward_tokens(x, keep)
    torch.testing.assert_close(out[:, 0], full[:, 0])
    for b in range(2):
        torch.testing.assert_close(out[b, 1:], full[b, 1:][keep[b]])


def test_dropped_patches_do_not_influence_the_output():
    net = tiny_vit()
    x = torch.randn(2, 1, 28, 28)
    keep = torch.tensor([[0, 5, 10, 15], [3, 6, 9, 12]])
    out = net.forward_tokens(x, keep)
    assert out.shape == (2, 5, 16)

    changed = x.clone()
    patches = changed.view(2, 1, 4, 7, 4, 7)  # (B, C, row, pixel-row, column, pixel-column)
    for b in range(2):
        for index in range(16):
            if index not in keep[b]:
                patches[b, :, index // 4, :, index % 4, :] = torch.randn(1, 7, 7) * 10
    torch.testing.assert_close(net.forward_tokens(changed, keep), out)

    kept = changed.clone()  # control: changing a kept patch does change the output
    kept.view(2, 1, 4, 7, 4, 7)[0, :, 0, :, 0, :] += 5
    assert not torch.allclose(net.forward_tokens(kept, keep), out, atol=1e-3)


def random_patch_mask(batch: int = 2, num_patches: int = 16, seed: int = 0) -> torch.Tensor:
    """A (B, N) bool mask with masked and visible patches in every sample."""
    mask = torch.rand(batch, num_patches, generator=torch.Generator().manual_seed(seed)) < 0.4
    mask[:, 0], mask[:, 1] = True, False
    return mask


def test_masked_positions_embed_as_the_mask_token_plus_their_position():
    net = tiny_vit()  # 28 px, 7-px patches: a 4×4 grid, width 16
    x = torch.randn(2, 1, 28, 28)
    mask, token = random_patch_mask(), torch.randn(16)
    tokens = net.embed(x, mask=mask, mask_token=token)
    assert tokens.shape == (2, 1 + 16, 16)
    # Independently: the patch embedding is a linear map of each patch's 7×7 pixels.
    weight, bias, pos = net.patch_embed.weight.reshape(16, 49), net.patch_embed.bias, net.pos_embed[0]
    for b in range(2):
        torch.testing.assert_close(tokens[b, 0], net.cls_token[0, 0] + pos[0])
        for index in range(16):
            r, c = divmod(index, 4)
            if mask[b, index]:
                expected = token + pos[1 + index]
            else:
                expected = weight @ x[b, 0, 7 * r:7 * r + 7, 7 * c:7 * c + 7].reshape(49) + bias + pos[1 + index]
            torch.testing.assert_close(tokens[b, 1 + index], expected)


def test_without_a_mask_or_with_an_empty_one_the_output_is_unchanged():
    net = tiny_vit()
    x = torch.randn(2, 1, 28, 28)
    # the embedding as it was before masks existed: patches + positions behind the class token
    pos = net.pos_embed
    old = torch.cat([(net.cls_token + pos[:, :1]).expand(2, -1, -1),
                     net.patch_embed(x).flatten(2).transpose(1, 2) + pos[:, 1:]], dim=1)
    assert torch.equal(net.embed(x), old)
    nothing_masked = torch.zeros(2, 16, dtype=torch.bool)
    assert torch.equal(net.forward_tokens(x, mask=nothing_masked, mask_token=torch.randn(16)),
                       net.forward_tokens(x))


def test_masked_pixels_do_not_influence_the_output_and_every_position_stays():
    net = tiny_vit()
    x = torch.randn(2, 1, 28, 28)
    mask, token = random_patch_mask(), torch.randn(16)
    out = net.forward_tokens(x, mask=mask, mask_token=token)
    assert out.shape == (2, 1 + 16, 16)
    changed = x.clone()
    patches = changed.view(2, 1, 4, 7, 4, 7)  # (B, C, row, pixel-row, column, pixel-column)
    for b, index in mask.nonzero().tolist():
        patches[b, :, index // 4, :, index % 4, :] = torch.randn(1, 7, 7) * 10
    torch.testing.assert_close(net.forward_tokens(changed, mask=mask, mask_token=token), out)
    # control: a visible patch, or the token itself, does change the output
    changed.view(2, 1, 4, 7, 4, 7)[0, :, 0, :, 1, :] += 5  # patch 1 is visible in every sample
    assert not torch.allclose(net.forward_tokens(changed, mask=mask, mask_token=token), out, atol=1e-3)
    other_token = torch.randn(16)  # (not token + c: LayerNorm removes a constant shift)
    assert not torch.allclose(net.forward_tokens(x, mask=mask, mask_token=other_token), out, atol=1e-3)


def test_the_mask_token_is_trained_by_masked_positions_only():
    net = tiny_vit()
    x = torch.randn(2, 1, 28, 28)
    token = torch.randn(16, requires_grad=True)
    net.forward_tokens(x, mask=random_patch_mask(), mask_token=token).square().sum().backward()
    assert token.grad is not None and token.grad.abs().sum() > 0
    token.grad = None
    nothing_masked = torch.zeros(2, 16, dtype=torch.bool)
    net.forward_tokens(x, mask=nothing_masked, mask_token=token).square().sum().backward()
    assert torch.equal(token.grad, torch.zeros(16))


def test_bad_masks_and_missing_mask_tokens_are_named():
    net = tiny_vit()
    x = torch.randn(2, 1, 28, 28)
    with pytest.raises(DataError, match="mask_token of 16 values"):
        net.forward_tokens(x, mask=random_patch_mask())
    with pytest.raises(DataError, match="mask_token of 16 values"):
        net.forward_tokens(x, mask=random_patch_mask(), mask_token=torch.randn(8))
    with pytest.raises(DataError, match=r"shape \(B, N\) = \(2, 16\)"):
        net.forward_tokens(x, mask=random_patch_mask(num_patches=9), mask_token=torch.randn(16))
    with pytest.raises(DataError, match="bool"):
        net.forward_tokens(x, mask=random_patch_mask().long(), mask_token=torch.randn(16))


def test_interpolation_is_the_identity_at_the_same_size():
    pos = torch.randn(1, 1 + 16, 8)
    assert interpolate_pos_embed(pos, 4, (4, 4)) is pos


def test_interpolation_to_a_finer_grid():
    pos = torch.randn(1, 1 + 16, 8)
    resized = interpolate_pos_embed(pos, 4, 8)
    assert resized.shape == (1, 1 + 64, 8)
    torch.testing.assert_close(resized[:, 0], pos[:, 0])  # the class token has no position
    constant = torch.ones(1, 1 + 16, 8) * torch.arange(8.0)  # bicubic weights sum to one
    torch.testing.assert_close(interpolate_pos_embed(constant, 4, 8), torch.ones(1, 65, 8) * torch.arange(8.0))


def test_model_runs_at_a_new_resolution_with_interpolated_positions():
    net = tiny_vit()  # built for 28 px: a 4×4 grid of 7-px patches
    x = torch.randn(2, 1, 56, 56)
    assert net.forward_tokens(x).shape == (2, 1 + 64, 16)
    # Same as a model built for 56 px whose position embeddings are the interpolated ones.
    big = tiny_vit(img_size=56)
    state = net.state_dict()
    state["pos_embed"] = interpolate_pos_embed(net.pos_embed.detach(), 4, 8)
    big.load_state_dict(state)
    torch.testing.assert_close(net(x), big(x))


def test_gradient_checkpointing_matches_plain_blocks(monkeypatch):
    plain, checkpointed = tiny_vit().train(), tiny_vit(grad_checkpointing=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    calls = []
    original = torch.utils.checkpoint.checkpoint

    def counting_checkpoint(*args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting_checkpoint)
    x = torch.randn(2, 1, 28, 28)
    outputs = [net(x) for net in (plain, checkpointed)]
    assert calls == [False, False]  # one non-reentrant checkpoint per block
    torch.testing.assert_close(outputs[0], outputs[1])
    for out in outputs:
        out.square().sum().backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
    checkpointed.eval()(x)
    assert len(calls) == 2  # evaluation never checkpoints


def test_sdpa_attention_equals_explicit_softmax_attention():
    torch.manual_seed(0)
    attention = SelfAttention(dim=6, num_heads=2)
    x = torch.randn(2, 5, 6)
    q, k, v = (w.reshape(2, 5, 2, 3).transpose(1, 2) for w in attention.qkv(x).chunk(3, dim=-1))
    weights = torch.softmax(q @ k.transpose(-2, -1) / 3**0.5, dim=-1)
    expected = attention.proj((weights @ v).transpose(1, 2).reshape(2, 5, 6))
    torch.testing.assert_close(attention(x), expected)


def test_attention_maps_are_softmax_rows_of_the_cls_query():
    net = tiny_vit()
    x = torch.randn(2, 1, 28, 28)
    captured = {}
    net.blocks[-1].register_forward_pre_hook(lambda module, args: captured.update(tokens=args[0]))
    net(x)

    full = net.attention_maps(x, layer=-1, include_cls=True)
    patches = net.attention_maps(x)
    assert full.shape == (2, 2, 17) and patches.shape == (2, 2, 16)
    torch.testing.assert_close(full.sum(dim=-1), torch.ones(2, 2))
    torch.testing.assert_close(patches, full[..., 1:])

    block = net.blocks[-1]
    h = block.norm1(captured["tokens"])
    q, k, _ = block.attn.qkv(h).chunk(3, dim=-1)
    q_cls = q[:, 0].reshape(2, 2, 8)  # (B, heads, head_dim)
    k = k.reshape(2, 17, 2, 8)
    scores = torch.einsum("bhd,bnhd->bhn", q_cls, k) / 8**0.5
    torch.testing.assert_close(full, scores.softmax(dim=-1))
    with pytest.raises(ConfigError, match="attention layer 2"):
        net.attention_maps(x, layer=2)


def test_build_backbone_tells_the_vit_the_data_image_size():
    from selfsup.backbones import build_backbone

    net = build_backbone({"name": "vit-tiny", "depth": 1, "patch_size": 7}, 1, 28)
    assert net.grid == (4, 4) and net.num_patches == 16  # 28 px, not the 32-px default
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, net.out_dim)
