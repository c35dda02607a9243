"""Pretext tasks: rotation prediction (Gidaris et al. 2018) and relative patch position
(Doersch et al. 2015) — the transformations, the labels attached to them, the losses, training."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from selfsup.backbones import build_backbone
from selfsup.errors import ConfigError, DataError
from selfsup.methods import build_method
from selfsup.pretext import PatchGrid, all_rotations, crop_patches, hflip, rotate90
from selfsup.train import Trainer
from selfsup.train.metrics_log import read_metrics
from selfsup.views import make_views
from selfsup.views.image import to_input
from method_helpers import assert_learns_on_digits

# ---------------------------------------------------------------------------------- helpers


def tiny_run(tiny_config, method: str, *extra: str) -> list[dict]:
    """A whole tiny Trainer run; returns its metrics records after checking them."""
    config = tiny_config(f"method.name={method}", *extra)
    run = Trainer(config).fit()
    records = read_metrics(Path(run) / "metrics.jsonl")
    losses = [r["loss"] for r in records if r["kind"] in ("step", "epoch")]
    assert losses and all(math.isfinite(loss) for loss in losses)
    assert {r["embedding"] for r in records if r["kind"] == "health"} == {"encoder"}
    return records


class Scaled(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.scale * h


# ---------------------------------------------------------------------------------- rotation


def test_rotate90_turns_counter_clockwise_like_torch_rot90():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    # A quarter turn counter-clockwise: the top row (1, 2) becomes the left column, read upwards.
    assert torch.equal(rotate90(x, 1), torch.tensor([[2.0, 4.0], [1.0, 3.0]]).view(1, 1, 2, 2))
    y = torch.randn(3, 2, 5, 5)
    for k in range(-2, 6):
        assert torch.equal(rotate90(y, k), torch.rot90(y, k, dims=(-2, -1))), k
    assert torch.equal(rotate90(y, 4), y)
    assert torch.equal(rotate90(y, -1), rotate90(y, 3))


def test_rotate90_and_hflip_take_one_element_per_sample():
    x = torch.randn(6, 1, 4, 4)
    k = torch.tensor([0, 1, 2, 3, 5, -1])
    turned, mirrored = rotate90(x, k), hflip(x, k)
    for i in range(len(x)):
        assert torch.equal(turned[i], torch.rot90(x[i], int(k[i]), dims=(-2, -1)))
        assert torch.equal(mirrored[i], x[i].flip(-1) if int(k[i]) % 2 else x[i])


def test_rotate90_rejects_what_it_cannot_rotate():
    with pytest.raises(DataError, match="square"):
        rotate90(torch.zeros(2, 1, 4, 5), 1)
    with pytest.raises(DataError, match="one integer group element per sample"):
        rotate90(torch.zeros(2, 1, 4, 4), torch.tensor([1, 2, 3]))


def marker_images(batch: int = 3, side: int = 5) -> torch.Tensor:
    """Images dark but for a bright top-left pixel: where the pixel is tells the rotation."""
    x = torch.zeros(batch, 1, side, side)
    x[:, :, 0, 0] = 1.0
    return x


def test_all_rotations_labels_each_image_with_its_turn():
    side = 5
    corner_after_turns = {(0, 0): 0, (side - 1, 0): 1, (side - 1, side - 1): 2, (0, side - 1): 3}
    images, labels = all_rotations(marker_images(3, side))
    assert images.shape == (12, 1, side, side) and labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    for image, label in zip(images, labels):
        corner = tuple(int(i) for i in (image[0] == 1).nonzero()[0])
        assert corner_after_turns[corner] == label


class CornerEncoder(nn.Module):
    """Features: the image's corner pixels in the order top-left, bottom-left, bottom-right,
    top-right — where the top-left pixel lands after 0, 1, 2, 3 counter-clockwise quarter turns."""

    out_dim = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, 0, 0, 0], x[:, 0, -1, 0], x[:, 0, -1, -1], x[:, 0, 0, -1]], dim=1)


def rotation_method_with_corner_classifier(all_four: bool, scale: float):
    method = build_method({"name": "rotation", "all_rotations": all_four, "head_layers": 1},
                          CornerEncoder())
    method.classifier = Scaled(scale)  # logits = scale × corner pixels
    return method


def test_rotation_loss_is_cross_entropy_of_each_turn_against_its_label():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, size=(3, 1, 5, 5))
    scale = 2.0
    expected = []
    for image in images:
        for k in range(4):
            turned = np.rot90(image[0], k)  # numpy's rot90 also turns counter-clockwise
            logits = scale * np.array([turned[0, 0], turned[-1, 0], turned[-1, -1], turned[0, -1]])
            expected.append(np.log(np.exp(logits).sum()) - logits[k])
    method = rotation_method_with_corner_classifier(all_four=True, scale=scale)
    out = method([torch.tensor(images, dtype=torch.float32)])
    assert out.loss.item() == pytest.approx(np.mean(expected), rel=1e-5)


@pytest.mark.parametrize("all_four", [True, False])
def test_rotation_method_attaches_the_right_label_to_each_rotated_image(all_four):
    # The corner encoder recognises the marker's rotation perfectly, so with the right labels
    # the loss is that of a confident correct classifier: log(1 + 3·e^(−s)).
    scale = 10.0
    method = rotation_method_with_corner_classifier(all_four, scale)
    out = method([marker_images(8)])
    assert out.loss.item() == pytest.approx(math.log(1 + 3 * math.exp(-scale)), abs=1e-6)
    assert out.logs["accuracy"].item() == 1.0


def test_crop_flip_views_leave_colours_alone():
    levels = torch.tensor([0, 77, 200, 255], dtype=torch.uint8)
    flat = levels.view(4, 1, 1, 1).expand(4, 1, 8, 8).contiguous()  # one gray level per image
    views = make_views("crop-flip", (1, 8, 8), {})(flat, torch.Generator().manual_seed(0))
    assert len(views) == 1
    torch.testing.assert_close(views[0], to_input(flat))  # crops and flips keep a flat image


def test_rotation_loss_falls_on_digits():
    assert_learns_on_digits({"name": "rotation"}, batch=32)  # 4 rotations: 128 images a step


def test_rotation_trains_end_to_end(tiny_config):
    tiny_run(tiny_config, "rotation")


# ---------------------------------------------------------------------------------- patch position


def test_grid_fit_follows_doersch_proportions():
    grid = PatchGrid.fit(28, 28)
    assert (grid.patch_size, grid.gap, grid.jitter) == (7, 3, 1)  # the Fashion-MNIST defaults
    for side in range(4, 65):
        grid = PatchGrid.fit(side, side)
        assert grid.span <= side
        assert grid.gap == 0 or grid.gap - 2 * grid.jitter >= 1  # jitter never closes the gap


def test_grid_that_does_not_fit_is_refused():
    with pytest.raises(ConfigError, match="patch_size"):
        PatchGrid.fit(8, 8, patch_size=3)
    with pytest.raises(ConfigError, match="gap"):
        PatchGrid(28, 28, 7, -1, 0)
    method = build_method({"name": "patch-position", "patch_size": 4},
                          build_backbone({"name": "small-cnn", "widths": [4]}, 1, 8))
    with pytest.raises(ConfigError, match="more than the 8×8 images"):
        method([torch.zeros(2, 1, 8, 8)])


def cell_image(grid: PatchGrid) -> torch.Tensor:
    """A (1, 1, span, span) image whose pixels hold the index of their grid cell (row·3 + col,
    reading order) and −1 in the gaps between cells."""
    stride = grid.patch_size + grid.gap
    image = torch.full((grid.span, grid.span), -1.0)
    for row in range(3):
        for col in range(3):
            image[row * stride:row * stride + grid.patch_size,
                  col * stride:col * stride + grid.patch_size] = row * 3 + col
    return image.view(1, 1, grid.span, grid.span)


# Neighbour labels 0..7 name the cells in reading order without the centre (cell 4).
CELL_OF_LABEL = {0: 0, 1: 1, 2: 2, 3: 3, 4: 5, 5: 6, 6: 7, 7: 8}


def test_patch_labels_name_the_neighbour_cell():
    grid = PatchGrid(27, 27, patch_size=7, gap=3, jitter=0)  # the grid fills the image exactly
    image = cell_image(grid).expand(400, 1, 27, 27)
    pairs = grid.sample(len(image), image.device, torch.Generator().manual_seed(0))
    assert set(pairs.label.tolist()) == set(range(8))
    centre = crop_patches(image, pairs.centre, grid.patch_size)
    neighbour = crop_patches(image, pairs.neighbour, grid.patch_size)
    assert (centre == 4).all()
    expected = torch.tensor([CELL_OF_LABEL[int(label)] for label in pairs.label])
    assert (neighbour == expected.view(-1, 1, 1, 1)).all()


@pytest.mark.parametrize("grid", [PatchGrid.fit(28, 28), PatchGrid.fit(8, 8), PatchGrid(30, 29, 7, 3, 1),
                                  PatchGrid(40, 40, 8, 6, 2)])
def test_patches_stay_inside_the_image_and_apart(grid):
    pairs = grid.sample(3000, torch.device("cpu"), torch.Generator().manual_seed(1))
    last = torch.tensor([grid.height - grid.patch_size, grid.width - grid.patch_size])
    for corners in (pairs.centre, pairs.neighbour):
        assert (corners >= 0).all() and (corners <= last).all()
    step = pairs.neighbour - pairs.centre  # per axis: ±(patch + gap ± 2·jitter) or 0 ± 2·jitter
    away = torch.tensor([[-1, -1], [-1, 0], [-1, 1], [0, -1], [0, 1], [1, -1], [1, 0], [1, 1]])[pairs.label]
    moved = away != 0
    assert (torch.sign(step[moved]) == away[moved]).all()
    assert (step[moved].abs() >= grid.patch_size + grid.gap - 2 * grid.jitter).all()
    assert (step[~moved].abs() <= 2 * grid.jitter).all()
    assert grid.gap - 2 * grid.jitter >= 1  # so no two patches ever touch


def test_crop_patches_cuts_each_images_own_square():
    x = torch.randn(5, 3, 9, 11)
    corners = torch.tensor([[0, 0], [2, 5], [6, 8], [3, 1], [6, 0]])
    patches = crop_patches(x, corners, 3)
    for i, (row, col) in enumerate(corners.tolist()):
        assert torch.equal(patches[i], x[i, :, row:row + 3, col:col + 3])


class MeanEncoder(nn.Module):
    """Feature: a patch's mean pixel, which on a cell image is its cell index."""

    out_dim = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3)).unsqueeze(1)


