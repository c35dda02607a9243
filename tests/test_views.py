"""Tests of the batched image views: each operation against its formula or a worked example,
the recipes' contracts (shapes, range, determinism, sample order) and their option handling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

from selfsup.errors import ConfigError, DataError
from selfsup.registry import VIEW_RECIPES
from selfsup.views import ImageViews, ViewSpec, augment, make_views, normalize, to_float, to_input
from selfsup.views import image as ops

FEW = settings(max_examples=8, deadline=None)
LUMA = (0.299, 0.587, 0.114)


def generator(seed: int = 0, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def random_images(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator(seed))


def every_op_spec(size: tuple[int, int]) -> ViewSpec:
    """A view that runs every operation on about half the samples."""
    return ViewSpec(size=size, crop_scale=(0.1, 1.0), flip_prob=0.5, jitter_prob=0.5,
                    grayscale_prob=0.5, blur_prob=0.5, solarize_prob=0.5)


# ---------------------------------------------------------------------------------------------
# conversions


def test_to_input_is_the_fixed_normalisation():
    images = torch.tensor([0, 51, 128, 255], dtype=torch.uint8).view(1, 1, 2, 2)
    expected = (torch.tensor([0, 51, 128, 255]) / 255.0 - 0.5) / 0.25
    assert to_float(images).dtype == torch.float32
    torch.testing.assert_close(to_input(images).flatten(), expected)
    assert to_input(images).min() == -2 and to_input(images).max() == 2


def test_to_float_rejects_non_uint8():
    with pytest.raises(DataError, match="uint8"):
        to_float(torch.rand(1, 3, 4, 4))


# ---------------------------------------------------------------------------------------------
# recipe contracts


@FEW
@given(
    batch=st.integers(1, 3),
    channels=st.sampled_from([1, 3]),
    height=st.integers(4, 20),
    width=st.integers(4, 20),
    out_h=st.integers(2, 12),
    out_w=st.integers(2, 12),
    seed=st.integers(0, 2**31),
)
# a blurred pixel an ulp above 1, then solarised: once -1.2e-7 (found by hypothesis)
@example(batch=2, channels=1, height=4, width=4, out_h=2, out_w=11, seed=427113352)
def test_views_keep_shape_dtype_device_and_range(batch, channels, height, width, out_h, out_w, seed):
    x = to_float(random_images((batch, channels, height, width), seed))
    view = augment(x, every_op_spec((out_h, out_w)), generator(seed))
    assert view.shape == (batch, channels, out_h, out_w)
    assert view.dtype == torch.float32 and view.device == x.device
    assert view.min() >= 0 and view.max() <= 1
    normalised = normalize(view)
    assert normalised.min() >= -2 and normalised.max() <= 2


@pytest.mark.parametrize("recipe", ["simclr", "byol"])
@pytest.mark.parametrize("channels", [1, 3])
def test_recipe_makes_two_different_normalised_views(recipe, channels):
    maker = make_views(recipe, (channels, 16, 16), {"size": [12, 10]})
    views = maker(random_images((4, channels, 16, 16)), generator())
    assert maker.num_views == len(views) == 2
    for view in views:
        assert view.shape == (4, channels, 12, 10) and view.dtype == torch.float32
        assert view.min() >= -2 and view.max() <= 2
    assert not torch.equal(views[0], views[1])


def test_same_seed_same_views_other_seed_other_views():
    maker = make_views("simclr", (3, 16, 16), {})
    images = random_images((4, 3, 16, 16))
    first, again, other = (maker(images, generator(seed)) for seed in (7, 7, 8))
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], other[0])


def distinct_constant_images(count: int, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images, their values): sample i is the constant image of value i."""
    values = torch.randperm(256, generator=generator(3))[:count].to(torch.uint8)
    return values.view(-1, 1, 1, 1).expand(-1, 3, side, side).contiguous(), values.float() / 255


def test_sample_order_is_kept():
    # crops and flips of a constant image are that constant, so sample i of every view must
    # still hold sample i's constant
    images, values = distinct_constant_images(32, 16)
    maker = make_views("simclr", (3, 16, 16), {"size": 8, "jitter_prob": 0, "grayscale_prob": 0})
    expected = normalize(values).view(-1, 1, 1, 1).expand(-1, 3, 8, 8)
    for view in maker(images, generator()):
        torch.testing.assert_close(view, expected, atol=1e-5, rtol=0)


