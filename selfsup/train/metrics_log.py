"""``metrics.jsonl``: one JSON object per line, appended and flushed as the run goes."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from selfsup.files import atomic_write_text


class MetricsLog:
    """Append-only JSON-lines log that a resumed run trims back to its checkpoint."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(_finite(record)) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (written after the checkpoint a run resumes from)."""
        kept = [r for r in read_metrics(self.path) if r.get("kind") == "run" or r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def start_afresh(self) -> None:
        """Drop every record: a run started anew in a folder where an attempt died before its
        first checkpoint must not carry that attempt's records."""
        self.path.unlink(missing_ok=True)


@dataclass
class ParsedMetrics:
    """What ``metrics.jsonl`` holds, line by line: the one parser of the file, whose callers
    choose what a bad line means (the trainer and the evaluation skip it; the report names it)."""

    records: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (line, record)
    torn_last_line: Optional[int] = None  # a last line cut short: what a kill leaves behind
    bad_lines: list[tuple[int, str]] = field(default_factory=list)  # (line, why) elsewhere


def parse_metrics(path: str | Path) -> ParsedMetrics:
    """Every line of ``path`` (none when it does not exist): JSON objects become records; a line
    that is not one (not UTF-8, not JSON, not an object) is the torn last line when it is the last,
    else a bad line."""
    path = Path(path)
    parsed = ParsedMetrics()
    if not path.is_file():
        return parsed
    lines = [(number, line) for number, line in enumerate(path.read_bytes().splitlines(), start=1)
             if line.strip()]
    for position, (number, line) in enumerate(lines):
        try:
            record = json.loads(line.decode("utf-8"))
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            if position == len(lines) - 1:
                parsed.torn_last_line = number
            else:
                parsed.bad_lines.append((number, str(error)))
            continue
        parsed.records.append((number, record))
    return parsed


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All complete records; a torn last line (a killed run) and any line that is not a JSON
    object (a damaged or hand-edited log) are skipped, so every record answers ``.get``."""
    return [record for _, record in parse_metrics(path).records]


def last_held_out_perplexity(records: Iterable[dict[str, Any]]) -> Optional[tuple[int, float]]:
    """(epoch, perplexity) of the last ``held_out`` record with a perplexity (MLM and next-token
    runs log one per epoch), or None when there is none. The last in file order: a resumed run's
    log is trimmed back to its checkpoint, so that is the latest."""
    last = None
    for record in records:
        if record.get("kind") == "held_out" and record.get("perplexity") is not None:
            last = record
    return None if last is None else (int(last["epoch"]), float(last["perplexity"]))


def _finite(value: Any) -> Any:
    """JSON has no NaN/Infinity: write them as strings so every line stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
