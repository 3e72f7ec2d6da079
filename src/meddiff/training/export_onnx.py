"""Export a checkpoint's per-step network (``model(x, t[, class_labels]) -> prediction``) to ONNX or TorchScript, and
run the exported file in place of the torch network (issue 28: real-time sampling of distilled students).

The exported graph is the network alone, not the sampler: a few-step student is sampled by meddiff's own sampler
(`meddiff.tasks.synthesis.generate(..., model=exported, meta=meta)`) on the grid recorded in its meta, each step one
call of the exported network. Inputs: ``x`` (B, C, *spatial) float32, ``t`` (B,) float32 discrete times, and for
class-conditional models ``class_labels`` (B,) int64; output (B, C, *spatial) in the checkpoint's parametrisation
(eps, x0 or v). The batch axis is dynamic. Next to ``F`` a ``F.json`` sidecar holds the checkpoint's meta (schedule,
prediction, sampling grid), the input names and the measured export error, so ``load_exported(F)`` can sample it.

ONNX uses torch's TorchScript-based exporter (``dynamo=False``, opset 17; it needs the ``onnx`` package) and runs
under onnxruntime (the ``[export]`` extra); TorchScript is a traced, frozen module (`torch.jit.trace`,
`torch.jit.freeze`) that needs nothing beyond torch. Every export is checked against eager torch on random inputs at
batch 1 and 2 and at early, middle and late times; an error above ``atol`` (default 1e-4, absolute, float32) aborts
the export with a one-line error.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from meddiff.errors import MeddiffError, check_choice
from meddiff.files import atomic_path, write_text
from meddiff.nets.unet import CLASS_LABELS, GUIDANCE_SCALE

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
DEFAULT_ATOL = 1e-4
ONNX_OPSET = 17


class StepNetwork(torch.nn.Module):
    """The network with positional inputs (x, t, *conditions), the signature an exported graph has; ``conditions``
    names the keyword inputs after x and t (class_labels, guidance_scale)."""

    def __init__(self, model: torch.nn.Module, conditions: list[str]) -> None:
        super().__init__()
        self.model, self.conditions = model, list(conditions)

    def forward(self, x: Tensor, t: Tensor, *values: Tensor) -> Tensor:
        return self.model(x, t, **dict(zip(self.conditions, values)))


def input_names(meta: dict) -> list[str]:
    """x, t, then class_labels (class-conditional) and guidance_scale (guidance-distilled students)."""
    names = ["x", "t"]
    if meta.get("num_classes"):
        names.append(CLASS_LABELS)
    if (meta.get("network") or {}).get("guidance_input"):
        names.append(GUIDANCE_SCALE)
    return names


def example_inputs(meta: dict, batch: int = 1, seed: int = 0, times: Tensor | None = None) -> tuple[Tensor, ...]:
    """Random inputs of the network: x (batch, C, *spatial) N(0, 1), t (batch,) float, class labels (batch,) int64,
    guidance scales (batch,) float in the student's range."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, meta["channels"], *meta["image_size"]), generator=generator)
    steps = (meta.get("schedule") or {}).get("num_train_steps", 1000)
    t = times if times is not None else torch.randint(0, steps, (batch,), generator=generator).float()
    inputs = [x, t]
    if meta.get("num_classes"):
        inputs.append(torch.randint(0, meta["num_classes"], (batch,), generator=generator))
    if GUIDANCE_SCALE in input_names(meta):
        low, high = (meta.get("sampling") or {}).get("guidance_range") or (1.0, 1.0)
        inputs.append(low + (high - low) * torch.rand(batch, generator=generator))
    return tuple(inputs)


def _feeds(names: list[str], x: Tensor, t: Tensor, cond: dict) -> list[Tensor]:
    """The exported graph's inputs in order, from the torch-style call (x, t, **cond); t expanded to (B,)."""
    values = [x.detach().float().cpu(), t.detach().float().cpu().reshape(-1).expand(len(x)).contiguous()]
    for name in names[2:]:
        if cond.get(name) is None:
            raise MeddiffError(f"this exported network needs {name} (B,): it is "
                               f"{'class-conditional' if name == CLASS_LABELS else 'a guidance-distilled student'}")
        value = cond[name].detach().cpu()
        values.append(value.long() if name == CLASS_LABELS else value.float().reshape(-1).expand(len(x)).contiguous())
    return values


def _check_network(meta: dict) -> None:
    network = meta.get("network") or {}
    if meta.get("task") != "synthesis" or not network:
        raise MeddiffError(f"export supports synthesis (denoising) checkpoints; this one is a {meta.get('task')!r} "
                           "checkpoint")
    if network.get("cond_channels"):
        raise MeddiffError("export of image-conditional networks (cond_channels > 0) is not supported yet")


def _export_file(model: torch.nn.Module, meta: dict, fmt: str, tmp: Path) -> None:
    names = input_names(meta)
    wrapper = StepNetwork(model, names[2:]).eval()
    inputs = example_inputs(meta, batch=1)
    with warnings.catch_warnings():  # the exporters' deprecation and tracer warnings: the export is verified instead
        warnings.simplefilter("ignore")
        if fmt == "onnx":
            try:
                import onnx  # noqa: F401  (torch's exporter needs it; say so before torch fails deep inside)
            except ImportError:
                raise MeddiffError("--format onnx needs the onnx package: pip install 'meddiff[export]' "
                                   "(onnx, onnxruntime), or use --format torchscript") from None
            dynamic = {name: {0: "batch"} for name in (*names, "out")}
            with torch.no_grad():
                torch.onnx.export(wrapper, inputs, str(tmp), dynamo=False, opset_version=ONNX_OPSET,
                                  input_names=names, output_names=["out"], dynamic_axes=dynamic)
        else:
            with torch.no_grad():
                traced = torch.jit.trace(wrapper, inputs, check_trace=False)
                torch.jit.save(torch.jit.freeze(traced.eval()), str(tmp))


