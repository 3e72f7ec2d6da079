"""The `meddiff` entry point: help, the demo end to end, and one-line errors without tracebacks."""

import json
import subprocess
import sys

from meddiff.cli.main import build_parser, main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "meddiff.cli.main", *args], capture_output=True, text=True, timeout=600)


def test_help_lists_every_command_with_a_line():
    text = build_parser().format_help()
    for command in ("demo", "train", "data", "mask"):
        assert command in text
    result = run_cli("--help")
    assert result.returncode == 0 and "demo" in result.stdout


def test_demo_writes_report_results_and_figures(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--samples", "2000"]) == 0
    results = json.loads((out / "results.json").read_text())
    titles = [s["title"] for s in results["sections"]]
    assert any("Samplers" in t for t in titles) and any("MRI" in t for t in titles)
    mri = next(s for s in results["sections"] if "MRI" in s["title"])["table"]
    by_method = {row["method"]: row["psnr_db"] for row in mri}
    assert by_method["CS L1-wavelet"] > by_method["zero-filled"] + 3  # measured 33.0 vs 25.5 dB
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 3
    assert not list(out.glob(".*.tmp"))


def test_bad_argument_is_one_line_error_without_traceback(tmp_path):
    result = run_cli("demo", "--out", str(tmp_path), "--samples", "3")
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: --samples=3")
    assert "Traceback" not in result.stderr
