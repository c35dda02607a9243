"""The pictures people expect from a run: MAE reconstructions, autoencoder reconstructions, VAE
samples and interpolations, and the attention maps of a ViT encoder.

Every picture is made in two steps: a function that returns the tensors to draw (tested against
the method's own definitions), then one that draws them into a PNG. Images enter as the encoders
see them (uint8 batches are normalised with ``to_input``) and are drawn back on the [0, 1] pixel
scale, clipped. Figures use ``matplotlib.figure.Figure`` without ``pyplot`` (see ``plots.py``).

``write_pictures(run_dir)`` decides from the run's method and backbone which pictures apply and
writes them into the run dir under the fixed names of ``PICTURES``.
"""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn

from selfsup.backbones import build_backbone
from selfsup.backbones.vit import VisionTransformer, ViTOptions
from selfsup.config import Config
from selfsup.data import load_split
from selfsup.data.base import ImageSource
from selfsup.errors import DataError
from selfsup.methods import BuildContext, Generates, Method, Reconstructs, build_method
from selfsup.registry import BACKBONES, METHODS
from selfsup.report.plots import write_figure
from selfsup.run_dir import (
    ATTENTION_MAPS,
    CHECKPOINT_FILE,
    MAE_RECONSTRUCTIONS,
    RECONSTRUCTIONS,
    VAE_INTERPOLATIONS,
    VAE_SAMPLES,
    RunDir,
)
from selfsup.train.checkpoint import load_checkpoint
from selfsup.views.image import MEAN, STD, to_input

# File name → a one-line caption for the report.
PICTURES = {
    MAE_RECONSTRUCTIONS: "MAE on held-out images: the original, the masked input the encoder saw "
                         "(hidden patches grey) and the reconstruction with the visible patches pasted back",
    RECONSTRUCTIONS: "Autoencoder reconstructions of held-out images (for a denoising autoencoder: of "
                     "their corrupted copies)",
    VAE_SAMPLES: "VAE samples: the decoder's images of latents drawn from the prior N(0, I)",
    VAE_INTERPOLATIONS: "VAE interpolations: decoded points evenly spaced on the line between the "
                        "posterior means of two held-out images (shown at both ends)",
    ATTENTION_MAPS: "ViT attention in the last block over the patches (the class token's, or the mean "
                    "patch query's for a mean-pooled ViT): mean of the heads and single heads",
}

CELL_INCHES = 1.1  # one image panel; 121 px at the report's DPI
LINE_INCHES = 0.22  # one line of a title
CHARS_PER_INCH = 12  # of a medium-size title, to wrap it to the figure's width
SAMPLE_COLUMNS = 8
SAMPLES_PER_IMAGE = 4  # vae_samples.png holds 4 × num_images samples
INTERPOLATION_STEPS = 8
MAX_HEADS_SHOWN = 4


# ----------------------------------------------------------------------------------------------
# loading a run


def load_trained_method(run_dir: str | Path, device: str | torch.device = "cpu"
                        ) -> tuple[Method, Config, tuple[int, int, int]]:
    """Rebuild a run's whole method (encoder, heads, decoders) from ``RUN/config.yaml`` and load
    its state from ``RUN/checkpoints/last.pt`` (``weights_only`` loading).

    Returns ``(method, config, in_shape)`` with the method on ``device`` in ``eval()`` mode and
    ``in_shape`` the (C, H, W) of the data it was built for.
    """
    run = RunDir(run_dir)
    config = run.load_config()
    checkpoint = run.checkpoint_file
    if not checkpoint.is_file():
        raise DataError(f"{run} holds no checkpoint ({CHECKPOINT_FILE}): the run has not finished an "
                        "epoch yet; train it with `selfsup pretrain` (or --resume) first")
    in_shape = _data_shape(run, config)
    encoder = build_backbone(config.backbone, in_shape[0], in_shape[1])
    method = build_method(config.method, encoder, BuildContext(in_shape=in_shape))
    state = load_checkpoint(checkpoint, map_location=device)
    method.load_state_dict(state["method"])
    return method.to(device).eval(), config, in_shape


