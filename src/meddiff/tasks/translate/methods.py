"""Translation methods on batches of model-space slices (B, S, H, W) of the source contrast(s) -> (B, T, H, W) of
the target contrast(s), all in [-1, 1] with air at -1 (``meddiff.tasks.translate.data``):

- ``histogram_match``: the identity plus histogram matching of the brain voxels to the target contrast's
  training histogram (its quantiles), the baseline every method must beat;
- ``palette``: conditional diffusion with the source concatenated to the noisy target (Palette, Saharia et al.
  2022; SR3's conditioning), K samples by DDIM (Song et al. 2021) -> mean and per-pixel std;
- ``sdedit``: SDEdit (Meng et al. 2022): the guide (the histogram-matched source) is noised to level t0 and
  denoised by an unconditional prior of the target contrast; the Palette model cannot serve (it needs the source);
- ``regression``: one pass of the supervised UNet (``meddiff.training.regression``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from meddiff.diffusion import ModelDenoiser, get_sampler, make_grid
from meddiff.diffusion.guidance import ClipDenoised
from meddiff.diffusion.samplers import initial_noise
from meddiff.diffusion.timesteps import start_grid
from meddiff.errors import MeddiffError

QUANTILES = 257  # training-histogram resolution stored in translation.json (0 .. 100 % in steps of 1/256)


def quantiles(values: np.ndarray, n: int = QUANTILES) -> list[float]:
    """``n`` evenly spaced quantiles (0 .. 100 %) of ``values``: the histogram ``histogram_match`` maps onto."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise MeddiffError("quantiles: no values")
    return [round(float(q), 5) for q in np.quantile(v, np.linspace(0.0, 1.0, n))]


def histogram_match(source: np.ndarray, mask: np.ndarray, target_quantiles) -> np.ndarray:
    """Map the voxels of ``source`` inside ``mask`` monotonically so their histogram matches the one given by
    ``target_quantiles`` (classical histogram matching: x -> F_target^-1(F_source(x)), with F_source the empirical
    CDF over the masked voxels, ties sharing the mid-rank as in scikit-image's ``match_histograms``); outside the
    mask -1 (air). Any shape."""
    src = np.asarray(source, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise MeddiffError("histogram matching: empty brain mask")
    q = np.asarray(target_quantiles, dtype=np.float64)
    values, inverse, counts = np.unique(src[mask], return_inverse=True, return_counts=True)
    cdf = np.cumsum(counts) / counts.sum()  # F_source at each distinct value (scikit-image's convention)
    levels = np.linspace(0.0, 1.0, q.size)
    out = np.full(src.shape, -1.0)
    out[mask] = np.interp(cdf, levels, q)[inverse.ravel()]
    return out.astype(np.float32)


def pad_to_multiple(x: Tensor, multiple: int, value: float = -1.0) -> tuple[Tensor, tuple[int, int]]:
    """Pad (B, C, H, W) at the bottom/right with ``value`` to multiples of ``multiple``; returns the original size."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = torch.nn.functional.pad(x, (0, pw, 0, ph), value=value)
    return x, (h, w)


def palette(net, schedule, prediction: str, cond: Tensor, out_channels: int, *, steps: int = 20, samples: int = 4,
            seed: int = 0, eta: float = 0.0, multiple: int = 8) -> tuple[Tensor, Tensor, int]:
    """Palette sampling: ``samples`` draws per slice of p(target | source) by DDIM (eta 0: deterministic given the
    start noise) on a ``steps``-point trailing grid, x0 estimates clipped to [-1, 1].

    cond (B, S, H, W) source in model space -> (mean (B, T, H, W), std (B, T, H, W) over the samples (0 for one
    sample), network evaluations per sample). The start noise of sample k of slice b is drawn from a generator
    seeded with ``seed`` (all slices and samples at once), so a seed gives the same output."""
    if samples < 1 or steps < 1:
        raise MeddiffError(f"--samples {samples} and --steps {steps} must be positive integers")
    cond_p, (h, w) = pad_to_multiple(cond.float(), multiple)
    b = cond_p.shape[0]
    grid = make_grid(schedule, steps)
    generator = torch.Generator().manual_seed(int(seed))
    x = initial_noise(grid, (samples * b, out_channels, *cond_p.shape[-2:]), generator=generator)
    denoiser = ModelDenoiser(net, schedule, prediction)
    with torch.no_grad():
        out = get_sampler("ddim")(denoiser, x, grid, eta=eta, generator=generator,
                                  cond={"cond_image": cond_p.repeat(samples, 1, 1, 1)}, hook=ClipDenoised(-1.0, 1.0))
    out = out.clamp(-1, 1).reshape(samples, b, out_channels, *cond_p.shape[-2:])[..., :h, :w]
    std = out.std(0, unbiased=False) if samples > 1 else torch.zeros_like(out[0])
    return out.mean(0), std, grid.steps


def sdedit(prior, guide: Tensor, *, t0: float = 0.5, steps: int = 20, samples: int = 4, seed: int = 0,
           ) -> tuple[Tensor, Tensor, int]:
    """SDEdit (Meng et al. 2022, Alg. 1 with the deterministic DDIM reverse process): x_t0 = alpha_t0 guide +
    sigma_t0 z, then the unconditional ``prior`` (``meddiff.tasks.prior.Prior`` of the target contrast) denoises
    from t0 (a fraction of the diffusion time: small keeps the guide's anatomy, large its realism) to 0.

    guide (B, 1, H, W) in model space -> (mean, std over ``samples``, network evaluations per sample)."""
    if not 0 < t0 <= 1:
        raise MeddiffError(f"sdedit t0={t0!r} must be in (0, 1]")
    guide_p, (h, w) = pad_to_multiple(guide.float(), prior.multiple)
    grid = start_grid(prior.schedule, steps, t0)
    generator = torch.Generator().manual_seed(int(seed))
    g = guide_p.repeat(samples, 1, 1, 1)
    x = float(grid.alphas[0]) * g + float(grid.sigmas[0]) * torch.randn(g.shape, generator=generator)
    with torch.no_grad():
        out = get_sampler("ddim")(prior.denoiser, x, grid, generator=generator, hook=ClipDenoised(-1.0, 1.0))
    out = out.clamp(-1, 1).reshape(samples, guide.shape[0], guide.shape[1], *guide_p.shape[-2:])[..., :h, :w]
    std = out.std(0, unbiased=False) if samples > 1 else torch.zeros_like(out[0])
    return out.mean(0), std, grid.steps


def regression(model, cond: Tensor, multiple: int | None = None) -> Tensor:
    """The supervised UNet's prediction (B, T, H, W) for cond (B, S, H, W), clamped to [-1, 1]."""
    multiple = multiple or int(getattr(model, "multiple", 8))
    cond_p, (h, w) = pad_to_multiple(cond.float(), multiple)
    with torch.no_grad():
        return model(cond_p)[..., :h, :w].clamp(-1, 1)


def untrained_copy(net, seed: int = 0):
    """The same network freshly initialised (as ``meddiff train`` starts it), weights drawn under a forked RNG:
    the random-weight control of the benchmark and the quality test."""
    from meddiff.nets import build_network

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new = build_network(net.config)
    return new.eval()

