"""MRI reconstruction: centred k-space + sampling mask -> magnitude image on the RSS scale (and a per-pixel std).

Methods: the classical baselines of ``meddiff.physics`` (zero-filled RSS, CG-SENSE, L1-wavelet and TV CS) and four
diffusion solvers that run a brain prior through the generic hooks of ``meddiff.diffusion.inverse``:
- "pc": predictor-corrector (reverse diffusion + Langevin) with noised-measurement replacement after every step
  (Song et al. 2022, score-MRI style);
- "dps": DDIM (eta = 1) with the DPS measurement-gradient step (Chung et al. 2023);
- "ddnm": DDIM (eta = 0.85) with the DDNM null-space projection of every x0 prediction (Wang et al. 2023);
- "coarse-to-fine": K fast ancestral samples with noised-measurement replacement, averaged, then a short
  deterministic DDNM refinement (DDIM eta = 0) of the re-noised mean (after DiffuseRecon, Peng et al. 2022).
Every solver may start from noise (start = 1) or from an initial image (CG-SENSE or CS, ``init``) noised to
start x T ("come closer, diffuse faster", Chung et al. 2022); the defaults (``SOLVER_DEFAULTS``) do the latter.

How the prior meets the k-space (documented choices, measured in benchmarks/README.md):
- Multi-coil data use the SENSE model with ESPIRiT maps from the fully sampled centre (``estimate_sensitivity_maps``);
  single-coil (H, W) data use ``SingleCoilMRI``. The output is |x|, on the RSS scale because sum_c |S_c|^2 = 1.
- The prior is real (one channel): the image is x = s (v + 1) / 2 exp(i phi) with v the prior's [-1, 1] variable,
  phi the phase of the initial CG-SENSE (or CS) image (a low-resolution ACS phase lost 1.5 dB on CS: 30.3 vs
  31.8 dB) and s the 99.5th percentile of its magnitude (the training patches were scaled by their volume's 99.5th
  percentile). Data consistency replaces the measured
  k-space coil by coil and recombines with the maps (S^H F^H((1 - M) F S z + M y), score-MRI's multi-coil step),
  then keeps the real part in the phase frame. The exact SENSE projection x - A^+(A x - y) is not used: with 8
  coils at 4x-8x the data over-determine the image, so it returns the noise-amplified unregularised SENSE solution
  (measured: 22.4 dB vs 28.8 dB for 10-iteration CG-SENSE at 4x). The final magnitude is taken after one more
  complex consistency step, so the phase of the output comes from the data.
- The prior is fully convolutional; any (H, W) runs: the image is zero-padded (model value -1 = air) to a
  multiple of 2^(levels - 1) and cropped back. No resizing.
- K posterior samples run as one batch; the image is the mean of their magnitudes, the std map their per-pixel
  standard deviation (for coarse-to-fine: of the K coarse samples).
- Output magnitude (``combine``, every method): "sense" |x| of the SENSE-model image (default), or "rss", the RSS
  of the data-consistent coil images, the reference's own combination, which keeps the measured noise of every
  coil. The choice moves whole-image PSNR against the RSS reference by ~1 dB (background noise floor) and the
  foreground by ~0.1 dB (benchmarks/README.md): compare methods under one combination.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from meddiff.data import io
from meddiff.data.transforms import to_canonical
from meddiff.diffusion import ModelDenoiser, get_sampler, initial_noise, make_grid, make_schedule
from meddiff.diffusion.inverse import MeasurementReplacement, PosteriorGradient, Projection
from meddiff.diffusion.timesteps import TimeGrid
from meddiff.errors import MeddiffError, check_choice
from meddiff.physics import (MultiCoilMRI, SingleCoilMRI, centre_block, cg_sense, cs_tv, cs_wavelet,
                             estimate_sensitivity_maps, ifft2c, rss, zero_filled_rss)

BASELINES = ("zero-filled", "sense", "cs-wavelet", "cs-tv")
SOLVERS = ("pc", "dps", "ddnm", "coarse-to-fine")
METHODS = BASELINES + SOLVERS
# Per-solver defaults, chosen on development mask seed 100 (gaussian 4x; test seeds are 0-2) for the shipped prior,
# which is weak at this 1 mm scale: started from noise (start = 1) the solvers are 2.5-5.5 dB below CS (DDNM 10 steps,
# K = 2, benchmark row "ddnm-from-noise"), so by default they refine the L1-wavelet CS image from a small noise level
# (start = 1 % of T; "come closer, diffuse faster", Chung et al. 2022). See benchmarks/README.md.
INITS = ("sense", "cs-wavelet")  # the image a solver with start < 1 noises and refines
COMBINES = ("sense", "rss")  # how the complex image becomes the output magnitude (``combine_coils``)
SOLVER_DEFAULTS: dict[str, dict] = {
    "pc": {"steps": 3, "samples": 4, "snr": 0.05, "start": 0.01, "init": "cs-wavelet"},
    "dps": {"steps": 3, "samples": 4, "zeta": 1.0, "start": 0.01, "init": "cs-wavelet"},
    "ddnm": {"steps": 3, "samples": 4, "eta": 0.85, "start": 0.01, "init": "cs-wavelet"},
    "coarse-to-fine": {"steps": 3, "samples": 4, "start": 0.02, "init": "cs-wavelet", "refine_steps": 2,
                       "refine_start": 0.01},
}
PHASE_ACS = 24  # low-resolution phase from at most this centred block (Hann window)
SCALE_PERCENTILE = 99.5


@dataclass
class Reconstruction:
    """image (H, W) float32 on the RSS scale; std (H, W) or None; network evaluations; seconds; settings used."""

    image: np.ndarray
    std: np.ndarray | None = None
    nfe: int = 0
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)


IXI_T1_DIR = "../shared/data/ixi_t1_2mm_nichart"
PRIOR_PATCH = 64
PRIOR_ZOOM = (1.0, 2.0)      # patch pixel = 2 mm / zoom: covers the 2 mm training data and the ~1 mm test k-space
PRIOR_VAL_SUBJECTS = 2       # the last subjects (sorted) are held out as val
# T1-weighted volumes at about 1 mm (none is the k-space subject): (path, in-plane pixel in mm). Skull-stripped ones
# have their brain brighter relative to the 99.5th percentile than a head with scalp fat, hence the median rescaling.
ONE_MM_T1 = (
    ("../shared/data/brats_case_1/TCGA-FG-6692_t1.nii.gz", 1.0),
    ("../shared/data/brats_case_1/TCGA-FG-6692_t1ce.nii.gz", 1.0),
    ("../shared/data/voxelmorph_brain/test_scan.npz", 1.0),
    ("../shared/data/mni152/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz", 1.0),
    ("../shared/data/pyradiomics_brain1/image.nii.gz", 0.78125),
)
ONE_MM_MEDIAN = (0.3, 0.5)   # foreground median / 99.5th percentile drawn per crop (the k-space slice's is 0.39)


def _axial_volume(path: Path) -> np.ndarray:
    """A T1 volume (x, y, z) in RAS, axial slices along z, scaled to [0, 1] by its 99.5th foreground percentile;
    a VoxelMorph-style .npz ('vol', no affine) is taken as it is stored."""
    if path.suffix == ".npz":
        vol = np.load(path)["vol"].astype(np.float32)
    else:
        vol, meta = io.read_nifti(path)
        vol, _ = to_canonical(np.asarray(vol, dtype=np.float32)[None], meta)
        vol = np.asarray(vol)[0]
    vol = np.clip(vol, 0, None)
    return np.clip(vol / float(np.percentile(vol[vol > 0.1 * vol.max()], 99.5)), 0, 1)


def _random_crop(sl: np.ndarray, patch: int, zoom: float, rng: np.random.Generator) -> np.ndarray:
    """A (patch, patch) crop of the slice resampled by ``zoom`` (bicubic), randomly transposed and flipped."""
    side = min(int(round(patch / zoom)), *sl.shape)
    y0, x0 = rng.integers(0, sl.shape[0] - side + 1), rng.integers(0, sl.shape[1] - side + 1)
    crop = torch.from_numpy(np.ascontiguousarray(sl[y0:y0 + side, x0:x0 + side]))[None, None]
    crop = torch.nn.functional.interpolate(crop, size=(patch, patch), mode="bicubic", align_corners=False)[0, 0]
    crop = crop.clamp(0, 1).numpy()
    if rng.random() < 0.5:
        crop = crop.T
    return crop[:: rng.choice([-1, 1]), :: rng.choice([-1, 1])]


def make_prior_patches(out: str | Path = "runs/brain_mri_prior_patches.npz", source: str | Path = IXI_T1_DIR, *,
                       per_subject: int = 600, patch: int = PRIOR_PATCH, zoom: tuple[float, float] = PRIOR_ZOOM,
                       one_mm: tuple = (), per_one_mm: int = 1500, seed: int = 0) -> Path:
    """Random (patch x patch) crops of axial IXI T1 slices (RAS z >= 40, i.e. above the neck, with > 15 % foreground)
    at random zoom (pixel 2 mm / zoom), random flips and transposes, scaled by each volume's 99.5th foreground
    percentile to uint8 0..255, saved as a MedMNIST-style npz
    (train_images/val_images (N, patch, patch), labels 0), for the fully convolutional brain prior.
    ``one_mm``: extra (path, pixel mm) T1 volumes (e.g. ``ONE_MM_T1``), ``per_one_mm`` training crops each at a
    pixel of 0.8-1.25 mm, intensities rescaled so that the foreground median is in ``ONE_MM_MEDIAN``."""
    source = Path(source)
    files = sorted(source.glob("*_T1.nii*"))
    if not files:
        raise MeddiffError(f"{source}: no IXI *_T1.nii.gz volumes found (see ../shared/data/ixi_t1_2mm_nichart)")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    for n, path in enumerate(files):
        vol = _axial_volume(path)
        zs = [z for z in range(40, vol.shape[2]) if (vol[:, :, z] > 0.1).mean() > 0.15]  # cerebrum, not neck
        split = "val" if n >= len(files) - PRIOR_VAL_SUBJECTS else "train"
        for _ in range(per_subject if split == "train" else per_subject // 4):
            crop = _random_crop(vol[:, :, zs[rng.integers(len(zs))]], patch, float(rng.uniform(*zoom)), rng)
            parts[split].append(np.rint(crop * 255).astype(np.uint8))
    for path, pixel in one_mm:
        path = Path(path)
        if not path.is_file():
            raise MeddiffError(f"{path}: 1 mm T1 volume for the prior not found (see ../shared/data/README.md)")
        vol = _axial_volume(path)
        median = float(np.median(vol[vol > 0.1]))
        zs = [z for z in range(vol.shape[2]) if (vol[:, :, z] > 0.1).mean() > 0.1]
        for _ in range(per_one_mm):
            for _attempt in range(10):  # skull-stripped volumes: mostly tissue, not background
                crop = _random_crop(vol[:, :, zs[rng.integers(len(zs))]], patch, pixel / float(rng.uniform(0.8, 1.25)),
                                    rng)
                if (crop > 0.1).mean() > 0.3:
                    break
            crop = np.clip(crop * float(rng.uniform(*ONE_MM_MEDIAN)) / median, 0, 1)
            parts["train"].append(np.rint(crop * 255).astype(np.uint8))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"{s}_{k}": v for s in parts for k, v in
              (("images", np.stack(parts[s])), ("labels", np.zeros((len(parts[s]), 1), np.int64)))}
    with io.atomic_path(out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    return out


# ----------------------------------------------------------------------------------------------- inputs
def load_kspace(path: str | Path, *, slice_index: int | None = None) -> np.ndarray:
    """Centred k-space (C, H, W) or (H, W) complex64 from .npy, .h5 (fastMRI: dataset 'kspace' (slices, C, H, W);
    ``slice_index`` picks a slice, default the middle one) or BART .cfl/.hdr."""
    path = Path(path)
    if not path.exists() and not (io.suffix_of(path) in (".cfl", ".hdr") and path.with_suffix(".cfl").exists()):
        raise MeddiffError(f"--kspace {path}: no such file")
    fmt = io.detect_format(path)
    if fmt == "hdf5":
        arr, _ = io.read_image(path, key="kspace", allow_nan=True)
    elif fmt in ("npy", "cfl"):
        arr, _ = io.read_image(path, allow_nan=True)
    else:
        raise MeddiffError(f"--kspace {path}: k-space must be .npy, .h5 (fastMRI layout) or .cfl/.hdr, got {fmt}")
    arr = np.asarray(arr)
    if arr.ndim == 4:
        index = arr.shape[0] // 2 if slice_index is None else slice_index
        if not 0 <= index < arr.shape[0]:
            raise MeddiffError(f"--slice {index} is outside the {arr.shape[0]} slices of {path}")
        arr = arr[index]
    return arr


def load_mask(path: str | Path) -> np.ndarray:
    """Sampling mask from .npy: (H, W), or (W,) for a line pattern shared by all rows; 1 = measured."""
    path = Path(path)
    if not path.is_file():
        raise MeddiffError(f"--mask {path}: no such file")
    arr, _ = io.read_image(path, allow_nan=True)
    return np.asarray(arr)


def _check_inputs(kspace, mask) -> tuple[Tensor, Tensor]:
    """kspace (C, H, W) or (H, W) complex64 and mask (H, W) float32 0/1, with errors naming the argument."""
    k = torch.as_tensor(np.asarray(kspace)) if not isinstance(kspace, Tensor) else kspace
    if not k.is_complex():
        raise MeddiffError(f"kspace must be complex (complex64 centred k-space), got {k.dtype}; store k-space as a "
                           "complex array (e.g. np.complex64), not magnitudes or real/imaginary channels")
    if k.ndim not in (2, 3):
        raise MeddiffError(f"kspace must have shape (coils, H, W) or (H, W), got {tuple(k.shape)}")
    if not bool(torch.isfinite(k).all()):
        raise MeddiffError(f"kspace contains {int((~torch.isfinite(k)).sum())} NaN/infinite value(s); replace them "
                           "(e.g. by 0 and mark them unmeasured in the mask)")
    k = k.to(torch.complex64)
    m = torch.as_tensor(np.asarray(mask)) if not isinstance(mask, Tensor) else mask
    h, w = k.shape[-2:]
    if m.is_complex() or m.dtype == torch.bool:
        m = m.real.float() if m.is_complex() else m.float()
    m = m.float()
    if not bool(torch.isfinite(m).all()):
        raise MeddiffError("mask contains NaN/infinite values; use 1 = measured, 0 = not measured")
    if m.ndim == 1 and m.shape[0] == w:
        m = m[None, :].expand(h, w)
    if m.ndim != 2 or tuple(m.shape) != (h, w):
        raise MeddiffError(f"mask has shape {tuple(m.shape)} but the k-space is (H, W) = {(h, w)}; give a mask of "
                           f"shape {(h, w)} or ({w},)")
    if not bool(((m == 0) | (m == 1)).all()):
        raise MeddiffError("mask must hold only 0 and 1 (1 = measured)")
    if not bool(m.any()):
        raise MeddiffError("mask is empty (no measured k-space sample); nothing to reconstruct")
    return k, m.contiguous()


# ----------------------------------------------------------------------------------------------- physics
@dataclass
class MRIProblem:
    """Operator, masked data y (B=1 leading axis), coil maps (multi-coil) and the CG-SENSE start."""

    op: object
    y: Tensor  # (1, C, H, W) or (1, H, W)
    mask: Tensor  # (H, W)
    maps: Tensor | None
    calibration_seconds: float


def make_problem(kspace, mask, *, maps: Tensor | None = None, calibrate: bool = True) -> MRIProblem:
    """Validate inputs, zero k-space outside the mask, calibrate ESPIRiT maps from the sampled centre (unless
    ``calibrate`` is False: zero-filled RSS needs no maps)."""
    k, m = _check_inputs(kspace, mask)
    y = (k * m)[None]
    start = time.perf_counter()
    if k.ndim == 2 or (maps is None and not calibrate):
        return MRIProblem(SingleCoilMRI(m), y, m, None, 0.0)
    if maps is None:
        acs = centre_block(m)
        if min(acs) < 6:
            raise MeddiffError(f"mask: the fully sampled centre is only {acs} (needs at least 6 x 6 for coil "
                               "calibration); sample a larger calibration region")
        # ESPIRiT needs a calibration region well above its 6 x 6 kernel; small ones use low-resolution maps
        maps = estimate_sensitivity_maps(k * m, acs=acs, method="espirit" if min(acs) >= 12 else "lowres")
        if not bool((maps.abs() > 0).any()):
            raise MeddiffError("kspace: coil calibration from the sampled centre gave empty sensitivity maps; "
                               "check that the k-space is centred (DC in the middle) and the mask samples the centre")
    return MRIProblem(MultiCoilMRI(maps, m), y, m, maps, time.perf_counter() - start)


def low_resolution_phase(problem: MRIProblem) -> Tensor:
    """exp(i phi) (H, W) of the Hann-windowed data centre (at most PHASE_ACS x PHASE_ACS), combined by the maps."""
    m = problem.mask
    ay, ax = (min(a, PHASE_ACS) for a in centre_block(m))
    ay, ax = max(ay, 2), max(ax, 2)
    h, w = m.shape
    window = torch.zeros(h, w)
    y0, x0 = h // 2 - ay // 2, w // 2 - ax // 2
    window[y0:y0 + ay, x0:x0 + ax] = torch.outer(torch.hann_window(ay, periodic=False),
                                                 torch.hann_window(ax, periodic=False))
    low = ifft2c(problem.y[0] * window * m)
    if problem.maps is not None:
        low = (problem.maps.conj() * low).sum(-3)
    return torch.exp(1j * torch.angle(low)).to(torch.complex64)


def combine_coils(problem: MRIProblem, image: Tensor, combine: str = "sense") -> Tensor:
    """Output magnitudes (B, H, W) of complex images (B, H, W). "sense": |x|, the SENSE-model image itself (coil
    noise averaged by the maps). "rss": root-sum-of-squares of the data-consistent coil images
    F^H((1 - M) F S_c x + M y_c), the combination of the fully sampled reference (and of fastMRI's multi-coil
    targets): it keeps every coil's measured noise, so the background has the reference's noise floor.
    Single-coil data: |x| or |F^H((1 - M) F x + M y)|."""
    check_choice("combine", combine, COMBINES)
    if combine == "sense":
        return image.abs()
    if problem.maps is None:  # single coil: x - A^H(A x - y) = F^H((1 - M) F x + M y)
        return problem.op.dc_step(image, problem.y, 1.0).abs()
    return rss(problem.op.project_coils(problem.op.coils.A(image), problem.y))


def baseline(method: str, problem: MRIProblem, combine: str = "sense") -> Tensor:
    """Magnitude (H, W) of a classical reconstruction (``combine_coils``; zero-filled is always the RSS)."""
    if method == "zero-filled":
        return zero_filled_rss(problem.y[0] if problem.y.ndim == 4 else problem.y)  # single coil: C = 1
    fn = {"sense": cg_sense, "cs-wavelet": cs_wavelet, "cs-tv": cs_tv}[method]
    return combine_coils(problem, fn(problem.op, problem.y), combine)[0]


# ----------------------------------------------------------------------------------------------- prior
@dataclass
class Prior:
    """A one-channel unconditional diffusion prior: its x0-denoiser, schedule and padding multiple."""

    denoiser: ModelDenoiser
    schedule: object
    multiple: int
    meta: dict


def load_prior(checkpoint: str | Path | None = None) -> Prior:
    """The prior from a checkpoint (path, run directory or shipped name); None: the shipped default for reconstruct."""
    from meddiff.training.checkpoint import load_checkpoint
    from meddiff.training.shipped import default_checkpoint

    source = default_checkpoint("reconstruct") if checkpoint is None else checkpoint
    try:
        net, meta = load_checkpoint(source)
    except MeddiffError as error:
        raise MeddiffError(f"--checkpoint {source}: {error}") from None
    network = meta.get("network", {})
    if meta.get("task") != "synthesis" or network.get("kind") != "unet" or meta.get("channels") != 1 \
            or network.get("num_classes") or network.get("cond_channels"):
        raise MeddiffError(f"--checkpoint {source}: not an unconditional one-channel image prior (task "
                           f"{meta.get('task')!r}, channels {meta.get('channels')}, classes "
                           f"{network.get('num_classes')}, image conditioning {network.get('cond_channels')}); "
                           "train one with configs/brain_mri_prior.yaml")
    for p in net.parameters():
        p.requires_grad_(False)
    schedule = make_schedule(meta["schedule"])
    return Prior(ModelDenoiser(net, schedule, meta["prediction"]), schedule, 2 ** (len(network["channels"]) - 1), meta)


class RealImageModel:
    """The measurement seen from the prior's variable v (B, 1, Hp, Wp): image z = s (v_c + alpha) / 2 exp(i phi) on
    the centre crop v_c (H, W) (alpha: the state's signal scale; 1 for clean images), data y = A z."""

    def __init__(self, problem: MRIProblem, phase: Tensor, scale: float, padded: tuple[int, int]):
        self.problem, self.phase, self.scale = problem, phase, scale
        h, w = problem.mask.shape
        self.padded = padded
        self.top, self.left = (padded[0] - h) // 2, (padded[1] - w) // 2
        self.crop = (slice(self.top, self.top + h), slice(self.left, self.left + w))
        # air (v = -alpha) outside the coil support and in the padding: a known part of the image (SENSE support)
        air = torch.ones(padded, dtype=torch.bool)
        air[self.crop] = False if problem.maps is None else (problem.maps.abs() ** 2).sum(0) == 0
        self.air = air

    def to_image(self, v: Tensor, alpha: float = 1.0) -> Tensor:
        """(B, 1, Hp, Wp) real -> complex (B, H, W)."""
        return (0.5 * self.scale) * (v[:, 0][(slice(None),) + self.crop] + alpha) * self.phase

    def residual(self, v: Tensor, alpha: float = 1.0) -> Tensor:
        """A z(v) - alpha y, divided by s/2 so that it is in the prior's units (differentiable)."""
        return (self.problem.op.A(self.to_image(v, alpha)) - alpha * self.problem.y) / (0.5 * self.scale)

    def consistent(self, z: Tensor, alpha: float = 1.0) -> Tensor:
        """Data consistency of complex images (B, H, W): measured k-space replaced by alpha y, coil by coil for
        multi-coil data (S^H F^H((1 - M) F S z + M alpha y), the score-MRI step; ``op.dc_step`` with step 1)."""
        return self.problem.op.dc_step(z, alpha * self.problem.y, 1.0)

    def project(self, v: Tensor, alpha: float) -> Tensor:
        """v with its image made consistent with alpha y (``consistent``), back in the real phase frame; v = -alpha
        (air) outside the coil support and in the padding."""
        z = self.consistent(self.to_image(v, alpha), alpha)
        out = v.clone()
        out[:, 0][(slice(None),) + self.crop] = (2.0 / self.scale) * (z * self.phase.conj()).real - alpha
        return torch.where(self.air, torch.full_like(out, -alpha), out)

    def finish(self, v: Tensor, combine: str = "sense") -> Tensor:
        """Output magnitudes (B, H, W) by ``combine_coils``; "sense" first makes the image consistent with the data
        (so the phase comes from the data), "rss" does that coil by coil itself."""
        z = self.to_image(v)
        return combine_coils(self.problem, z if combine == "rss" else self.consistent(z), combine)


def _start(problem: MRIProblem, init: str = "sense") -> tuple[Tensor, float, Tensor]:
    """exp(i phi) (the phase of the initial image; the low-resolution phase where it is 0), the scale s (the 99.5th
    percentile of the initial magnitude over pixels above 10 % of its max) and the initial image (H, W) complex:
    CG-SENSE (``init="sense"``) or L1-wavelet CS (``"cs-wavelet"``)."""
    check_choice("init", init, INITS)
    sense = (cg_sense if init == "sense" else cs_wavelet)(problem.op, problem.y)[0]
    mag = sense.abs()
    fg = mag[mag > 0.1 * mag.max()]
    scale = float(torch.quantile(fg.double(), SCALE_PERCENTILE / 100))
    phase = torch.where(mag > 0, sense / mag.clamp_min(1e-30), low_resolution_phase(problem)).to(torch.complex64)
    return phase, scale, sense


def _grid(schedule, steps: int, start: float) -> TimeGrid:
    """``steps`` times from start * t_max down to t_min (start = 1: the full grid of ``make_grid``)."""
    if not 0 < start <= 1:
        raise MeddiffError(f"start={start!r} must be in (0, 1] (fraction of the diffusion time to start from)")
    if start == 1:
        return make_grid(schedule, steps)
    times = torch.linspace(start * schedule.t_max, schedule.t_min, steps, dtype=torch.float64)
    if schedule.is_discrete:
        times = times.round().unique().flip(0)
    return TimeGrid.from_times(schedule, times)


def solve(method: str, problem: MRIProblem, prior: Prior, *, steps: int | None = None, samples: int | None = None,
          seed: int = 0, combine: str = "sense", **params) -> tuple[Tensor, Tensor, int, dict]:
    """Run a diffusion solver: (magnitudes (K, H, W) of the K samples, image (H, W), network evaluations, settings)."""
    check_choice("method", method, SOLVERS)
    settings = {**SOLVER_DEFAULTS[method], **{k: v for k, v in params.items() if v is not None}}
    unknown = sorted(set(settings) - set(SOLVER_DEFAULTS[method]))
    if unknown:
        raise MeddiffError(f"method {method!r}: unknown parameter(s) {unknown}; "
                           f"allowed: {sorted(SOLVER_DEFAULTS[method])}")
    if steps is not None:
        settings["steps"] = steps
    if samples is not None:
        settings["samples"] = samples
    n_steps, k = settings["steps"], settings["samples"]
    if not isinstance(n_steps, int) or n_steps < 1:
        raise MeddiffError(f"--steps {n_steps!r} must be a positive integer")
    if not isinstance(k, int) or k < 1:
        raise MeddiffError(f"--samples {k!r} must be a positive integer")
    phase, scale, sense = _start(problem, settings["init"])
    h, w = problem.mask.shape
    mult = prior.multiple
    padded = (math.ceil(h / mult) * mult, math.ceil(w / mult) * mult)
    model = RealImageModel(problem, phase, scale, padded)
    schedule, denoiser = prior.schedule, prior.denoiser
    generator = torch.Generator().manual_seed(seed)
    shape = (k, 1) + padded
    with torch.no_grad():
        start = settings["start"]
        grid = _grid(schedule, n_steps, start)
        x = initial_noise(grid, shape, generator=generator)
        if start < 1:  # come closer, diffuse faster (Chung et al. 2022): noise the initial image to the start
            v = torch.full((1, 1) + padded, -1.0)
            v[:, 0][(slice(None),) + model.crop] = (2 * (sense * phase.conj()).real / scale - 1)[None]
            x = float(grid.alphas[0]) * v + x * (float(grid.sigmas[0]) / grid.prior_std())
        if method == "coarse-to-fine":
            hook = MeasurementReplacement(model.project, schedule, noise=True, generator=generator)
            coarse = get_sampler("ddpm")(denoiser, x, grid, hook=hook, generator=generator)
            mags = model.finish(coarse, combine)
            mean_v = coarse.mean(0, keepdim=True)
            refine = _grid(schedule, settings["refine_steps"], settings["refine_start"])
            a0, s0 = float(refine.alphas[0]), float(refine.sigmas[0])
            x = a0 * mean_v + s0 * torch.randn(mean_v.shape, generator=generator)
            final = get_sampler("ddim")(denoiser, x, refine, hook=Projection(lambda v, a: model.project(v, a)), eta=0.0)
            image = model.finish(final, combine)[0]
            nfe = grid.steps + refine.steps
        else:
            if method == "pc":
                hook = MeasurementReplacement(model.project, schedule, noise=True, generator=generator)
                out = get_sampler("pc")(denoiser, x, grid, hook=hook, generator=generator, snr=settings["snr"])
                nfe = 2 * grid.steps
            elif method == "dps":
                hook = PosteriorGradient(model.residual, settings["zeta"])
                out = get_sampler("ddim")(denoiser, x, grid, hook=hook, generator=generator, eta=1.0)
                nfe = grid.steps
            else:
                out = get_sampler("ddim")(denoiser, x, grid, hook=Projection(model.project), generator=generator,
                                          eta=settings["eta"])
                nfe = grid.steps
            mags = model.finish(out, combine)
            image = mags.mean(0)
    settings.update({"scale": scale, "padded": list(padded)})
    return mags, image, nfe, settings


def reconstruct(kspace, mask, method: str = "ddnm", *, samples: int | None = None, steps: int | None = None,
                seed: int = 0, checkpoint: str | Path | None = None, prior: Prior | None = None,
                maps: Tensor | None = None, combine: str = "sense", **params) -> Reconstruction:
    """Reconstruct one slice: kspace (C, H, W) or (H, W) complex (centred; values outside ``mask`` are ignored),
    mask (H, W) or (W,) of 0/1 -> ``Reconstruction`` with the float32 (H, W) magnitude on the RSS scale and, for
    the diffusion solvers, the per-pixel std over ``samples`` posterior samples. ``combine``: "sense" or "rss"
    (``combine_coils``)."""
    check_choice("method", method, METHODS)
    check_choice("combine", combine, COMBINES)
    problem = make_problem(kspace, mask, maps=maps, calibrate=method != "zero-filled")
    start = time.perf_counter()
    if method in BASELINES:
        if params:
            raise MeddiffError(f"method {method!r} takes no solver parameters (got {sorted(params)})")
        image = baseline(method, problem, combine)
        return Reconstruction(image.numpy().astype(np.float32), None, 0, time.perf_counter() - start,
                              {"method": method, "combine": combine})
    prior = prior if prior is not None else load_prior(checkpoint)
    torch.manual_seed(seed)
    mags, image, nfe, settings = solve(method, problem, prior, steps=steps, samples=samples, seed=seed,
                                       combine=combine, **params)
    std = mags.std(0, unbiased=False) if len(mags) > 1 else torch.zeros_like(image)
    return Reconstruction(image.numpy().astype(np.float32), std.numpy().astype(np.float32), nfe,
                          time.perf_counter() - start, {"method": method, "combine": combine, **settings})


# ----------------------------------------------------------------------------------------------- report
def calibration_plot(std: np.ndarray, error: np.ndarray, size: int = 180):
    """uint8 (size, size, 3) plot of RMS |error| against the mean std in 10 std-quantile bins, with the y = x line."""
    from PIL import Image, ImageDraw

    edges = np.quantile(std, np.linspace(0, 1, 11))
    which = np.clip(np.searchsorted(edges, std, side="right") - 1, 0, 9)
    pts = [(float(std[which == b].mean()), float(np.sqrt((error[which == b] ** 2).mean())))
           for b in range(10) if (which == b).any()]
    top = max(max(max(p) for p in pts), 1e-6) * 1.1
    canvas = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(canvas)
    pad = 22

    def xy(u, v):
        return pad + u / top * (size - 2 * pad), size - pad - v / top * (size - 2 * pad)

    draw.rectangle([pad, pad, size - pad, size - pad], outline="black")
    draw.line([xy(0, 0), xy(top, top)], fill=(160, 160, 160))
    for u, v in pts:
        x, y = xy(u, v)
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(200, 30, 30))
    draw.text((pad, size - pad + 4), "std", fill="black")
    draw.text((2, 4), f"RMS error (max {top:.3g})", fill="black")
    return np.asarray(canvas)


