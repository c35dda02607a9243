"""The run report: read a run dir, draw its plots, write ``report.md`` beside them.

Every input but the run dir itself is optional, because a report is most needed for runs that did
not finish: a section whose input is missing says so in one line and the rest still appears.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from selfsup.errors import DataError, SelfsupError
from selfsup.files import atomic_write_text
from selfsup.report import pictures, plots
from selfsup.report.finetune_report import finetune_section
from selfsup.report.tables import MISSING, accuracy_cell, markdown_table
from selfsup.run_dir import CONFIG_FILE, EVAL_FILE, RunDir, read_tsne
from selfsup.train.metrics_log import last_held_out_perplexity, parse_metrics

# Keys a record of each kind cannot do without; other keys are optional and read with .get().
REQUIRED_KEYS = {
    "step": ("step", "loss"),
    "epoch": ("epoch", "loss"),
    "health": ("epoch", "embedding", "effective_rank"),
    "probe": ("epoch", "knn_top1"),
    "warning": ("message",),
    "run": ("event",),
    "held_out": ("epoch", "loss"),
}

VERDICT_LINES = {
    "healthy": "✅ healthy",
    "unhealthy": "❌ unhealthy",
    "collapsed": "⚠️ collapsed",
    "stalled": "⚠️ stalled",
}

@dataclass
class RunMetrics:
    """The records of ``metrics.jsonl`` sorted by kind, plus notes about what was odd in the file."""

    steps: list[dict] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)
    health: list[dict] = field(default_factory=list)
    probes: list[dict] = field(default_factory=list)
    warnings: list[dict] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)
    held_out: list[dict] = field(default_factory=list)  # MLM / next-token loss on held-out data
    notes: list[str] = field(default_factory=list)


_LISTS = {"step": "steps", "epoch": "epochs", "health": "health", "probe": "probes",
          "warning": "warnings", "run": "runs", "held_out": "held_out"}


def read_metrics(path: str | Path) -> RunMetrics:
    """Parse ``metrics.jsonl``: records by kind; unknown kinds are skipped.

    A last line that is not valid JSON is what a killed run leaves behind: it is dropped with a note.
    A bad line anywhere else means the file was damaged and raises ``DataError`` naming the line.
    """
    path = Path(path)
    metrics = RunMetrics()
    parsed = parse_metrics(path)
    if parsed.bad_lines:
        number, why = parsed.bad_lines[0]
        raise DataError(f"{path}, line {number}: not a JSON object ({why}); the file is damaged "
                        "— remove that line or re-run training")
    if parsed.torn_last_line is not None:
        metrics.notes.append(
            f"The last line of {path.name} (line {parsed.torn_last_line}) is incomplete and was "
            "ignored; the run was probably stopped while writing it.")
    for number, record in parsed.records:
        kind = record.get("kind")
        if kind not in _LISTS:
            continue
        missing = [key for key in REQUIRED_KEYS[kind] if key not in record]
        if missing:
            raise DataError(f"{path}, line {number}: a {kind!r} record lacks {', '.join(missing)}; "
                            "the file was written by an incompatible version or edited by hand")
        getattr(metrics, _LISTS[kind]).append(record)
    return metrics


# --------------------------------------------------------------------------------------------------
# Formatting helpers


def _check_fraction(value: Any, where: str) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise DataError(f"{EVAL_FILE}: {where} = {value!r} is not an accuracy in [0, 1]; "
                        f"re-run the evaluation to rewrite {EVAL_FILE}")
    return float(value)


def format_eval_table(eval_json: dict) -> str:
    """Evaluation results as an aligned markdown table (rows: SSL and each baseline).

    Columns: k-NN top-1 and linear-probe top-1 at each label fraction, as percentages; fractions
    below 100% carry ± the std over seeds. Readable as-is in a monospace terminal.
    """
    results = [("SSL", eval_json)] + [
        (plots.BASELINE_NAMES.get(name, name), result)
        for name, result in (eval_json.get("baselines") or {}).items()]
    fractions = sorted({float(key) for _, result in results for key in (result.get("linear_top1") or {})})
    with_k = any("knn_k" in result for _, result in results)  # eval files from before k was chosen
    header = (["model", "k-NN top-1"] + (["k"] if with_k else [])
              + [f"linear @{100 * f:g}%" for f in fractions])
    rows = []
    for name, result in results:
        where = "" if result is eval_json else f"baselines.{name}."
        row = [name, accuracy_cell(_check_fraction(result.get("knn_top1"), f"{where}knn_top1"), None)]
        if with_k:
            row.append(str(result.get("knn_k", MISSING)))
        accuracies = _by_fraction(result.get("linear_top1"))
        stds = _by_fraction(result.get("linear_top1_std"))
        for fraction in fractions:
            accuracy = _check_fraction(accuracies.get(fraction), f"{where}linear_top1[{fraction:g}]")
            std = _check_fraction(stds.get(fraction), f"{where}linear_top1_std[{fraction:g}]")
            row.append(accuracy_cell(accuracy, std if fraction < 1 else None))
        rows.append(row)
    return markdown_table(header, rows)


def format_verdict(eval_json: dict) -> str:
    """One line per baseline: the encoder's lead (or lag) over it, in points, on k-NN and on the
    linear probe at the smallest and the largest label fraction: the questions a user asks
    first (did pretraining beat the input itself, and the untrained network?). Empty without
    baselines."""
    def probes(result: dict) -> dict[str, Optional[float]]:
        linear = _by_fraction(result.get("linear_top1"))
        return {"k-NN": result.get("knn_top1"),
                **{f"linear @{100 * f:g}%": linear.get(f) for f in ends}}

    fractions = sorted(_by_fraction(eval_json.get("linear_top1")))
    ends = sorted({fractions[0], fractions[-1]}) if fractions else []
    ours = probes(eval_json)
    lines = []
    for name, result in (eval_json.get("baselines") or {}).items():
        theirs = probes(result)
        gaps = [(label, 100 * (ours[label] - theirs[label])) for label in ours
                if ours[label] is not None and theirs[label] is not None]
        if not gaps:
            continue
        ahead = [label for label, gap in gaps if gap > 0]
        summary = ("ahead on every probe" if len(ahead) == len(gaps)
                   else "behind on every probe" if not ahead else f"ahead on {', '.join(ahead)}")
        lines.append(f"vs {plots.BASELINE_NAMES.get(name, name)}: "
                     + ", ".join(f"{label} {gap:+.1f}" for label, gap in gaps)
                     + f" points ({summary})")
    return "\n".join(lines)


def _by_fraction(mapping: Optional[dict]) -> dict[float, Any]:
    """eval.json keys label fractions by strings ("0.01"); compare them as numbers."""
    return {float(key): value for key, value in (mapping or {}).items()}


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


# --------------------------------------------------------------------------------------------------
# Sections of report.md


def _title(config: dict, eval_json: Optional[dict], run_dir: Path) -> str:
    """``# Run report: method · backbone · pretraining data set``, from what the config names (or
    the in-domain eval.json, when the config does not)."""
    def section(name: str) -> dict:
        value = config.get(name)
        return value if isinstance(value, dict) else {}

    dataset = section("data").get("dataset") or (eval_json or {}).get("dataset") or "?"
    parts = [str(section("method").get("name", "?")), str(section("backbone").get("name", "?")),
             str(dataset)]
    if parts == ["?"] * 3:
        return f"# Run report: {run_dir.resolve().name}"
    return f"# Run report: {' · '.join(parts)}"


def _summary(metrics: RunMetrics, config: dict) -> list[str]:
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    epochs_done = len({r["epoch"] for r in metrics.epochs})
    planned = f" of {train['epochs']}" if "epochs" in train else ""
    steps = [r["step"] for r in metrics.steps + metrics.epochs]
    rows = [
        ["status", _status(metrics.runs)],
        ["epochs completed", f"{epochs_done}{planned}"],
        ["steps", str(max(steps)) if steps else MISSING],
        ["wall time", _wall_time(metrics)],
        ["images/s (last epoch)", _last_epoch_throughput(metrics)],
        ["final loss", _final_loss(metrics)],
    ]
    last_perplexity = last_held_out_perplexity(metrics.held_out)
    if last_perplexity is not None:
        epoch, perplexity = last_perplexity
        rows.append([f"held-out perplexity (epoch {epoch})", _number(perplexity)])
    starts = [r for r in metrics.runs if r["event"] in ("start", "resume")]
    if starts:
        latest = starts[-1]
        for key, label in (("device", "device"), ("precision", "precision"),
                           ("torch", "torch"), ("torch_version", "torch")):
            if key in latest:
                rows.append([label, str(latest[key])])
    resumes = sum(r["event"] == "resume" for r in metrics.runs)
    if resumes:
        rows.append(["resumed", f"{resumes}×"])
    lines = ["## Run summary", "", markdown_table(["", "value"], rows, right_aligned_from=2)]
    for note in metrics.notes:
        lines += ["", f"> Note: {note}"]
    return lines


def _status(runs: list[dict]) -> str:
    if not runs:
        return "unknown (no run records)"
    last = runs[-1]
    if last["event"] == "end":
        return "finished"
    if last["event"] == "diverged":
        return "diverged" + (f": {last['message']}" if last.get("message") else "")
    return "incomplete (no end record: still running or stopped)"


def _wall_time(metrics: RunMetrics) -> str:
    ends = [r for r in metrics.runs if r["event"] in ("end", "diverged") and "wall_seconds" in r]
    if ends:
        return _duration(ends[-1]["wall_seconds"])
    epoch_seconds = [r["epoch_seconds"] for r in metrics.epochs if "epoch_seconds" in r]
    if epoch_seconds:
        return f"{_duration(sum(epoch_seconds))} (sum of epochs)"
    return MISSING


def _last_epoch_throughput(metrics: RunMetrics) -> str:
    if metrics.epochs and metrics.epochs[-1].get("images_per_s") is not None:
        return f"{metrics.epochs[-1]['images_per_s']:,.0f}"
    if metrics.steps:
        last_epoch = metrics.steps[-1].get("epoch")
        rates = [r["images_per_s"] for r in metrics.steps
                 if r.get("epoch") == last_epoch and r.get("images_per_s") is not None]
        if rates:
            return f"{sum(rates) / len(rates):,.0f}"
    return MISSING


def _final_loss(metrics: RunMetrics) -> str:
    last = metrics.epochs[-1] if metrics.epochs else metrics.steps[-1] if metrics.steps else None
    return MISSING if last is None else _number(float(last["loss"]))


def _health(metrics: RunMetrics, verdict: Optional[dict], run: RunDir) -> list[str]:
    lines = ["## Representation health", ""]
    if verdict is None:
        lines.append(f"No health verdict ({run.health_verdict_file.name} is missing).")
    else:
        status = str(verdict.get("status", "unknown"))
        lines.append(f"**Verdict: {VERDICT_LINES.get(status, '❓ ' + status)}**")
        if status == "healthy":  # its messages describe the last checks; they are not warnings
            lines += [""] + [f"- {m}" for m in verdict.get("messages", [])]
            verdict = None
    messages = _warning_messages(metrics, verdict)
    if messages:
        lines += ["", "Warnings during the run:", ""] + [f"- {m}" for m in messages]
    lines.append("")
    if not metrics.health:
        lines.append(f"No health records in {run.metrics_file.name} (health checks off, or the "
                     "run stopped before the first one).")
        return lines
    lines += [_last_health_table(metrics.health), ""]
    plots.plot_effective_rank(metrics.health, run.effective_rank_plot)
    lines += [f"![Effective rank and embedding spread per epoch]({run.effective_rank_plot.name})",
              ""]
    if any(record.get("spectrum") for record in metrics.health):
        plots.plot_spectrum(metrics.health, run.spectrum_plot)
        lines.append(f"![Final singular spectrum]({run.spectrum_plot.name})")
    else:
        lines.append("The health records carry no singular spectrum.")
    return lines


def _warning_messages(metrics: RunMetrics, verdict: Optional[dict]) -> list[str]:
    """Every distinct warning once, with the epochs it was raised in, in order of first appearance."""
    epochs_of: dict[str, list] = {}
    for message in (verdict or {}).get("messages", []):
        epochs_of.setdefault(str(message), [])
    for record in metrics.warnings:
        epochs_of.setdefault(str(record["message"]), []).append(record.get("epoch"))
    for record in metrics.health:
        for message in record.get("warnings") or []:
            epochs_of.setdefault(f"{record['embedding']}: {message}", []).append(record["epoch"])
    lines = []
    for message, epochs in epochs_of.items():
        known = [e for e in epochs if e is not None]
        if not known:
            lines.append(message)
        elif len(known) == 1:
            lines.append(f"epoch {known[0]}: {message}")
        else:
            lines.append(f"epochs {min(known)}–{max(known)} ({len(known)}×): {message}")
    return lines


def _last_health_table(health: list[dict]) -> str:
    columns = [("effective_rank", "effective rank"), ("dim", "dim"),
               ("embedding_std_x_sqrt_dim", "std·√D"), ("mean_cosine", "mean cosine"),
               ("uniformity", "uniformity"), ("alignment", "alignment")]
    rows = []
    for name, records in plots.group_by_embedding(health).items():
        last = records[-1]
        rows.append([name, str(last["epoch"])] + [_number(last[key]) if key in last else MISSING
                                                   for key, _ in columns])
    header = ["embedding (last check)", "epoch"] + [label for _, label in columns]
    return markdown_table(header, rows)


def _training(metrics: RunMetrics, run: RunDir) -> list[str]:
    lines = ["## Training", ""]
    if metrics.steps:
        plots.plot_loss_lr(metrics.steps, run.loss_lr_plot)
        lines.append(f"![Training loss and learning rate]({run.loss_lr_plot.name})")
    else:
        lines.append(f"No step records in {run.metrics_file.name}, so no loss curve.")
    lines.append("")
    if metrics.probes:
        plots.plot_probe(metrics.probes, metrics.epochs, run.probe_plot)
        lines.append(f"![Online k-NN probe vs training loss]({run.probe_plot.name})")
    else:
        lines.append("No online probe records (unlabelled data, or the probe is off).")
    last_perplexity = last_held_out_perplexity(metrics.held_out)
    if last_perplexity is not None:
        plots.plot_held_out_perplexity(metrics.held_out, run.held_out_perplexity_plot)
        epoch, perplexity = last_perplexity
        lines += ["", f"Held-out perplexity after epoch {epoch}: {_number(perplexity)}.", "",
                  f"![Held-out perplexity per epoch]({run.held_out_perplexity_plot.name})"]
    return lines


def _evaluations(run: RunDir, config: dict) -> list[str]:
    """The evaluation section: one part per data set the run was evaluated on, ``eval.json`` (the
    pretraining data) first, then each ``eval-<name>.json`` by name."""
    found = [(path, run.read_json(path)) for path in run.eval_files()]
    if len(found) <= 1:
        path, eval_json = found[0] if found else (run.eval_file(), None)
        return _evaluation(eval_json, run, path)
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    names = [str(eval_json.get("dataset", path.stem)) for path, eval_json in found]
    lines = ["## Evaluation", "",
             f"Pretrained on {data.get('dataset', '?')}; evaluated on {', '.join(names)}."]
    for (path, eval_json), name in zip(found, names):
        part = _evaluation(eval_json, run, path)
        lines += ["", f"### On {name}"] + part[1:]
    return lines


def _evaluation(eval_json: Optional[dict], run: RunDir, eval_file: Path) -> list[str]:
    """One data set's evaluation, read from ``eval_file``; its plots are named after that file
    (``RunDir.label_efficiency_plot``), its t-SNE read from the file the evaluation names."""
    lines = ["## Evaluation", ""]
    # eval files from before cross-data evaluation name no t-SNE file: theirs is tsne.npz
    tsne_file = (eval_json or {}).get("tsne_file", run.tsne_file().name)
    tsne = read_tsne(run.file(tsne_file))  # never outside the run dir
    if eval_json is None:
        lines.append(f"Evaluation is missing: there is no {run.eval_file().name} in this run dir "
                     f"yet; run `selfsup evaluate {run}` and then `selfsup report {run}`.")
    else:
        facts = [f"{label} {_count(eval_json[key])}" for key, label in
                 (("dataset", "dataset"), ("pretraining_dataset", "pretrained on"),
                  ("num_train", "train samples"), ("num_test", "test samples"),
                  ("feature_dim", "feature dim")) if key in eval_json]
        if facts:
            lines += [", ".join(facts) + ".", ""]
        lines.append(format_eval_table(eval_json))
        verdict = format_verdict(eval_json)
        if verdict:  # a markdown list: the same lines `selfsup evaluate` prints
            lines += ["", "The encoder, in points of accuracy:", ""]
            lines += [f"- {line}" for line in verdict.splitlines()]
        lines += _data_warnings(eval_json.get("data_checks"))
        if eval_json.get("linear_top1"):
            plot = run.label_efficiency_plot(eval_file)
            plots.plot_label_efficiency(eval_json, plot)
            lines += ["", f"![Label efficiency]({plot.name})"]
    lines.append("")
    if tsne is None:
        lines.append(f"No t-SNE ({tsne_file} is missing).")
    else:
        plot = run.tsne_plot(eval_file)
        plots.plot_tsne(tsne.coords, tsne.labels, plot, tsne.class_names)
        lines.append(f"![t-SNE of the embeddings]({plot.name})")
    return lines


def _data_warnings(checks: Any) -> list[str]:
    """What ``selfsup.evaluate.data_checks`` found, as a short list (nothing when all is well)."""
    if not isinstance(checks, dict) or not checks:
        return []
    lines = ["", "Data warnings:"]
    conflicts = checks.get("conflicting_labels")
    if isinstance(conflicts, dict):
        lines.append(f"- {conflicts.get('groups')} group(s) of identical items carry different "
                     f"labels ({conflicts.get('items')} items).")
    small = checks.get("small_classes")
    if isinstance(small, dict):
        names = ", ".join(str(entry.get("class")) for entry in small.get("classes", []))
        lines.append(f"- classes too small for the probe at {small.get('smallest_fraction')} of "
                     f"the labels (fewer than {small.get('min_probe_items')}), or absent from a "
                     f"split: {names}.")
    if checks.get("test_in_train"):
        lines.append(f"- {checks['test_in_train']} test item(s) identical to a training item.")
    return lines


def _pictures(run_dir: Path) -> list[str]:
    """MAE reconstructions, VAE samples, ViT attention maps: whichever apply to this run."""
    try:
        paths = pictures.write_pictures(run_dir)
    except SelfsupError as e:  # no checkpoint or no data here: the rest of the report still helps
        return ["## Pictures", "", f"No pictures: {e}"]
    if not paths:
        return []
    lines = ["## Pictures", ""]
    for path in paths:
        caption = pictures.PICTURES[path.name]
        lines += [f"{caption}.", "", f"![{caption}]({path.name})", ""]
    return lines


def _config_section(config_text: Optional[str]) -> list[str]:
    if config_text is None:
        return ["## Config", "", f"No {CONFIG_FILE} in this run dir."]
    return ["## Config", "", "```yaml", config_text.rstrip("\n"), "```"]


def write_report(run_dir: str | Path) -> Path:
    """Draw the plots of the run in ``run_dir`` and write ``run_dir/report.md``; return its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"run dir {run_dir} does not exist; pass the folder a training run wrote")
    run = RunDir(run_dir)
    if not run.config_file.is_file() and not run.metrics_file.is_file():
        # not a run, not even one that crashed at once: write nothing into someone's folder
        raise DataError(f"{run_dir} is not a selfsup run dir (no {run.config_file.name} and no "
                        f"{run.metrics_file.name}); pass the --out directory of `selfsup pretrain`")
    metrics = read_metrics(run.metrics_file) if run.metrics_file.is_file() else RunMetrics(
        notes=[f"There is no {run.metrics_file.name} in this run dir."])
    config_text, config = run.read_config_text()
    eval_json = run.read_json(run.eval_file())
    verdict = run.read_json(run.health_verdict_file)

    sections = [
        [_title(config, eval_json, run_dir), "", f"Run dir: `{run_dir}`"],
        _summary(metrics, config),
        _health(metrics, verdict, run),
        _evaluations(run, config),
        finetune_section(run_dir),
        _pictures(run_dir),
        _training(metrics, run),
        _config_section(config_text),
    ]
    report = run.report_file
    atomic_write_text(report, "\n\n".join("\n".join(section) for section in sections if section) + "\n")
    return report
