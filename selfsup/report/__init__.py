"""Plots and the markdown report of a run dir."""

from selfsup.report.plots import plot_probe_curves, plot_rank_curves
from selfsup.report.report import format_eval_table, format_verdict, read_metrics, write_report

__all__ = ["format_eval_table", "format_verdict", "plot_probe_curves", "plot_rank_curves", "read_metrics", "write_report"]
