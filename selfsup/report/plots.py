"""Plots of a run: loss and learning rate, collapse diagnostics, t-SNE, label efficiency, online probe,
held-out perplexity.

Figures are built with ``matplotlib.figure.Figure`` and never through ``pyplot``: a bare ``Figure``
renders PNGs with the Agg canvas, needs no screen, leaves the global backend alone (so a notebook
or another library keeps its own), and is not held in pyplot's figure registry, so nothing leaks
when many reports are written in one process. Each function writes one PNG and returns its path.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, MaxNLocator

from selfsup.files import atomic_write

WIDE = (9.0, 4.8)  # inches; readable in a markdown viewer at its default width
TALL = (9.0, 7.0)
DPI = 110

Record = dict  # one parsed line of metrics.jsonl
BASELINE_NAMES = {"raw": "raw pixels", "random_init": "random init"}  # eval.json key → display name


def ema(values: Sequence[float], span: float) -> np.ndarray:
    """Bias-corrected exponential moving average, ``alpha = 2 / (span + 1)``.

    The bias correction divides by the total weight seen so far, so the first point equals the first
    value instead of being pulled toward zero. Non-finite values (a diverged loss) do not enter the
    average; their smoothed value is NaN so the line shows a gap there.
    """
    alpha = 2.0 / (span + 1.0)
    smoothed = np.full(len(values), np.nan)
    weighted_sum = total_weight = 0.0
    for i, value in enumerate(values):
        if not math.isfinite(value):
            continue
        weighted_sum = (1 - alpha) * weighted_sum + alpha * value
        total_weight = (1 - alpha) * total_weight + alpha
        smoothed[i] = weighted_sum / total_weight
    return smoothed


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Lay ``fig`` out, save it at ``path`` at the report's DPI and free its artists."""
    fig.tight_layout()
    return write_figure(fig, path)


def write_figure(fig: Figure, path: str | Path) -> Path:
    """Save ``fig`` as laid out at ``path`` (atomically, in the format its suffix names) at the
    report's DPI and free its artists."""
    path = Path(path)
    image_format = path.suffix.lstrip(".") or "png"

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a file object: the temporary name has no image suffix
            fig.savefig(handle, dpi=DPI, format=image_format)

    atomic_write(path, write)
    fig.clear()  # drop artists now rather than waiting for the garbage collector
    return path


def group_by_embedding(health: Iterable[Record]) -> dict[str, list[Record]]:
    """Health records grouped by embedding name (in order of first appearance), each in epoch order."""
    groups: dict[str, list[Record]] = {}
    for record in health:
        groups.setdefault(str(record["embedding"]), []).append(record)
    return {name: sorted(records, key=lambda r: r["epoch"]) for name, records in groups.items()}


def plot_loss_lr(steps: Sequence[Record], path: str | Path) -> Path:
    """Training loss per logged step (raw and smoothed) with the learning rate on a second axis."""
    x = [r["step"] for r in steps]
    loss = [float(r["loss"]) for r in steps]
    fig = Figure(figsize=WIDE)
    ax = fig.add_subplot()
    ax.plot(x, loss, color="tab:blue", alpha=0.3, linewidth=1, label="loss")
    ax.plot(x, ema(loss, span=max(2.0, len(loss) / 20)), color="tab:blue", linewidth=2,
            label="loss (smoothed)")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss and learning rate")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    lr_steps = [r for r in steps if r.get("lr") is not None]
    if lr_steps:
        lr_ax = ax.twinx()
        lr_ax.plot([r["step"] for r in lr_steps], [r["lr"] for r in lr_steps], color="tab:orange",
                   linewidth=1.5, label="learning rate")
        lr_ax.set_ylabel("learning rate")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        more_handles, more_labels = lr_ax.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, loc="upper right")
    return save_figure(fig, path)


def _epoch_axis(ax: Axes) -> None:
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _draw_rank(ax: Axes, health: Sequence[Record], title: str) -> None:
    """Effective rank per epoch for each embedding, its dimension as a dashed line of the same colour."""
    for colour, (name, records) in zip(_colours(), group_by_embedding(health).items()):
        epochs = [r["epoch"] for r in records]
        ax.plot(epochs, [r["effective_rank"] for r in records], marker="o", markersize=3,
                color=colour, label=f"{name} effective rank")
        dim = records[-1].get("dim")
        if dim:
            ax.axhline(dim, color=colour, linestyle="--", linewidth=1, label=f"{name} dim = {dim}")
    # Log scale: a rank of 3 and a dimension of 2048 both stay readable, and collapse toward 1 shows.
    ax.set_yscale("log")
    # Plain numbers (3, 20, 64) read better than 3×10⁰ for ranks; minor ticks get labels on short ranges.
    ax.yaxis.set_major_formatter(LogFormatter())
    ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    _epoch_axis(ax)
    ax.set_ylabel("effective rank (log)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")