class CellDistanceClassifier(nn.Module):
    """logit of label l = −(neighbour's cell − cell of l)², from the concatenated pair features."""

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        cells = torch.tensor([float(CELL_OF_LABEL[label]) for label in range(8)])
        return -(pair[:, 1:2] - cells) ** 2


def test_patch_position_loss_pairs_each_neighbour_with_its_label():
    grid_options = {"patch_size": 7, "gap": 3, "jitter": 0}
    method = build_method({"name": "patch-position", "head_layers": 1, **grid_options}, MeanEncoder())
    method.classifier = CellDistanceClassifier()
    images = cell_image(PatchGrid(27, 27, 7, 3, 0)).expand(64, 1, 27, 27)
    torch.manual_seed(3)
    loss = method([images]).loss
    torch.manual_seed(3)  # the method draws its pairs first thing, from the global generator
    labels = method.grid(27, 27).sample(64, images.device).label.tolist()
    cells = np.array([CELL_OF_LABEL[label] for label in range(8)], dtype=float)
    expected = []
    for label in labels:
        logits = -(CELL_OF_LABEL[label] - cells) ** 2
        expected.append(np.log(np.exp(logits).sum()) - logits[label])
    assert loss.item() == pytest.approx(np.mean(expected), rel=1e-5)


def test_patch_input_size_resizes_patches_for_the_encoder():
    seen = []

    class Recorder(MeanEncoder):
        def forward(self, x):
            seen.append(tuple(x.shape))
            return super().forward(x)

    method = build_method({"name": "patch-position", "patch_input_size": 12}, Recorder())
    method([torch.randn(4, 1, 28, 28)])
    assert seen == [(8, 1, 12, 12)]  # 4 centres and 4 neighbours, 7×7 patches resized


def test_patch_position_loss_falls_on_digits():
    assert_learns_on_digits({"name": "patch-position"})


def test_patch_position_trains_end_to_end(tiny_config):
    tiny_run(tiny_config, "patch-position")
