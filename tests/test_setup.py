"""`make demo` installs only what meddiff needs to run; `make test` adds the test extras (issue 20, item 14)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEST_ONLY = ("pytest", "diffusers", "tensorboard")


def dry_run(target: str, tmp_path: Path) -> str:
    """Commands `make TARGET` would run in a checkout without .venv (make -n executes nothing)."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "scripts").mkdir(exist_ok=True)
    shutil.copy(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    return subprocess.run(["make", "-n", target], cwd=tmp_path, capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_demo_setup_leaves_out_the_test_extras(tmp_path):
    demo, test = dry_run("demo", tmp_path), dry_run("test", tmp_path)
    assert "scripts/setup.sh\n" in demo and "setup.sh test" not in demo and "meddiff demo" in demo
    assert "scripts/setup.sh test" in test and "pytest" in test
    script = (ROOT / "scripts" / "setup.sh").read_text()
    assert 'target="."' in script and 'target=".[test]"' in script


def test_demo_code_path_imports_without_the_test_extras():
    """The CLI and the demo task import with pytest, diffusers and tensorboard made unimportable."""
    code = (
        "import sys\n"
        f"for name in {TEST_ONLY!r}: sys.modules[name] = None\n"
        "import meddiff.cli.main, meddiff.tasks.demo\n"
        "import meddiff.tasks.mri, meddiff.tasks.anomaly, meddiff.tasks.run_report\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
