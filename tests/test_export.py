"""meddiff export (meddiff.training.export_onnx, issue 28): ONNX (under onnxruntime; skipped without the [export] extra)
and TorchScript exports of a checkpoint's per-step network match eager torch at other batch sizes and times than the
traced ones, sample the same images through meddiff's sampler, and bad input gives one-line errors.

Tolerance: |export - eager| <= 1e-4 absolute per network call (float32; measured ~1e-6 for ONNX, 0 for TorchScript)
and <= 1e-3 on the samples of a 4-step DDIM run (errors pass through the steps)."""

from __future__ import annotations

import json

import pytest
import torch

from meddiff.cli.main import main
from meddiff.errors import MeddiffError
from meddiff.nets import CLASS_LABELS
from meddiff.tasks.synthesis import generate
from meddiff.training import load_checkpoint
from meddiff.training.export_onnx import example_inputs, export_checkpoint_network, export_network, load_exported

from test_distill import train_teacher  # noqa: E402  (the tiny class-conditional teacher checkpoint)

ATOL_CALL, ATOL_SAMPLES = 1e-4, 1e-3

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def onnx_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


FORMATS = [pytest.param("onnx", marks=pytest.mark.skipif(not onnx_available(), reason="needs the [export] extra")),
           "torchscript"]
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return train_teacher(tmp_path_factory.mktemp("export"))


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_matches_eager_torch_and_samples_the_same_images(checkpoint, tmp_path, fmt):
    out = tmp_path / f"net{SUFFIX[fmt]}"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", fmt, "--out", str(out)]) == 0
    info = json.loads((tmp_path / f"net{SUFFIX[fmt]}.json").read_text())
    assert info["inputs"] == ["x", "t", CLASS_LABELS] and info["max_abs_error_vs_eager"] <= ATOL_CALL
    model, meta = load_checkpoint(checkpoint)
    exported, exported_meta = load_exported(out)
    assert exported_meta["schedule"] == meta["schedule"] and exported_meta["prediction"] == meta["prediction"]
    # batch 5 (traced at 1), times and labels other than the tracing inputs
    x, t, labels = example_inputs(meta, batch=5, seed=11)
    with torch.no_grad():
        reference = model(x, t, class_labels=labels)
    assert reference.abs().max() > 0.1  # a non-trivial network (the tiny teacher's weights are randomised)
    error = float((exported(x, t, class_labels=labels) - reference).abs().max())
    assert error <= ATOL_CALL
    # the labels are an input of the exported graph (not frozen at the traced value): other labels, other output,
    # matching eager torch with those labels, and the change is far larger than the export error
    with torch.no_grad():
        other = model(x, t, class_labels=1 - labels)
    torch.testing.assert_close(exported(x, t, class_labels=1 - labels), other, atol=ATOL_CALL, rtol=0)
    assert (other - reference).abs().max() > 100 * max(error, 1e-7)
    # the exported network in meddiff's sampler: same samples as eager torch
    eager, _ = generate(checkpoint, 4, sampler="ddim", steps=4, model=model, meta=meta, seed=3)
    via_export, _ = generate(out, 4, sampler="ddim", steps=4, model=exported, meta=exported_meta, seed=3)
    torch.testing.assert_close(via_export, eager, atol=ATOL_SAMPLES, rtol=0)


def test_export_rejects_wrong_suffix_and_bad_exports(checkpoint, tmp_path):
    with pytest.raises(MeddiffError, match=r"--out .*\.pt file"):
        export_checkpoint_network(checkpoint, "torchscript", tmp_path / "net.onnx")
    with pytest.raises(MeddiffError, match="--format"):
        export_checkpoint_network(checkpoint, "tflite", tmp_path / "net.tflite")
    # a check that cannot pass (negative tolerance) refuses to write anything
    with pytest.raises(MeddiffError, match="differs from eager torch"):
        export_checkpoint_network(checkpoint, "torchscript", tmp_path / "net.pt", atol=-1.0)
    assert list(tmp_path.iterdir()) == []
    # an exported network that is wrong is caught by the check: export a network, verify it against another one
    model, meta = load_checkpoint(checkpoint)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01)
    info = export_network(model, meta, "torchscript", tmp_path / "shifted.pt")
    shifted, _ = load_exported(tmp_path / "shifted.pt")
    original, _ = load_checkpoint(checkpoint)
    x, t, labels = example_inputs(meta, batch=2, seed=4)
    with torch.no_grad():
        assert (shifted(x, t, class_labels=labels) - original(x, t, class_labels=labels)).abs().max() > ATOL_CALL
    assert info["max_abs_error_vs_eager"] <= ATOL_CALL
    with pytest.raises(MeddiffError, match="sidecar"):
        load_exported(tmp_path / "missing.pt")
    with pytest.raises(MeddiffError, match="class-conditional"):
        shifted(x, t)


def test_export_cli_reports_a_non_synthesis_checkpoint(tmp_path, capsys):
    assert main(["export", "--checkpoint", "brats_classifier", "--format", "torchscript",
                 "--out", str(tmp_path / "f.pt")]) != 0
    assert "synthesis" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", FORMATS)
def test_sample_cli_runs_an_export_like_its_checkpoint(checkpoint, tmp_path, fmt):
    """`meddiff sample --checkpoint F.onnx|F.pt` samples through the exported network with the checkpoint's meta: the
    same images (within ATOL_SAMPLES) as sampling the checkpoint itself; a GPU device is refused in one line."""
    import numpy as np

    out = tmp_path / f"net{SUFFIX[fmt]}"
    export_checkpoint_network(checkpoint, fmt, out)
    args = ["--n", "3", "--sampler", "ddim", "--steps", "4", "--seed", "5", "--class", "1"]
    assert main(["sample", "--checkpoint", str(checkpoint), *args, "--out", str(tmp_path / "eager")]) == 0
    assert main(["sample", "--checkpoint", str(out), *args, "--out", str(tmp_path / "export")]) == 0
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert manifest["checkpoint"] == str(out) and manifest["steps"] == 4
    eager, exported = (np.load(tmp_path / name / "samples.npy") for name in ("eager", "export"))
    assert eager.shape[0] == 3 and np.abs(eager).max() > 0.05
    np.testing.assert_allclose(exported, eager, atol=ATOL_SAMPLES, rtol=0)
    from meddiff.tasks.synthesis import sample_to_folder

    with pytest.raises(MeddiffError, match="runs on the CPU|CUDA is not available") as error:  # with / without CUDA
        sample_to_folder(out, tmp_path / "gpu", 1, device="cuda")
    assert "\n" not in str(error.value)