def _colours() -> Iterator[str]:
    """Matplotlib's default colour cycle, endlessly, so a line and its reference share a colour."""
    return itertools.cycle(f"C{i}" for i in range(10))


def plot_effective_rank(health: Sequence[Record], path: str | Path) -> Path:
    """Effective rank per epoch (top) and embedding std·√D per epoch (bottom; 1 healthy, 0 collapsed)."""
    fig = Figure(figsize=TALL)
    rank_ax, std_ax = fig.subplots(2, 1, sharex=True)
    _draw_rank(rank_ax, health, "Effective rank (RankMe) per epoch")
    rank_ax.set_xlabel("")
    for colour, (name, records) in zip(_colours(), group_by_embedding(health).items()):
        with_std = [r for r in records if r.get("embedding_std_x_sqrt_dim") is not None]
        std_ax.plot([r["epoch"] for r in with_std], [r["embedding_std_x_sqrt_dim"] for r in with_std],
                    marker="o", markersize=3, color=colour, label=name)
    std_ax.axhline(1.0, color="tab:green", linestyle=":", linewidth=1, label="healthy (1)")
    std_ax.axhline(0.0, color="tab:red", linestyle=":", linewidth=1, label="collapsed (0)")
    std_ax.set_ylim(-0.05, max(1.15, std_ax.get_ylim()[1]))
    _epoch_axis(std_ax)
    std_ax.set_ylabel("std of normalised embedding × √D")
    std_ax.set_title("Embedding spread")
    std_ax.grid(alpha=0.3)
    std_ax.legend(fontsize="small")
    return save_figure(fig, path)


def plot_rank_curves(runs: dict[str, list[dict]], path: str | Path) -> Path:
    """Several runs' effective-rank curves side by side, on a shared y axis, to compare them.

    ``runs`` maps a run's name to its health records (``kind == "health"`` lines of metrics.jsonl).
    """
    return _side_by_side(runs, _draw_rank, "Effective rank per epoch", 4.5, path)


def plot_spectrum(health: Sequence[Record], path: str | Path) -> Path:
    """The last singular spectrum of each embedding: normalised singular values by index, log y."""
    fig = Figure(figsize=WIDE)
    ax = fig.add_subplot()
    for colour, (name, records) in zip(_colours(), group_by_embedding(health).items()):
        last = [r for r in records if r.get("spectrum")]
        if not last:
            continue
        record = last[-1]
        values = np.asarray(record["spectrum"], dtype=float)
        index = np.arange(1, len(values) + 1)
        ax.plot(index, values, color=colour,
                label=f"{name} (epoch {record['epoch']}, rank {record['effective_rank']:.1f})")
    # Exact zeros (a fully collapsed direction) have no place on a log axis; mask them.
    ax.set_yscale("log", nonpositive="mask")
    ax.set_xlabel("singular value index")
    ax.set_ylabel("normalised singular value (log)")
    ax.set_title("Final singular spectrum of the embeddings")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return save_figure(fig, path)


def plot_tsne(coords: np.ndarray, labels: Optional[np.ndarray], path: str | Path,
              class_names: Optional[Sequence[str]] = None) -> Path:
    """t-SNE scatter coloured by label, with a legend of class names (a plain scatter if unlabelled)."""
    fig = Figure(figsize=(8.5, 7.0))
    ax = fig.add_subplot()
    if labels is None:
        ax.scatter(coords[:, 0], coords[:, 1], s=4, alpha=0.7)
    else:
        classes = np.unique(labels)
        colourmap = "tab10" if len(classes) <= 10 else "tab20" if len(classes) <= 20 else "turbo"
        colours = matplotlib.colormaps[colourmap].resampled(max(len(classes), 2))
        for i, label in enumerate(classes):
            chosen = labels == label
            name = _class_name(label, class_names)
            ax.scatter(coords[chosen, 0], coords[chosen, 1], s=4, alpha=0.7,
                       color=colours(i), label=name)
        if len(classes) <= 30:  # beyond that a legend hides more than it tells
            ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=3,
                      fontsize="small", title="class")
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.set_title(f"t-SNE of the encoder's embeddings ({len(coords)} samples)")
    return save_figure(fig, path)


def _class_name(label: object, class_names: Optional[Sequence[str]]) -> str:
    if class_names is not None and isinstance(label, (int, np.integer)) and 0 <= label < len(class_names):
        return str(class_names[int(label)])
    return str(label)


def _fractions(accuracies: dict[str, float]) -> list[tuple[float, str]]:
    """The label fractions of an eval.json mapping, as (value, original key), smallest first."""
    return sorted((float(key), key) for key in accuracies)


