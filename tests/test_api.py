"""The README's "Your own training loop" example runs as written, and selfsup.api holds what it
says it holds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_s_own_loop_example_trains_and_reports_health(tmp_path):
    blocks = re.findall(r"```python api-example\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1, "the README lost its api-example block"
    assert len(blocks[0].strip().splitlines()) <= 25  # a short example, as promised
    result = subprocess.run([sys.executable, "-c", blocks[0]], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    status, ranks = result.stdout.strip().split(" ", 1)
    assert status == "healthy"
    assert "('encoder'," in ranks and "('projector'," in ranks


def test_the_api_exports_every_name_it_lists_and_knows_every_method():
    import selfsup.api as api

    missing = [name for name in api.__all__ if not hasattr(api, name)]
    assert not missing
    assert {"simclr", "byol", "dino", "mae", "mlm"} <= set(api.METHODS.names())
    from selfsup import catalog

    assert catalog._plugins is not None  # importing the API loaded the plugins too
    assert callable(api.nt_xent) and callable(api.build_method)
