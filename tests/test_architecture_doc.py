"""docs/architecture.md teaches how to add a method: its code, run as written, must train one.

The test takes the page's code blocks marked ``toy-method`` and runs them in a fresh interpreter
(the registration is global), with nothing but ``run_dir`` given; then it checks the run wrote an
encoder and that the method is the page's, not a built-in.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "architecture.md"


def toy_method_code() -> str:
    blocks = re.findall(r"```python toy-method\n(.*?)```", PAGE.read_text(), flags=re.S)
    assert len(blocks) >= 2, "the page lost its toy-method blocks"
    return "\n".join(blocks)


def test_the_pages_toy_method_trains(tmp_path):
    run_dir = tmp_path / "toy"
    script = f"run_dir = {str(run_dir)!r}\n" + toy_method_code()
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "encoder.safetensors").is_file()
    config = (run_dir / "config.yaml").read_text()
    assert "toy-cosine" in config
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "epoch"] == [2]
    # the page's optimiser default reached the run: the method's config_defaults were read
    assert "adamw" in config
