"""The MRI section of the demo report (``meddiff demo``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from meddiff.errors import check_choice
from meddiff.tasks.mri.evaluation import calibration_plot
from meddiff.tasks.mri.prior import load_prior, untrained_prior
from meddiff.tasks.mri.problem import make_problem
from meddiff.tasks.mri.solvers import SOLVERS, reconstruct


def _row(name: str, image: torch.Tensor, reference: torch.Tensor, top: float, fg: torch.Tensor, result) -> dict:
    from meddiff.metrics.image import psnr, ssim

    return {"method": name, "psnr_db": float(psnr(image, reference, top)),
            "psnr_fg_db": float(psnr(image, reference, top, mask=fg)), "ssim": float(ssim(image, reference, top)),
            "nfe": result.nfe, "seconds": result.seconds}


def report_section(out_dir: str | Path, *, method: str = "ddnm", pattern: str = "gaussian", acceleration: int = 4,
                   seed: int = 0, checkpoint: str | Path | None = None, steps: int | None = None,
                   samples: int | None = None, log=print, **params) -> dict:
    """Demo-report section on the embedded 8-coil brain k-space: reference, zero-filled, CG-SENSE, CS-wavelet and a
    diffusion solver (``params``: its settings, default ``SOLVER_DEFAULTS``) with their error maps, the per-pixel std
    and its calibration plot; {"title", "text", "table", "figure"}. The table has one more row, the same solver with
    the prior's network untrained ("<method> untrained", ``untrained_prior``): the difference is what the trained
    prior adds."""
    from PIL import Image

    from meddiff.data.assets import asset_path
    from meddiff.physics import make_mask
    from meddiff.report import labelled_row, to_uint8
    from meddiff.files import write_png

    check_choice("method", method, SOLVERS)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    folder = asset_path("kspace_brain_8ch")
    kspace, reference = np.load(folder / "kspace.npy"), torch.from_numpy(np.load(folder / "rss_reference.npy"))
    mask = make_mask(tuple(kspace.shape[-2:]), acceleration, pattern, acs_fraction=0.08, seed=seed, axis=-2)
    problem = make_problem(kspace, mask)
    top = float(reference.max())
    fg = reference > 0.1 * top
    prior = load_prior(checkpoint)
    priors = {method: prior, f"{method} untrained": untrained_prior(prior)}
    images, rows, std, settings = {}, [], None, {}
    for name in ("zero-filled", "sense", "cs-wavelet", method, f"{method} untrained"):
        solver = {"prior": priors[name], "steps": steps, "samples": samples, **params} if name in priors else {}
        result = reconstruct(kspace, mask, name.split()[0], maps=problem.maps, seed=seed, **solver)
        image = torch.from_numpy(result.image)
        if name == method:
            std, settings = result.std, result.settings
        if name in priors and name != method:  # the control: in the table, not in the figure
            rows.append(_row(name, image, reference, top, fg, result))
            log(f"  MRI {name:14s} PSNR {rows[-1]['psnr_db']:.2f} dB (fg {rows[-1]['psnr_fg_db']:.2f})  "
                f"{result.seconds:.1f}s")
            continue
        images[name] = image
        rows.append(_row(name, image, reference, top, fg, result))
        log(f"  MRI {name:14s} PSNR {rows[-1]['psnr_db']:.2f} dB (fg {rows[-1]['psnr_fg_db']:.2f})  "
            f"{result.seconds:.1f}s")
    err_top = 0.2 * top
    panels = [to_uint8(reference.numpy(), 0, top)] + [to_uint8(im.numpy(), 0, top) for im in images.values()]
    labels = ["fully sampled RSS"] + list(images)
    panels += [to_uint8(np.abs(im.numpy() - reference.numpy()), 0, err_top) for im in images.values()]
    labels += [f"|error| {n} (0-{err_top:.0f})" for n in images]
    error = np.abs(images[method].numpy() - reference.numpy())
    inside = fg.numpy()
    corr = float(np.corrcoef(std[inside], error[inside])[0, 1]) if std.std() > 0 else float("nan")
    panels.append(to_uint8(std, 0, float(np.quantile(std, 0.995)) or 1.0))
    labels.append(f"std ({method}, corr {corr:.2f})")
    plot = calibration_plot(std[inside], error[inside], size=reference.shape[0])
    panels = [np.stack([p] * 3, -1) if p.ndim == 2 else p for p in panels] + [plot]
    labels.append("calibration (fg)")
    half = 1 + len(images)  # reference and the images on top; error maps, std and calibration below
    upper, lower = labelled_row(panels[:half], labels[:half]), labelled_row(panels[half:], labels[half:])
    both = Image.new("RGB", (max(upper.width, lower.width), upper.height + lower.height), "white")
    both.paste(upper, (0, 0))
    both.paste(lower, (0, upper.height))
    figure = write_png(out / "mri_diffusion.png", both)
    by = {row["method"]: row for row in rows}
    ours, control, cs = by[method], by[f"{method} untrained"], by["cs-wavelet"]
    return {"title": f"MRI reconstruction with the brain diffusion prior ({pattern} {acceleration}x, {method})",
            "text": f"Retrospective {pattern} {acceleration}x undersampling (8 % ACS, mask seed {seed}) of the "
                    f"embedded 8-coil k-space; '{method}' with the shipped brain prior refines the L1-wavelet CS image "
                    f"noised to {100 * settings['start']:g} % of the diffusion time. What the trained prior adds: "
                    f"{ours['psnr_db']:.2f} dB (foreground {ours['psnr_fg_db']:.2f}) against "
                    f"{control['psnr_db']:.2f} ({control['psnr_fg_db']:.2f}) with the same network untrained; CS "
                    f"alone scores {cs['psnr_db']:.2f} ({cs['psnr_fg_db']:.2f}): with today's prior the solver is no "
                    f"better than CS (benchmarks/README.md). "
                    f"Top: images; bottom: error maps (0-{err_top:.0f}), the per-pixel std over the posterior samples "
                    f"and the RMS error per std decile on the foreground (grey: y = x); std-error correlation "
                    f"{corr:.2f}. See benchmarks/README.md.",
            "table": rows, "figure": figure}