class OnnxNetwork:
    """An exported ONNX network under onnxruntime, called like the torch network: ``net(x, t, **cond)`` (class_labels,
    guidance_scale) with torch tensors in, a float32 torch tensor out. ``threads`` intra-op threads (None: torch's thread count)."""

    def __init__(self, path: str | Path, names: list[str], threads: int | None = None) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise MeddiffError(f"{path}: running an ONNX export needs onnxruntime: pip install 'meddiff[export]'"
                               ) from None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.names = names

    def __call__(self, x: Tensor, t: Tensor, **cond) -> Tensor:
        feed = {name: value.numpy() for name, value in zip(self.names, _feeds(self.names, x, t, cond))}
        return torch.from_numpy(self.session.run(None, feed)[0])


class TorchScriptNetwork:
    """A traced TorchScript export called like the torch network (inputs on the CPU)."""

    def __init__(self, path: str | Path, names: list[str]) -> None:
        self.module, self.names = torch.jit.load(str(path), map_location="cpu"), names

    def __call__(self, x: Tensor, t: Tensor, **cond) -> Tensor:
        return self.module(*_feeds(self.names, x, t, cond))


def sidecar(path: str | Path) -> Path:
    """The JSON written next to an exported file F: F.json."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def load_exported(path: str | Path, *, threads: int | None = None) -> tuple[Callable[..., Tensor], dict]:
    """(network callable, the checkpoint's meta) of a file written by `export_network` (format from its sidecar)."""
    path = Path(path)
    info_path = sidecar(path)
    if not path.is_file() or not info_path.is_file():
        raise MeddiffError(f"{path}: not an export of meddiff export (the file and its {info_path.name} sidecar are "
                           "needed)")
    info = json.loads(info_path.read_text())
    if info["format"] == "onnx":
        return OnnxNetwork(path, info["inputs"], threads), info["meta"]
    return TorchScriptNetwork(path, info["inputs"]), info["meta"]


def max_export_error(model: torch.nn.Module, exported: Callable[..., Tensor], meta: dict) -> float:
    """Largest |exported - eager| over random inputs at batch 1 and 2, at times 0, T/2 and T-1 (and random ones)."""
    steps = (meta.get("schedule") or {}).get("num_train_steps", 1000)
    error = 0.0
    for seed, (batch, times) in enumerate([(1, torch.tensor([0.0])), (1, torch.tensor([float(steps // 2)])),
                                           (1, torch.tensor([float(steps - 1)])), (2, None)]):
        inputs = example_inputs(meta, batch, seed=seed, times=times)
        cond = dict(zip(input_names(meta)[2:], inputs[2:]))
        with torch.no_grad():
            reference = model(inputs[0], inputs[1], **cond)
            error = max(error, float((exported(inputs[0], inputs[1], **cond) - reference).abs().max()))
    return error


def export_network(model: torch.nn.Module, meta: dict, fmt: str, out: str | Path, *, atol: float = DEFAULT_ATOL
                   ) -> dict:
    """Write ``model`` (eval mode, CPU) as ``fmt`` to ``out`` plus the ``out.json`` sidecar, atomically, after checking
    the export against eager torch (max abs error <= atol, else MeddiffError). Returns the sidecar's content."""
    check_choice("--format", fmt, FORMATS)
    _check_network(meta)
    out = Path(out)
    if out.suffix != SUFFIXES[fmt]:
        raise MeddiffError(f"--out {out}: a {fmt} export is written to a {SUFFIXES[fmt]} file")
    model = model.float().cpu().eval()
    names = input_names(meta)
    with atomic_path(out) as tmp:
        _export_file(model, meta, fmt, tmp)
        exported = OnnxNetwork(tmp, names) if fmt == "onnx" else TorchScriptNetwork(tmp, names)
        error = max_export_error(model, exported, meta)
        if not error <= atol:
            raise MeddiffError(f"--out {out}: the {fmt} export differs from eager torch by {error:.3g} > atol {atol:g}; "
                               "not written")
    info = {"format": fmt, "inputs": names, "output": "out", "batch_axis": "dynamic",
            "opset": ONNX_OPSET if fmt == "onnx" else None, "max_abs_error_vs_eager": error, "atol": atol,
            "torch": torch.__version__, "meta": meta}
    write_text(sidecar(out), json.dumps(info, indent=1, default=str) + "\n")
    return info


def export_checkpoint_network(checkpoint: str | Path, fmt: str, out: str | Path, *, atol: float = DEFAULT_ATOL
                              ) -> dict:
    """`export_network` of a checkpoint (run dir, checkpoint dir or shipped name), weights as float32."""
    from meddiff.training.checkpoint import load_checkpoint

    check_choice("--format", fmt, FORMATS)
    model, meta = load_checkpoint(checkpoint)
    _check_network(meta)
    return export_network(model, meta, fmt, out, atol=atol)


__all__ = ["DEFAULT_ATOL", "FORMATS", "OnnxNetwork", "StepNetwork", "TorchScriptNetwork", "example_inputs",
           "export_checkpoint_network", "export_network", "input_names", "load_exported", "max_export_error",
           "sidecar"]
