"""Markdown tables and their cells, shared by the run report and its fine-tuning section."""

from __future__ import annotations

from typing import Optional

MISSING = "—"  # a cell without a value


def percent(fraction: float) -> str:
    return f"{100 * fraction:.1f}%"


def accuracy_cell(accuracy: Optional[float], std: Optional[float]) -> str:
    """``85.3%``, or ``85.3% ± 0.4`` (the std in percentage points) when a std is known."""
    if accuracy is None:
        return MISSING
    cell = percent(accuracy)
    if std is not None:
        cell += f" ± {100 * std:.1f}"
    return cell


def markdown_table(header: list[str], rows: list[list[str]], right_aligned_from: int = 1) -> str:
    """A pipe table padded to equal column widths, so it reads well raw in a terminal and as markdown."""
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [cell.ljust(width) if i < right_aligned_from else cell.rjust(width)
                  for i, (cell, width) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(padded) + " |"

    # The rule spans each cell's padding too; a trailing colon marks a right-aligned column.
    rule = ["-" * (w + 2) if i < right_aligned_from else "-" * (w + 1) + ":"
            for i, w in enumerate(widths)]
    return "\n".join([line(header), "|" + "|".join(rule) + "|"] + [line(row) for row in rows])
