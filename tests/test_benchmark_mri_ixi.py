"""benchmarks/mri_reconstruction.py --domain ixi (benchmarks/mri_ixi.py) end to end on one IXI test slice: one mask,
the classical rows (CS weights tuned on one val slice over a two-entry grid), CS with the true maps and one diffusion
solver with one step; then a re-run with the same --out skips every done row (issue 21)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.fixture()
def bench(shared_data, monkeypatch):
    import mri_ixi
    import mri_reconstruction

    monkeypatch.setattr(mri_ixi, "DATA", shared_data / "ixi_t1_2mm_dlmuse")
    monkeypatch.setattr(mri_ixi, "LAMBDA_GRID", {"cs-wavelet": [{"lam": 0.004}, {"lam": 0.008}],
                                                 "cs-tv": [{"lam": 0.004, "rho": 0.05}, {"lam": 0.008, "rho": 0.05}]})
    return mri_reconstruction, mri_ixi


def test_ixi_benchmark_rows_and_resume(bench, tmp_path, monkeypatch, capsys):
    mri_reconstruction, mri_ixi = bench
    out = tmp_path / "ixi.json"
    methods = ["zero-filled", "sense", "cs-wavelet", "cs-tv", mri_ixi.TRUE_MAPS, "ddnm"]
    argv = ["--domain", "ixi", "--subjects", "1", "--slices", "1", "--val-subjects", "1", "--settings", "gaussian:4",
            "--seeds", "0", "--diffusion-seeds", "0", "--steps", "1", "--samples", "2", "--methods", *methods,
            "--out", str(out)]
    assert mri_reconstruction.main(argv) == 0
    result = json.loads(out.read_text())
    rows = {r["method"]: r for r in result["rows"]}
    assert sorted(rows) == sorted(methods) and len(result["rows"]) == len(methods)
    for r in result["rows"]:
        assert {"subject", "slice", "pattern", "acceleration", "seed", "psnr", "psnr_fg", "ssim", "seconds",
                "nfe", "settings"} <= set(r)
        assert (r["subject"], r["pattern"], r["acceleration"], r["seed"]) == (result["cases"][0]["subject"],
                                                                              "gaussian", 4, 0)
    assert rows["cs-wavelet"]["psnr"] > rows["zero-filled"]["psnr"] + 1
    assert rows["cs-wavelet"]["settings"]["lam"] == result["tuning"]["gaussian:4"]["cs-wavelet"]["best"]["lam"]
    assert rows[mri_ixi.TRUE_MAPS]["settings"]["lam"] == rows["cs-wavelet"]["settings"]["lam"]
    assert rows["ddnm"]["nfe"] == 1 and rows["ddnm"]["settings"]["samples"] == 2
    assert rows["ddnm"]["settings"]["init_lambda"] == rows["cs-wavelet"]["settings"]["lam"]
    assert "std_error_corr" in rows["ddnm"]
    # the cases are test-split slices; the tuning used a val subject
    split = json.loads(mri_ixi.SPLIT.read_text())
    assert result["cases"][0]["subject"] in split["test"]
    assert all(s.split()[0] in split["val"] for s in result["tuning_slices"])
    summary = {s["method"]: s for s in result["summary"]}
    assert summary["cs-wavelet"]["vs_cs_mean"] == 0 and summary["zero-filled"]["vs_cs_mean"] < 0
    table = out.with_suffix(".md").read_text()
    assert "| gaussian 4x | cs-wavelet |" in table and "vs CS" in table and "Target at 4x" in table

    # resume: nothing left to run (a row computation would fail), the rows stay as they were
    def fail(*args, **kwargs):
        raise AssertionError("a done row was recomputed")

    monkeypatch.setattr(mri_ixi, "method_row", fail)
    monkeypatch.setattr(mri_ixi, "tune_lambdas", fail)
    capsys.readouterr()
    assert mri_reconstruction.main(argv) == 0
    assert f"resuming {out}: {len(methods)} rows done" in capsys.readouterr().out
    assert json.loads(out.read_text())["rows"] == result["rows"]
    # another noise level must not be mixed into the same file
    with pytest.raises(Exception, match="another configuration"):
        mri_reconstruction.main(argv + ["--noise-sd", "0.02"])