def report_section(out_dir: str | Path, *, method: str = "ddnm", pattern: str = "gaussian", acceleration: int = 4,
                   seed: int = 0, checkpoint: str | Path | None = None, steps: int | None = None,
                   samples: int | None = None, log=print) -> dict:
    """Demo-report section on the embedded 8-coil brain k-space: reference, zero-filled, CG-SENSE, CS-wavelet and a diffusion
    solver with their error maps, the per-pixel std and its calibration plot; {"title", "text", "table", "figure"}."""
    from PIL import Image

    from meddiff.data.assets import asset_path
    from meddiff.metrics.image import psnr, ssim
    from meddiff.physics import make_mask
    from meddiff.report import labelled_row, save_png, to_uint8

    check_choice("method", method, SOLVERS)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    folder = asset_path("kspace_brain_8ch")
    kspace, reference = np.load(folder / "kspace.npy"), torch.from_numpy(np.load(folder / "rss_reference.npy"))
    mask = make_mask(tuple(kspace.shape[-2:]), acceleration, pattern, acs_fraction=0.08, seed=seed, axis=-2)
    problem = make_problem(kspace, mask)
    top = float(reference.max())
    fg = reference > 0.1 * top
    images, rows, std = {}, [], None
    for name in ("zero-filled", "sense", "cs-wavelet", method):
        result = reconstruct(kspace, mask, name, maps=problem.maps, checkpoint=checkpoint, seed=seed,
                             **({"steps": steps, "samples": samples} if name in SOLVERS else {}))
        image = torch.from_numpy(result.image)
        images[name] = image
        std = result.std if name in SOLVERS else std
        rows.append({"method": name, "psnr_db": float(psnr(image, reference, top)),
                     "psnr_fg_db": float(psnr(image, reference, top, mask=fg)),
                     "ssim": float(ssim(image, reference, top)),
                     "nfe": result.nfe, "seconds": result.seconds})
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
    figure = save_png(both, out / "mri_diffusion.png")
    return {"title": f"MRI reconstruction with the brain diffusion prior ({pattern} {acceleration}x, {method})",
            "text": f"Retrospective {pattern} {acceleration}x undersampling (8 % ACS, mask seed {seed}) of the "
                    f"embedded 8-coil k-space; '{method}' with the shipped brain prior. Top: images; bottom: error maps "
                    f"(0-{err_top:.0f}), the per-pixel std over the posterior samples and the RMS error per std decile "
                    f"on the foreground (grey: y = x); std-error correlation {corr:.2f}. See benchmarks/README.md.",
            "table": rows, "figure": figure}