def plot_label_efficiency(eval_json: dict, path: str | Path) -> Path:
    """Linear-probe top-1 accuracy against the fraction of labels used, with ±std error bars.

    One line for the self-supervised encoder and one per baseline in ``eval_json["baselines"]``.
    """
    rows = [("SSL encoder", eval_json)] + [
        (BASELINE_NAMES.get(name, name), result)
        for name, result in (eval_json.get("baselines") or {}).items()]
    fig = Figure(figsize=WIDE)
    ax = fig.add_subplot()
    all_fractions: set[float] = set()
    for colour, (name, result) in zip(_colours(), rows):
        accuracies = result.get("linear_top1") or {}
        if not accuracies:
            continue
        stds = result.get("linear_top1_std") or {}
        fractions = _fractions(accuracies)
        all_fractions.update(value for value, _ in fractions)
        ax.errorbar([value for value, _ in fractions],
                    [100 * accuracies[key] for _, key in fractions],
                    yerr=[100 * stds.get(key, 0.0) for _, key in fractions],
                    marker="o", capsize=4, color=colour, label=name)
    ax.set_xscale("log")
    ticks = sorted(all_fractions)
    ax.set_xticks(ticks, [f"{100 * f:g}%" for f in ticks])
    ax.minorticks_off()
    ax.set_xlabel("fraction of training labels (log)")
    ax.set_ylabel("linear-probe top-1 accuracy (%)")
    ax.set_title("Label efficiency")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def plot_probe(probes: Sequence[Record], epochs: Sequence[Record], path: str | Path) -> Path:
    """Online k-NN accuracy and epoch loss over epochs on twin axes.

    A loss that keeps falling while the probe stalls or drops is the picture of a method that found
    a shortcut or is collapsing; the two curves on one panel make that divergence visible.
    """
    fig = Figure(figsize=WIDE)
    _draw_probe(fig.add_subplot(), probes, epochs, "Online k-NN probe vs training loss")
    return save_figure(fig, path)


def plot_probe_curves(runs: dict[str, tuple[Sequence[Record], Sequence[Record]]],
                      path: str | Path) -> Path:
    """Several runs' probe-vs-loss panels (``plot_probe``) side by side, on a shared accuracy axis.

    ``runs`` maps a run's name to its (probe records, epoch records) of metrics.jsonl.
    """
    return _side_by_side(runs, lambda ax, records, name: _draw_probe(ax, *records, name),
                         "Online k-NN probe vs training loss", 5.5, path)


def _side_by_side(runs: dict[str, Any], draw: Callable[[Axes, Any, str], None], title: str,
                  panel_width: float, path: str | Path) -> Path:
    """One panel per run, ``draw(ax, run's records, run's name)``, sharing the y axis (labelled
    on the first panel only)."""
    if not runs:
        raise ValueError(f"{title}: needs at least one run")
    fig = Figure(figsize=(panel_width * len(runs) + 1, 4.8))
    axes = np.atleast_1d(fig.subplots(1, len(runs), sharey=True))
    for ax, (name, records) in zip(axes, runs.items()):
        draw(ax, records, name)
    for ax in axes[1:]:
        ax.set_ylabel("")
    fig.suptitle(title)
    return save_figure(fig, path)


def _draw_probe(ax: Axes, probes: Sequence[Record], epochs: Sequence[Record], title: str) -> None:
    ax.plot([r["epoch"] for r in probes], [100 * r["knn_top1"] for r in probes], marker="o",
            color="tab:green", label="online k-NN top-1")
    _epoch_axis(ax)
    ax.set_ylabel("online k-NN top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if epochs:
        loss_ax = ax.twinx()
        loss_ax.plot([r["epoch"] for r in epochs], [r["loss"] for r in epochs], marker="s",
                     markersize=3, color="tab:blue", label="epoch loss")
        loss_ax.set_ylabel("training loss (epoch mean)")
        more_handles, more_labels = loss_ax.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, loc="best")


def plot_held_out_perplexity(held_out: Sequence[Record], path: str | Path) -> Path:
    """Perplexity on held-out sequences per epoch (``held_out`` records of MLM and next-token runs).

    Log y: a text model starts near its vocabulary size (thousands) and ends in the tens, and a
    protein model moves between 20 and a few; either way the fall stays readable.
    """
    records = [r for r in held_out if r.get("perplexity") is not None]
    fig = Figure(figsize=WIDE)
    ax = fig.add_subplot()
    ax.plot([r["epoch"] for r in records], [float(r["perplexity"]) for r in records], marker="o",
            color="tab:purple", label="held-out perplexity")
    ax.set_yscale("log", nonpositive="mask")
    ax.yaxis.set_major_formatter(LogFormatter())
    ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    _epoch_axis(ax)
    ax.set_ylabel("perplexity (log)")
    ax.set_title("Held-out perplexity per epoch")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="best")
    return save_figure(fig, path)
