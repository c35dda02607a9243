"""The fine-tuning section of the run report: label efficiency of the encoder against scratch.

Reads ``RUN/finetune.json`` (written by ``selfsup finetune``, see
:mod:`selfsup.evaluate.finetune`), draws ``RUN/finetune_label_efficiency.png`` and returns the
markdown lines of the section. Figures are drawn on a bare ``matplotlib.figure.Figure`` (the Agg
canvas), as everywhere in :mod:`selfsup.report.plots`.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Optional

from matplotlib.figure import Figure

from selfsup.errors import DataError
from selfsup.modalities import MODALITIES, Modality, spec_modality
from selfsup.report import plots
from selfsup.report.tables import MISSING, accuracy_cell, markdown_table
from selfsup.run_dir import FINETUNE_FILE, RunDir, read_finetune_results

# (mode, init) → row name, in table order
ROWS = {
    ("full", "pretrained"): "pretrained, fine-tuned",
    ("full", "scratch"): "scratch, trained",
    ("frozen", "pretrained"): "pretrained, frozen + head",
    ("frozen", "scratch"): "random init, frozen + head",
}
MODE_COLOURS = {"full": "C0", "frozen": "C1"}
INIT_LINES = {"pretrained": "-", "scratch": "--"}


def _is_fraction(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 <= value <= 1


def _entries(results: dict[str, Any]) -> dict[str, dict[tuple[str, str], dict[float, dict]]]:
    """dataset → (mode, init) → label fraction → entry, checked to hold accuracies in [0, 1]."""
    datasets = results.get("datasets")
    if not isinstance(datasets, dict):
        raise DataError(f"{FINETUNE_FILE} holds no \"datasets\" mapping; re-run `selfsup finetune`")
    table: dict[str, dict[tuple[str, str], dict[float, dict]]] = {}
    for dataset, modes in datasets.items():
        for mode, inits in modes.items():
            for init, by_fraction in inits.items():
                for key, entry in by_fraction.items():
                    where = f"{FINETUNE_FILE}: {dataset}.{mode}.{init}[{key}]"
                    for name in ("mean", "std"):
                        value = entry.get(name) if isinstance(entry, dict) else None
                        if not _is_fraction(value):
                            raise DataError(f"{where}.{name} = {value!r} is not an accuracy in [0, 1]; "
                                            "re-run `selfsup finetune` for it")
                    table.setdefault(dataset, {}).setdefault((mode, init), {})[float(key)] = entry
    return table


def _spread(entry: dict) -> Optional[float]:
    """The std over seeds, or None after a single seed (where 0 would claim a certainty)."""
    runs = entry.get("accuracy")
    return None if isinstance(runs, list) and len(runs) < 2 else entry["std"]


def _row_name(mode: str, init: str) -> str:
    return ROWS.get((mode, init), f"{init}, {mode}")


def _ordered(rows: dict[tuple[str, str], Any]) -> list[tuple[str, str]]:
    known = [key for key in ROWS if key in rows]
    return known + sorted(key for key in rows if key not in ROWS)


def format_finetune_table(results: dict[str, Any]) -> str:
    """The label-efficiency tables of a finetune.json, one per data set: rows (mode, init), columns
    label fractions, cells test top-1 ``mean% ± std`` (percentage points, over seeds), and per mode
    with both inits a row with the gain of the pretrained encoder over scratch."""
    blocks = []
    for dataset, rows in _entries(results).items():
        fractions = sorted({f for by_fraction in rows.values() for f in by_fraction})
        header = [f"{dataset}: test top-1"] + [f"{100 * f:g}% labels" for f in fractions]
        lines = []
        for mode, init in _ordered(rows):
            by_fraction = rows[(mode, init)]
            lines.append([_row_name(mode, init)] + [
                accuracy_cell(by_fraction[f]["mean"], _spread(by_fraction[f])) if f in by_fraction
                else MISSING for f in fractions])
        for mode in dict.fromkeys(mode for mode, _ in rows):
            pretrained, scratch = rows.get((mode, "pretrained")), rows.get((mode, "scratch"))
            if pretrained and scratch:
                lines.append([f"gain over scratch ({mode})"] + [
                    f"{100 * (pretrained[f]['mean'] - scratch[f]['mean']):+.1f} pt"
                    if f in pretrained and f in scratch else MISSING for f in fractions])
        blocks.append(markdown_table(header, lines))
    return "\n\n".join(blocks)


def plot_finetune_label_efficiency(results: dict[str, Any], path: str | Path) -> Path:
    """Test top-1 against the fraction of labels (log axis), one panel per data set, ±std error bars:
    colour by mode, solid for the pretrained encoder, dashed for scratch."""
    table = _entries(results)
    fig = Figure(figsize=plots.WIDE)
    axes = fig.subplots(1, max(1, len(table)), squeeze=False)[0]
    for ax, (dataset, rows) in zip(axes, table.items()):
        for mode, init in _ordered(rows):
            by_fraction = rows[(mode, init)]
            fractions = sorted(by_fraction)
            ax.errorbar(fractions, [100 * by_fraction[f]["mean"] for f in fractions],
                        yerr=[100 * by_fraction[f]["std"] for f in fractions], marker="o", capsize=4,
                        color=MODE_COLOURS.get(mode, "C2"), linestyle=INIT_LINES.get(init, ":"),
                        label=_row_name(mode, init))
        ticks = sorted({f for by_fraction in rows.values() for f in by_fraction})
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{100 * f:g}%" for f in ticks])
        ax.minorticks_off()
        ax.set_xlabel("fraction of training labels (log)")
        ax.set_ylabel("test top-1 accuracy (%)")
        ax.set_title(f"Fine-tuning label efficiency: {dataset}")
        ax.grid(alpha=0.3)
        ax.legend()
    return plots.save_figure(fig, path)


# Not a deviation from the protocol line: what differs between the pretrained and the scratch
# protocol by design, and the number of seeds (a row without ± had one).
BY_DESIGN = {"backbone_lr_scale", "layer_decay", "seeds"}


def _protocol(entries: dict[str, dict[tuple[str, str], dict[float, dict]]]
              ) -> tuple[str, dict[str, Any]]:
    """(mode, settings) of the protocol line: the settings most pretrained entries share, a tie
    going to the longer schedule, so a quick run on a shorter schedule never becomes the
    protocol; ("", {}) when no entry recorded its settings."""
    candidates = [(mode, entry["settings"]) for by_init in entries.values()
                  for (mode, init), by_fraction in by_init.items() if init == "pretrained"
                  for entry in by_fraction.values() if entry.get("settings")]
    if not candidates:
        return "", {}
    keys = [json.dumps(_comparable(settings), sort_keys=True) for _, settings in candidates]
    counts = Counter(keys)
    best = max(range(len(candidates)),
               key=lambda i: (counts[keys[i]], candidates[i][1].get("epochs") or 0))
    return candidates[best]


def _comparable(settings: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in settings.items() if key not in BY_DESIGN}


def _settings_line(mode: str, s: dict[str, Any], modality: type[Modality]) -> str:
    """The protocol (``_protocol``) in one sentence; ``modality`` (the encoder's) words the
    augmentation."""
    rate = (f"backbone × {s.get('backbone_lr_scale')}"
            + (f", layer decay {s['layer_decay']}" if s.get("layer_decay") else ""))
    return (f"Protocol ({mode}, pretrained): AdamW, head LR {s.get('lr')}, {rate}; "
            f"at least {s.get('epochs')} epochs and {s.get('min_steps')} steps, batch "
            f"{s.get('batch_size')}, label smoothing {s.get('label_smoothing')}, "
            f"{modality.describe_finetune_augmentation(s)}. "
            "Scratch trains its backbone at the full head LR.")


def _deviations(entries: dict[str, dict[tuple[str, str], dict[float, dict]]],
                protocol: dict[str, Any]) -> Optional[str]:
    """The entries run with other settings than the protocol line's (e.g. fewer epochs at 100 %
    labels), so a table that mixes schedules says so: None when every entry shares them."""
    reference = _comparable(protocol)
    notes = []
    for dataset, by_init in entries.items():
        for mode, init in _ordered(by_init):
            for fraction, entry in sorted(by_init[(mode, init)].items()):
                settings = _comparable(entry.get("settings") or {})
                changed = [f"{key} {settings.get(key)}" for key in sorted(settings.keys() | reference.keys())
                           if settings.get(key) != reference.get(key)]
                if changed:
                    notes.append(f"{_row_name(mode, init)} at {fraction:.0%} labels ({dataset}): "
                                 + ", ".join(changed))
    return ("Run with other settings: " + "; ".join(notes) + ".") if notes else None


def _modality(run: RunDir) -> type[Modality]:
    """The modality class of the run's encoder (the base class's words when its encoder.json is
    gone)."""
    if not run.encoder_spec.is_file():
        return Modality
    return MODALITIES.get(spec_modality(run.read_encoder_spec()))


def finetune_section(run_dir: str | Path) -> list[str]:
    """The report's fine-tuning section (markdown lines); draws ``RUN/finetune_label_efficiency.png``.

    Without ``RUN/finetune.json`` the section says how to make it.
    """
    run = RunDir(run_dir)
    lines = ["## Fine-tuning", ""]
    if not run.finetune_file.is_file():
        return lines + [f"No fine-tuning results ({FINETUNE_FILE} is missing); run `selfsup finetune "
                        f"{run} --compare-scratch` and then `selfsup report {run}`."]
    results = read_finetune_results(run.finetune_file)
    entries = _entries(results)
    if not entries:
        return lines + [f"{FINETUNE_FILE} holds no results yet."]
    lines += ["Test top-1 after a fixed schedule (nothing chosen on the test split), mean ± std in "
              "percentage points over seeds; each seed has its own stratified label subset, head "
              "init and data order.", ""]
    mode, protocol = _protocol(entries)
    if protocol:
        lines += [_settings_line(mode, protocol, _modality(run)), ""]
    deviations = _deviations(entries, protocol)
    if deviations:
        lines += [deviations, ""]
    lines.append(format_finetune_table(results))
    plot_finetune_label_efficiency(results, run.finetune_plot)
    return lines + ["", f"![Fine-tuning label efficiency]({run.finetune_plot.name})"]