def _data_shape(run: RunDir, config: Config) -> tuple[int, int, int]:
    """The (C, H, W) the run was built for: from encoder.json when training finished (no data
    needed), else from the training split, as the trainer does."""
    if run.encoder_spec.is_file():
        spec = run.read_encoder_spec()
        return int(spec["in_channels"]), int(spec["image_size"]), int(spec["image_size"])
    return tuple(load_split(config.data.dataset, "train", config.data.data_dir).shape)


# ----------------------------------------------------------------------------------------------
# the tensors to draw


def to_display(x: torch.Tensor) -> torch.Tensor:
    """Normalised images → the [0, 1] pixel scale, clipped (decoders can overshoot), on the CPU."""
    return (x.detach().float() * STD + MEAN).clamp(0.0, 1.0).cpu()


def _as_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 images → normalised floats; float images are taken as already normalised."""
    x = images if images.is_floating_point() else to_input(images)
    return x.to(device)


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


@contextlib.contextmanager
def _evaluating(module: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients for the duration, then the previous mode back: BatchNorm in
    training mode would use batch statistics and overwrite its running ones."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


class MAEPanels(NamedTuple):
    """One MAE reconstruction of a batch, every image (B, C, h·p, w·p) on the [0, 1] scale."""

    original: torch.Tensor  # the input, cut to the pixels the patch grid covers
    masked: torch.Tensor  # the input with the hidden patches grey (0.5): what the encoder saw
    reconstruction: torch.Tensor  # predictions on hidden patches, the input on visible ones
    mask: torch.Tensor  # (B, 1, h·p, w·p): 1 on hidden pixels, 0 on visible ones


def reconstruction_columns(method: Reconstructs, images: torch.Tensor,
                           generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """The method's :class:`~selfsup.methods.base.Reconstructs` columns of ``images``, in eval
    mode without gradients (normalised images; a ``"mask"`` where it hid parts of the input)."""
    with _evaluating(method):
        return method.reconstruction_panels(_as_input(images, _device(method)), generator)


def mae_panels(method: Reconstructs, images: torch.Tensor,
               generator: torch.Generator | None = None) -> MAEPanels:
    """Mask ``images`` at the method's ratio, reconstruct them, and paste the visible patches back,
    as the MAE paper's figures show.

    With ``norm_pix_loss`` the decoder predicts each patch standardised by its own mean and std;
    the predictions are mapped back to pixels with the mean and std of the same patch of the
    original image (as the paper does for its figures), since the prediction carries no absolute
    intensity. ``generator`` (on the method's device) fixes the masking.
    """
    return _masked_panels(reconstruction_columns(method, images, generator))


def _masked_panels(columns: dict[str, torch.Tensor]) -> MAEPanels:
    original, mask = to_display(columns["original"]), columns["mask"].cpu()
    masked = torch.where(mask.bool(), torch.tensor(0.5), original)
    return MAEPanels(original, masked, to_display(columns["reconstruction"]), mask)


def autoencoder_panels(method: Reconstructs, images: torch.Tensor,
                       generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Columns of an autoencoder's reconstruction figure, name → (B, C, H, W) on the [0, 1] scale.

    A plain, sparse or variational autoencoder: original and reconstruction (the decoder's image of
    the deterministic code, μ for the VAE). A denoising autoencoder: original, the corrupted copy
    its encoder sees (noise drawn with ``generator``) and the reconstruction of that copy.
    """
    columns = reconstruction_columns(method, images, generator)
    return {name: to_display(batch) for name, batch in columns.items()}


def vae_sample_images(method: Generates, n: int,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` decoded draws z ~ N(0, I), (n, C, H, W) on the [0, 1] scale."""
    with _evaluating(method):
        return to_display(method.sample(n, generator=generator))


def vae_interpolation_images(method: Generates, images_a: torch.Tensor,
                             images_b: torch.Tensor, steps: int = INTERPOLATION_STEPS) -> torch.Tensor:
    """(B, steps, C, H, W) on the [0, 1] scale: decoded points evenly spaced on the straight line
    from the posterior mean μ(a) to μ(b), pairs matched by index; step 0 decodes μ(a), the last μ(b)."""
    with _evaluating(method):
        device = _device(method)
        return to_display(method.interpolate(_as_input(images_a, device), _as_input(images_b, device), steps))


class AttentionMaps(NamedTuple):
    """Attention over the patches in a ViT's last block."""

    maps: torch.Tensor  # (B, heads, h, w), non-negative, each map sums to 1 over the patches
    query: str  # whose attention: "class token" or "mean patch query"


def attention_maps(encoder: VisionTransformer, images: torch.Tensor) -> AttentionMaps:
    """Where the last block looks, per head, as a distribution over the patches.

    For a ViT pooled by its class token (``pool="cls"``), the class token's attention row. A
    mean-pooled ViT still carries a class token (vit.py always prepends one), but its features are
    the mean of the patch tokens, so the map shown is the attention row averaged over all patch
    queries: how strongly each patch feeds the pooled tokens in that block. Either way the weight
    on the class-token key is dropped and the rest renormalised to sum to 1 over the patches.
    """
    with _evaluating(encoder):
        x = _as_input(images, _device(encoder))
        weights = encoder.attention_weights(x)  # the last block's, (B, heads, 1 + n, 1 + n)
    if encoder.pool == "cls":
        rows, query = weights[:, :, 0], "class token"
    else:
        rows, query = weights[:, :, 1:].mean(dim=2), "mean patch query"
    over_patches = rows[..., 1:]
    over_patches = over_patches / over_patches.sum(dim=-1, keepdim=True)
    p = encoder.patch_size
    grid = (x.shape[-2] // p, x.shape[-1] // p)
    return AttentionMaps(over_patches.reshape(*over_patches.shape[:2], *grid).float().cpu(), query)


def upsample_maps(maps: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(..., h, w) patch maps → (..., h·p, w·p) pixel maps, each patch's value over its p×p pixels."""
    return maps.repeat_interleave(patch_size, dim=-2).repeat_interleave(patch_size, dim=-1)


# ----------------------------------------------------------------------------------------------
# drawing


class Panel(NamedTuple):
    image: torch.Tensor  # (C, H, W) on the [0, 1] scale
    overlay: torch.Tensor | None = None  # (H, W) heat map, drawn with the image's outline on top


def _draw(ax: Axes, panel: Panel) -> None:
    image = panel.image
    if panel.overlay is not None:
        # The map opaque, each on its own colour scale from its minimum to its maximum (attention
        # spreads over tens or hundreds of patches, so a common scale from 0 would look flat), and
        # the image as an outline on top: a blend of the two muddies both on small images.
        heat = panel.overlay.numpy()
        low, high = float(heat.min()), float(heat.max())
        ax.imshow(heat, cmap="inferno", vmin=low, vmax=max(high, low + 1e-12), interpolation="nearest")
        luma = image.mean(dim=0).numpy()
        ax.contour(luma, levels=[0.5], colors="cyan", linewidths=0.8)
    elif image.shape[0] == 1:
        ax.imshow(image[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _grid_figure(rows: Sequence[Sequence[Panel]], path: str | Path, title: str,
                 column_titles: Sequence[str] = ()) -> Path:
    """Draw panels in a grid, one square cell each; cells a row lacks stay empty."""
    num_rows, num_cols = len(rows), max(len(row) for row in rows)
    width = num_cols * CELL_INCHES
    title = "\n".join(textwrap.fill(line, int(width * CHARS_PER_INCH)) for line in title.split("\n"))
    header_lines = title.count("\n") + 1 + max((name.count("\n") + 1 for name in column_titles), default=0)
    fig = Figure(figsize=(width, num_rows * CELL_INCHES + header_lines * LINE_INCHES), layout="constrained")
    axes = fig.subplots(num_rows, num_cols, squeeze=False)
    for r, row in enumerate(axes):
        for c, ax in enumerate(row):
            if c < len(rows[r]):
                _draw(ax, rows[r][c])
            else:
                ax.set_axis_off()
    for ax, name in zip(axes[0], column_titles):
        ax.set_title(name, fontsize="small")
    fig.suptitle(title, fontsize="medium")
    return write_figure(fig, path)


def _columns_figure(columns: dict[str, torch.Tensor], path: str | Path, title: str) -> Path:
    """One row per sample, one column per named batch."""
    batches = list(columns.values())
    rows = [[Panel(batch[i]) for batch in batches] for i in range(len(batches[0]))]
    return _grid_figure(rows, path, title, list(columns))


def mae_reconstruction_grid(method: Reconstructs, images: torch.Tensor, path: str | Path,
                            generator: torch.Generator | None = None,
                            columns: dict[str, torch.Tensor] | None = None) -> Path:
    """Rows of samples; columns: original, masked input (hidden patches grey), reconstruction with
    the visible patches pasted back (see ``mae_panels``); ``columns``: the method's
    reconstruction columns when already made."""
    panels = _masked_panels(columns or reconstruction_columns(method, images, generator))
    title = method.reconstruction_title(panels.mask.mean().item())
    columns = {"original": panels.original, "masked input": panels.masked,
               "reconstruction\n+ visible patches": panels.reconstruction}
    return _columns_figure(columns, path, title)


def autoencoder_reconstruction_grid(method: Reconstructs, images: torch.Tensor, path: str | Path,
                                    generator: torch.Generator | None = None,
                                    columns: dict[str, torch.Tensor] | None = None) -> Path:
    """Rows of samples; columns as ``autoencoder_panels`` makes them (``columns``: the method's
    reconstruction columns when already made)."""
    columns = columns or reconstruction_columns(method, images, generator)
    shown = {name: to_display(batch) for name, batch in columns.items()}
    return _columns_figure(shown, path, method.reconstruction_title())


def vae_samples(method: Generates, n: int, path: str | Path,
                generator: torch.Generator | None = None) -> Path:
    """A grid of ``n`` decoded prior samples, ``SAMPLE_COLUMNS`` to a row."""
    samples = vae_sample_images(method, n, generator)
    rows = [[Panel(image) for image in samples[start:start + SAMPLE_COLUMNS]]
            for start in range(0, n, SAMPLE_COLUMNS)]
    return _grid_figure(rows, path, method.samples_title())


def vae_interpolations(method: Generates, images_a: torch.Tensor, images_b: torch.Tensor,
                       steps: int, path: str | Path) -> Path:
    """One row per pair: image a, ``steps`` decoded points from μ(a) to μ(b), image b."""
    device = _device(method)
    path_images = vae_interpolation_images(method, images_a, images_b, steps)
    ends_a, ends_b = to_display(_as_input(images_a, device)), to_display(_as_input(images_b, device))
    rows = [[Panel(ends_a[i]), *(Panel(image) for image in path_images[i]), Panel(ends_b[i])]
            for i in range(len(path_images))]
    titles = ["image a", "μ(a)", *[""] * (steps - 2), "μ(b)", "image b"]
    return _grid_figure(rows, path, "VAE: linear interpolation between posterior means", titles)


def attention_maps_figure(encoder: VisionTransformer, images: torch.Tensor, path: str | Path) -> Path:
    """Rows of samples; columns: the image, then the attention map of the last block (mean over
    heads, then up to ``MAX_HEADS_SHOWN`` single heads) upsampled to the pixels and overlaid."""
    result = attention_maps(encoder, images)
    p = encoder.patch_size
    pixel_maps = upsample_maps(result.maps, p)  # (B, heads, h·p, w·p)
    mean_maps = pixel_maps.mean(dim=1)
    x = to_display(_as_input(images, _device(encoder)))[..., : pixel_maps.shape[-2], : pixel_maps.shape[-1]]
    heads = min(pixel_maps.shape[1], MAX_HEADS_SHOWN)
    rows = [[Panel(x[i]), Panel(x[i], mean_maps[i]), *(Panel(x[i], pixel_maps[i, h]) for h in range(heads))]
            for i in range(len(x))]
    titles = ["image", "mean of heads", *(f"head {h}" for h in range(heads))]
    title = (f"Last-block attention of the {result.query} over the patches ({pixel_maps.shape[1]} heads; "
             f"each map coloured from its minimum to its maximum)")
    return _grid_figure(rows, path, title, titles)


# ----------------------------------------------------------------------------------------------
# a run's pictures


def write_pictures(run_dir: str | Path, dataset: str | None = None, num_images: int = 8, seed: int = 0,
                   data_dir: str | None = None, device: str | torch.device = "cpu") -> list[Path]:
    """Write the pictures that apply to a run into its dir; return their paths ([] if none apply).

    MAE: ``mae_reconstructions.png``; autoencoders: ``reconstructions.png``, and for the VAE also
    ``vae_samples.png`` and ``vae_interpolations.png``; a ViT encoder (any method):
    ``attention_maps.png``. The images are ``num_images`` held-out images (the test split, else the
    training split) of ``dataset`` (default: the run's), chosen at random with ``seed``; the
    interpolations pair them with ``num_images`` others.
    """
    run = RunDir(run_dir)
    config = run.load_config()
    method_cls = METHODS.get(config.method.get("name", "simclr"))
    draws = issubclass(method_cls, Reconstructs) or issubclass(method_cls, Generates)
    if not draws and not _names_a_vit(config.backbone):
        return []  # decided before loading anything: most runs have no pictures
    method, config, in_shape = load_trained_method(run_dir, device)
    dataset = dataset or config.data.dataset
    source = _held_out(dataset, data_dir or config.data.data_dir)
    if tuple(source.shape[:2]) != tuple(in_shape[:2]):
        raise DataError(f"data set {dataset!r} has images of shape {tuple(source.shape)}, but the run "
                        f"in {run} was trained on {tuple(in_shape)}; pass a data set like its own")
    if num_images < 1 or len(source) < 2:
        raise DataError(f"pictures need num_images ≥ 1 and a data set of at least 2 images, got "
                        f"num_images={num_images} and {len(source)} images")
    picks = torch.randperm(len(source), generator=torch.Generator().manual_seed(seed))
    count = min(num_images, len(source) // 2)
    images, partners = source.get(picks[:count]), source.get(picks[count:2 * count])
    generator = torch.Generator(device=device).manual_seed(seed)

    written = []
    if isinstance(method, Reconstructs):
        columns = reconstruction_columns(method, images, generator)
        if "mask" in columns:  # a masked model's figure: what the encoder saw, greyed
            written.append(mae_reconstruction_grid(method, images, run.mae_reconstructions,
                                                   columns=columns))
        else:
            written.append(autoencoder_reconstruction_grid(method, images, run.reconstructions,
                                                           columns=columns))
    if isinstance(method, Generates):
        written.append(vae_samples(method, SAMPLES_PER_IMAGE * count, run.vae_samples, generator))
        written.append(vae_interpolations(method, images, partners, INTERPOLATION_STEPS,
                                          run.vae_interpolations))
    if isinstance(method.export_encoder, VisionTransformer):  # DINO: the teacher's, as in the paper
        written.append(attention_maps_figure(method.export_encoder, images, run.attention_maps))
    return written


def _names_a_vit(backbone: dict) -> bool:
    """Whether a backbone section names one of the built-in Vision Transformers."""
    name = backbone.get("name", "resnet18")
    if ":" in name:  # torchvision/timm models do not expose their attention
        return False
    options = getattr(BACKBONES.get(name), "options", None)
    return isinstance(options, type) and issubclass(options, ViTOptions)


def _held_out(dataset: str, data_dir: str | None) -> ImageSource:
    try:
        return load_split(dataset, "test", data_dir)
    except DataError:
        return load_split(dataset, "train", data_dir)
