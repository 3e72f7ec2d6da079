"""The shared-data fixture skips outside CI but fails in CI when ../shared/data is missing (issue 20, item 12)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def run_copy(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    tests = tmp_path / "checkout" / "tests"  # no ../shared beside this checkout
    tests.mkdir(parents=True)
    shutil.copy(Path(__file__).with_name("conftest.py"), tests / "conftest.py")
    (tests / "test_needs_data.py").write_text("def test_uses(shared_data):\n    assert shared_data.is_dir()\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)],
                          cwd=tests.parent, env=env, capture_output=True, text=True, timeout=120)


def test_missing_shared_data_skips_outside_ci(tmp_path):
    result = run_copy(tmp_path, None)
    assert result.returncode == 0, result.stdout
    assert "1 skipped" in result.stdout


def test_missing_shared_data_fails_in_ci(tmp_path):
    result = run_copy(tmp_path, "true")
    assert result.returncode != 0
    assert "CI=true but real data folder" in result.stdout and "1 error" in result.stdout