def test_views_made_as_one_batch_keep_their_own_probabilities():
    # BYOL's two views are made as one stacked batch; with solarisation never in view 1 and
    # always in view 2, each view must show its own probability, sample by sample
    images, values = distinct_constant_images(32, 16)
    maker = make_views("byol", (3, 16, 16), {"jitter_prob": 0, "grayscale_prob": 0,
                                            "solarize_probs": [0.0, 1.0]})
    first, second = maker(images, generator())
    plain = values.view(-1, 1, 1, 1).expand(-1, 3, 16, 16)
    torch.testing.assert_close(first, normalize(plain), atol=1e-5, rtol=0)
    torch.testing.assert_close(second, normalize(ops.solarize(plain)), atol=1e-5, rtol=0)


def test_blockwise_probabilities():
    assert ops.blockwise([0.3, 0.3], 4, torch.device("cpu")) == 0.3
    per_sample = ops.blockwise([0.0, 1.0], 3, torch.device("cpu"))
    assert torch.equal(per_sample, torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0]))
    x = torch.rand(6, 1, 2, 2, generator=generator(20))
    flipped = ops.random_horizontal_flip(x, generator(), p=per_sample)
    assert torch.equal(flipped[:3], x[:3]) and torch.equal(flipped[3:], x[3:].flip(-1))


def test_augment_refuses_to_stack_views_of_different_shapes():
    x = torch.rand(4, 3, 8, 8)
    small, large = ViewSpec(size=(4, 4), crop_scale=(0.5, 1)), ViewSpec(size=(8, 8), crop_scale=(0.5, 1))
    with pytest.raises(ValueError, match="probabilities"):
        augment(x, [small, large], generator())


