"""examples/quickstart.py runs from a fresh interpreter and says what the README promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart_runs(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "config: {'config/db/pool': 10, 'config/db/url': 'postgres://db.internal/app'}" in lines
    assert any(line.startswith("watch: PUT config/db/pool = 20 (revision ") for line in lines)
    assert "pool is now 30" in lines
    assert "watch: DELETE services/web-1" in lines
    assert "services/web-1 vanished when its lease ended: True" in lines
    assert proc.stderr == ""
