"""docs/architecture.md teaches how to add a method and a kind of data: their code, run as
written, must train (and evaluate) one.

The test takes the page's code blocks marked ``toy-method`` (or ``toy-modality``) and runs them in
a fresh interpreter (the registration is global), with nothing but ``run_dir`` given; then it
checks the run wrote an encoder and that the method or the data is the page's, not a built-in.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "architecture.md"


def page_code(mark: str) -> str:
    """The page's code blocks marked ``mark``, joined into one script."""
    blocks = re.findall(rf"```python {mark}\n(.*?)```", PAGE.read_text(), flags=re.S)
    assert len(blocks) >= 2, f"the page lost its {mark} blocks"
    return "\n".join(blocks)


def run_page_code(mark: str, run_dir: Path, after: str = "") -> None:
    """Run the page's ``mark`` blocks (then ``after``) in a fresh interpreter, as a user would."""
    script = f"run_dir = {str(run_dir)!r}\n" + page_code(mark) + "\n" + after
    result = subprocess.run([sys.executable, "-c", script], cwd=run_dir.parent,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_pages_toy_method_trains(tmp_path):
    run_dir = tmp_path / "toy"
    run_page_code("toy-method", run_dir)
    assert (run_dir / "encoder.safetensors").is_file()
    config = (run_dir / "config.yaml").read_text()
    assert "toy-cosine" in config
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "epoch"] == [2]
    # the page's optimiser default reached the run: the method's config_defaults were read
    assert "adamw" in config


def test_the_pages_toy_modality_trains_and_is_evaluated_against_its_baseline(tmp_path):
    run_dir = tmp_path / "rna"
    # seq-contrastive chose the page's RNA views by itself (no views.recipe was given)
    run_page_code("toy-modality", run_dir, after=(
        "from selfsup.registry import METHODS\n"
        "assert METHODS.get('seq-contrastive').view_recipe_for('rna') == 'rna-contrastive'\n"))
    spec = json.loads((run_dir / "encoder.json").read_text())
    assert spec["modality"] == "rna" and spec["tokenizer"] == {"name": "rna", "k": 1}
    assert spec["backbone"]["vocab_size"] == 10  # 4 specials, A C G U N, <mask>
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["dataset"] == "16s-rna"
    assert set(result["baselines"]) == {"composition", "random_init"}
    assert 0 < result["knn_top1"] <= 1