def test_views_ignore_the_callers_autocast():
    maker = ImageViews((3, 16, 16), [every_op_spec((12, 12))] * 2)
    images = random_images((4, 3, 16, 16))
    plain = maker(images, generator(5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = maker(images, generator(5))
    for a, b in zip(plain, autocast):
        assert b.dtype == torch.float32 and torch.equal(a, b)


def test_none_recipe_returns_plain_inputs():
    images = random_images((2, 1, 8, 8))
    maker = make_views("none", (1, 8, 8), {"num_views": 3})
    views = maker(images, generator())
    assert maker.num_views == len(views) == 3
    for view in views:
        assert torch.equal(view, to_input(images))


def test_recipes_are_registered():
    assert {"simclr", "byol", "none"} <= set(VIEW_RECIPES.names())


def test_view_maker_rejects_wrong_images():
    maker = make_views("simclr", (3, 16, 16), {})
    with pytest.raises(DataError, match="uint8"):
        maker(torch.rand(2, 3, 16, 16), generator())
    with pytest.raises(DataError, match=r"\(B, 3, H, W\)"):
        maker(random_images((2, 1, 16, 16)), generator())
    with pytest.raises(DataError, match="C = 1"):
        make_views("simclr", (4, 16, 16), {})


# ---------------------------------------------------------------------------------------------
# recipe options


def test_unknown_option_and_recipe_are_named():
    with pytest.raises(ConfigError, match="views.blur"):
        make_views("simclr", (3, 32, 32), {"blur": 0.5})
    with pytest.raises(ConfigError, match="nope"):
        make_views("nope", (3, 32, 32), {})


@pytest.mark.parametrize("options, key", [
    ({"crop_scale": [0.5, 0.2]}, "crop_scale"),
    ({"crop_scale": [0.0, 1.0]}, "crop_scale"),
    ({"crop_scale": 0.5}, "crop_scale"),
    ({"flip_prob": 1.5}, "flip_prob"),
    ({"size": 0}, "size"),
    ({"jitter_strength": 6.0}, "jitter_strength"),
])
def test_invalid_options_are_named(options, key):
    with pytest.raises(ConfigError, match=key):
        make_views("simclr", (3, 32, 32), options)


def test_small_images_get_milder_defaults():
    small = make_views("simclr", (3, 32, 32), {}).specs
    large = make_views("simclr", (3, 96, 96), {}).specs
    assert small[0].crop_scale == (0.2, 1.0) and small[0].blur_prob == 0.0
    assert large[0].crop_scale == (0.08, 1.0) and large[0].blur_prob == 0.5
    assert small[0].size == (32, 32)
    overridden = make_views("simclr", (3, 32, 32), {"blur_prob": 0.3, "crop_scale": [0.5, 1]}).specs
    assert overridden[0].blur_prob == 0.3 and overridden[0].crop_scale == (0.5, 1.0)


def test_simclr_jitter_strength_scales_all_four_strengths():
    spec = make_views("simclr", (3, 32, 32), {"jitter_strength": 0.5}).specs[0]
    assert spec.jitter == pytest.approx((0.2, 0.2, 0.2, 0.05))
    assert spec.jitter_prob == 0.8 and spec.grayscale_prob == 0.2 and spec.solarize_prob == 0.0


def test_byol_views_are_asymmetric():
    first, second = make_views("byol", (3, 96, 96), {}).specs
    assert (first.blur_prob, first.solarize_prob) == (1.0, 0.0)
    assert (second.blur_prob, second.solarize_prob) == (0.1, 0.2)
    assert first.jitter == pytest.approx((0.4, 0.4, 0.2, 0.1))
    small = make_views("byol", (3, 32, 32), {}).specs
    assert [s.blur_prob for s in small] == [0.0, 0.0] and small[1].solarize_prob == 0.2


# ---------------------------------------------------------------------------------------------
# crops


def test_crop_of_an_integer_box_at_its_size_is_the_exact_sub_image():
    x = torch.rand(2, 3, 10, 12, generator=generator(1))
    boxes = torch.tensor([[2.0, 3.0, 4.0, 5.0], [0.0, 7.0, 10.0, 5.0]])  # top, left, height, width
    out = ops.crop_resize(x, boxes, (4, 5))
    torch.testing.assert_close(out[0], x[0, :, 2:6, 3:8], atol=1e-5, rtol=0)
    whole = ops.crop_resize(x, boxes, (10, 5))
    torch.testing.assert_close(whole[1], x[1, :, :, 7:12], atol=1e-5, rtol=0)


def test_crop_downsampled_by_two_averages_pixel_blocks():
    x = torch.rand(1, 1, 12, 12, generator=generator(2))
    out = ops.crop_resize(x, torch.tensor([[2.0, 4.0, 8.0, 8.0]]), (4, 4))
    torch.testing.assert_close(out, F.avg_pool2d(x[:, :, 2:10, 4:12], 2), atol=1e-5, rtol=0)


def test_crop_of_a_gradient_samples_the_box_exactly():
    # bilinear interpolation reproduces a linear image exactly, so any box (fractional too) must
    # return the gradient at the output pixel centres mapped into the box
    height, width = 9, 11
    rows = torch.arange(height, dtype=torch.float32).view(-1, 1)
    cols = torch.arange(width, dtype=torch.float32).view(1, -1)
    image = ((0.03 * rows + 0.05 * cols) * torch.ones(1, 1, 1, 1)).expand(1, 1, height, width)
    top, left, box_h, box_w, out_h, out_w = 1.5, 2.0, 6.0, 7.5, 4, 3
    out = ops.crop_resize(image, torch.tensor([[top, left, box_h, box_w]]), (out_h, out_w))
    centre_rows = top + (torch.arange(out_h) + 0.5) * box_h / out_h - 0.5
    centre_cols = left + (torch.arange(out_w) + 0.5) * box_w / out_w - 0.5
    expected = 0.03 * centre_rows.view(-1, 1) + 0.05 * centre_cols.view(1, -1)
    torch.testing.assert_close(out[0, 0], expected, atol=1e-5, rtol=0)


def test_full_scale_crop_of_a_square_image_is_the_identity():
    x = torch.rand(8, 3, 16, 16, generator=generator(4))
    out = ops.random_resized_crop(x, generator(), size=(16, 16), scale=(1.0, 1.0))
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


@FEW
@given(height=st.integers(1, 40), width=st.integers(1, 40), low=st.floats(0.05, 1.0),
       ratio=st.sampled_from([(3 / 4, 4 / 3), (1.2, 2.0)]), seed=st.integers(0, 2**31))
def test_crop_boxes_follow_torchvision_semantics(height, width, low, ratio, seed):
    scale = (low, 1.0)
    boxes = ops.sample_crop_boxes(generator(seed), 64, height, width, scale, ratio)
    top, left, box_h, box_w = boxes.unbind(1)
    assert torch.equal(boxes, boxes.round())
    assert (top >= 0).all() and (left >= 0).all() and (box_h >= 1).all() and (box_w >= 1).all()
    assert (top + box_h <= height).all() and (left + box_w <= width).all()
    # a drawn box rounds sqrt(area * r) and sqrt(area / r): undo the rounding with intervals
    area_high, area_low = (box_w + 0.5) * (box_h + 0.5), (box_w - 0.5) * (box_h - 0.5)
    ratio_high, ratio_low = (box_w + 0.5) / (box_h - 0.5), (box_w - 0.5) / (box_h + 0.5)
    drawn = ((area_high >= scale[0] * height * width) & (area_low <= height * width)
             & (ratio_high >= ratio[0]) & (ratio_low <= ratio[1]))
    # otherwise torchvision's fallback: the centred whole image, cut to the nearest allowed ratio
    fallback_h = min(height, round(width / ratio[0])) if width / height < ratio[0] else height
    fallback_w = min(width, round(height * ratio[1])) if width / height > ratio[1] else width
    fallback = ((box_h == fallback_h) & (box_w == fallback_w)
                & (top == (height - fallback_h) // 2) & (left == (width - fallback_w) // 2))
    assert (drawn | fallback).all()


def test_crop_positions_cover_the_image():
    boxes = ops.sample_crop_boxes(generator(), 2000, 32, 32, (0.2, 0.3))
    top, left, box_h, box_w = boxes.unbind(1)
    assert top.min() == 0 and left.min() == 0
    assert (top + box_h).max() == 32 and (left + box_w).max() == 32
    share = box_h * box_w / 32**2
    assert 0.2 < share.mean() < 0.3


# ---------------------------------------------------------------------------------------------
# flip, grayscale, colour


def test_flip_with_probability_one_and_zero():
    x = torch.rand(3, 3, 5, 6, generator=generator(5))
    assert torch.equal(ops.random_horizontal_flip(x, generator(), p=1.0), torch.flip(x, dims=[-1]))
    assert torch.equal(ops.random_horizontal_flip(x, generator(), p=0.0), x)


def test_flip_is_drawn_per_sample():
    x = torch.arange(4, dtype=torch.float32).view(1, 1, 1, 4).expand(1000, 1, 2, 4)
    out = ops.random_horizontal_flip(x, generator(), p=0.5)
    flipped = (out[:, 0, 0, 0] == 3).float()
    assert torch.equal(out[flipped.bool()], torch.flip(x[flipped.bool()], dims=[-1]))
    assert torch.equal(out[~flipped.bool()], x[~flipped.bool()])
    assert 0.3 < flipped.mean() < 0.7


def test_grayscale_has_equal_channels_and_the_luma_formula():
    x = torch.rand(4, 3, 5, 5, generator=generator(6))
    out = ops.random_grayscale(x, generator(), p=1.0)
    luma = LUMA[0] * x[:, 0] + LUMA[1] * x[:, 1] + LUMA[2] * x[:, 2]
    for channel in range(3):
        torch.testing.assert_close(out[:, channel], luma)
    gray_input = torch.rand(2, 1, 5, 5)
    assert torch.equal(ops.random_grayscale(gray_input, generator(), p=1.0), gray_input)


def test_brightness_factor_is_applied_exactly():
    x = torch.rand(3, 3, 4, 4, generator=generator(7))
    factors = torch.tensor([0.0, 0.5, 1.7])
    expected = torch.stack([(x[i] * f).clamp(0, 1) for i, f in enumerate(factors.tolist())])
    torch.testing.assert_close(ops.adjust_brightness(x, factors), expected)


def test_brightness_jitter_draws_one_factor_per_sample_in_range():
    x = torch.rand(200, 3, 4, 4, generator=generator(8)) * 0.5 + 0.1  # no clamping at 1.4×
    out = ops.color_jitter(x, generator(), p=1.0, brightness=0.4, contrast=0, saturation=0, hue=0)
    ratio = out / x
    per_sample = ratio.flatten(1)
    torch.testing.assert_close(per_sample, per_sample[:, :1].expand_as(per_sample))
    assert per_sample.min() >= 0.6 - 1e-6 and per_sample.max() <= 1.4 + 1e-6
    assert per_sample.min() < 0.7 and per_sample.max() > 1.3
    assert torch.equal(ops.color_jitter(x, generator(), p=0.0), x)


def test_contrast_blends_towards_the_mean_luma():
    x = torch.rand(2, 3, 4, 4, generator=generator(9))
    mean = (LUMA[0] * x[:, 0] + LUMA[1] * x[:, 1] + LUMA[2] * x[:, 2]).mean(dim=(1, 2))
    factors = torch.tensor([0.0, 0.5])
    out = ops.adjust_contrast(x, factors)
    torch.testing.assert_close(out[0], mean[0].expand(3, 4, 4))
    torch.testing.assert_close(out[1], (0.5 * x[1] + 0.5 * mean[1]).clamp(0, 1))


def test_saturation_zero_is_grayscale_and_one_is_identity():
    x = torch.rand(2, 3, 4, 4, generator=generator(10))
    gray = ops.random_grayscale(x, generator(), p=1.0)
    torch.testing.assert_close(ops.adjust_saturation(x, torch.zeros(2)), gray)
    assert torch.equal(ops.adjust_saturation(x, torch.ones(2)), x)


def test_zero_hue_shift_is_the_identity():
    x = torch.rand(3, 3, 4, 4, generator=generator(11))
    assert torch.equal(ops.adjust_hue(x, torch.zeros(3)), x)


def test_gray_images_keep_their_value_under_saturation_and_hue():
    gray = torch.rand(4, 1, 5, 5, generator=generator(12)).expand(4, 3, 5, 5).contiguous()
    torch.testing.assert_close(ops.adjust_saturation(gray, torch.tensor([0.0, 0.5, 1.3, 2.0])), gray)
    torch.testing.assert_close(ops.adjust_hue(gray, torch.tensor([-0.5, -0.1, 0.25, 0.4])), gray,
                               atol=1e-6, rtol=0)
    jittered = ops.color_jitter(gray, generator(), p=1.0, brightness=0, contrast=0, saturation=0.9,
                                hue=0.5)
    torch.testing.assert_close(jittered, gray, atol=1e-6, rtol=0)


def test_hue_shift_keeps_luma_and_inverts():
    # muted colours stay inside the RGB cube under any rotation, so nothing is clamped
    x = 0.5 + 0.1 * (torch.rand(2, 3, 4, 4, generator=generator(13)) - 0.5)
    shift = torch.tensor([0.1, -0.3])
    rotated = ops.adjust_hue(x, shift)
    assert (rotated - x).abs().max() > 1e-3
    torch.testing.assert_close(ops.rgb_to_gray(rotated), ops.rgb_to_gray(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(ops.adjust_hue(rotated, -shift), x, atol=1e-6, rtol=0)
    torch.testing.assert_close(ops.adjust_hue(x, torch.ones(2)), x, atol=1e-6, rtol=0)


def test_hue_turns_the_way_hsv_does():
    # the YIQ rotation approximates HSV's hue shift (checked against the standard library's
    # colorsys): it must be close for a small shift, and closer than the opposite turn
    import colorsys

    x = 0.3 + 0.4 * torch.rand(100, 3, 1, 1, generator=generator(21))
    shift = 0.05
    expected = []
    for r, g, b in x.view(100, 3).tolist():
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        expected.append(colorsys.hsv_to_rgb((h + shift) % 1, s, v))
    expected = torch.tensor(expected).view(100, 3, 1, 1)
    error = (ops.adjust_hue(x, torch.full((100,), shift)) - expected).abs().mean()
    opposite = (ops.adjust_hue(x, torch.full((100,), -shift)) - expected).abs().mean()
    assert error < 0.03 and error < 0.75 * opposite


def test_colour_ops_leave_one_channel_images_to_brightness_and_contrast():
    x = torch.rand(3, 1, 4, 4, generator=generator(14))
    out = ops.color_jitter(x, generator(), p=1.0, brightness=0, contrast=0, saturation=0.9, hue=0.4)
    assert torch.equal(out, x)


# ---------------------------------------------------------------------------------------------
# blur and solarisation


@pytest.mark.parametrize("side, size", [(8, 3), (28, 3), (32, 3), (96, 9), (224, 23)])
def test_blur_kernel_is_odd_and_about_a_tenth_of_the_side(side, size):
    assert ops.blur_kernel_size(side) == size


def test_blur_matches_a_direct_two_dimensional_gaussian():
    x = torch.rand(2, 3, 7, 9, generator=generator(15))
    sigma = torch.tensor([0.8, 1.6])
    out = ops.gaussian_blur(x, sigma, kernel_size=(5, 5))
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect")
    for i, s in enumerate(sigma.tolist()):
        taps = np.exp(-np.arange(-2, 3) ** 2 / (2 * s * s))
        kernel = np.outer(taps, taps) / np.outer(taps, taps).sum()
        expected = np.zeros((3, 7, 9))
        for dy in range(5):
            for dx in range(5):
                expected += kernel[dy, dx] * padded[i, :, dy:dy + 7, dx:dx + 9]
        np.testing.assert_allclose(out[i].numpy(), expected, atol=1e-5)


def test_blur_keeps_constants_and_the_mean_of_a_periodic_image():
    constant = torch.full((2, 3, 9, 9), 0.37)
    torch.testing.assert_close(ops.random_gaussian_blur(constant, generator(), p=1.0), constant)
    cols = torch.arange(40, dtype=torch.float32)
    stripes = (0.5 + 0.4 * torch.sin(2 * math.pi * cols / 8)).expand(4, 1, 40, 40)
    blurred = ops.random_gaussian_blur(stripes, generator(), p=1.0, sigma=(1.0, 2.0))
    assert blurred.std() < stripes.std()  # it does blur
    torch.testing.assert_close(blurred.mean(dim=(1, 2, 3)), stripes.mean(dim=(1, 2, 3)), atol=1e-2,
                               rtol=0)


def test_blur_with_sigma_zero_is_the_identity():
    x = torch.rand(2, 1, 6, 6, generator=generator(16))
    assert torch.equal(ops.gaussian_blur(x, torch.zeros(2)), x)


def test_solarize_with_probability_one_matches_the_formula():
    x = torch.rand(3, 3, 6, 6, generator=generator(17))
    expected = torch.where(x >= 0.5, 1 - x, x)
    assert torch.equal(ops.random_solarize(x, generator(), p=1.0), expected)
    assert torch.equal(ops.random_solarize(x, generator(), p=0.0), x)
    worked = torch.tensor([0.0, 0.25, 0.3, 0.75, 1.0]).view(1, 1, 1, 5)
    expected = torch.tensor([0.0, 0.25, 0.7, 0.25, 0.0]).view(1, 1, 1, 5)
    torch.testing.assert_close(ops.solarize(worked, threshold=0.3), expected)
    torch.testing.assert_close(ops.random_solarize(worked, generator(), p=1.0, threshold=0.3), expected)


# ---------------------------------------------------------------------------------------------
# devices


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_generator_on_another_device_is_named():
    with pytest.raises(DataError, match="generator"):
        ops.random_horizontal_flip(torch.rand(2, 3, 4, 4, device="cuda"), generator(), p=0.5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_views_run_on_cuda_and_are_reproducible():
    images = random_images((16, 3, 32, 32)).cuda()
    maker = ImageViews((3, 32, 32), [every_op_spec((24, 24))] * 2)
    maker(images, generator(0, "cuda"))  # copies the small colour matrices to the GPU, once
    torch.cuda.set_sync_debug_mode("error")  # from now on, any host-device sync raises
    try:
        first = maker(images, generator(1, "cuda"))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    again = maker(images, generator(1, "cuda"))
    for a, b in zip(first, again):
        assert a.device == images.device and a.shape == (16, 3, 24, 24)
        assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_crops_stay_exact_with_tf32_matmuls():
    x = torch.rand(2, 3, 10, 12, device="cuda")
    boxes = torch.tensor([[2.0, 3.0, 4.0, 5.0], [1.0, 0.0, 8.0, 9.0]], device="cuda")
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        out = ops.crop_resize(x, boxes, (4, 5))
        shifted = ops.adjust_hue(x, torch.zeros(2, device="cuda"))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    torch.testing.assert_close(out[0], x[0, :, 2:6, 3:8], atol=1e-5, rtol=0)
    assert torch.equal(shifted, x)
