"""Does a guidance-distilled student follow its scale input? Weighted x0 error between the student at scale s and the
teacher's classifier-free-guided estimate at scale s' (rows s, columns s'), per noise band.

x_t from 128 PneumoniaMNIST val images of the shipped subset (never trained on), t uniform in each band, the weight
max(SNR, 1) of the distillation loss. A faithful student has the smallest error on the diagonal and errors far
below the off-diagonal distances between the teacher's own scales.

    python benchmarks/guided_scale_error.py --checkpoint runs/distill_guided_pneumonia/guided [--scales 1 2.5 4]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from meddiff.data import asset_path
from meddiff.diffusion import ModelDenoiser, make_schedule
from meddiff.diffusion.distill import guided_x0
from meddiff.nets import CLASS_LABELS, GUIDANCE_SCALE
from meddiff.training import load_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a guidance-input student (checkpoint or run directory)")
    parser.add_argument("--teacher", default="pneumonia_cond")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.5, 4.0])
    args = parser.parse_args()
    student, _ = load_checkpoint(args.checkpoint)
    teacher, meta = load_checkpoint(args.teacher)
    schedule = make_schedule(meta["schedule"])
    data = np.load(asset_path("pneumoniamnist/pneumoniamnist_small.npz"))
    x0 = torch.from_numpy(data["val_images"]).float()[:128, None] / 127.5 - 1
    labels = torch.from_numpy(data["val_labels"]).long().reshape(-1)[:128]
    generator = torch.Generator().manual_seed(0)
    teacher_x0 = ModelDenoiser(teacher, schedule, meta["prediction"])
    student_x0 = ModelDenoiser(student, schedule, meta["prediction"])
    for low, high in ((0, 300), (300, 700), (700, 1000)):
        t = torch.randint(low, high, (len(x0),), generator=generator).float()
        alpha, sigma = (v.reshape(-1, 1, 1, 1).float() for v in schedule.alpha_sigma(t))
        x_t = alpha * x0 + sigma * torch.randn(x0.shape, generator=generator)
        weight = torch.clamp((alpha / sigma) ** 2, min=1.0)
        with torch.no_grad():
            targets = {s: guided_x0(teacher_x0, x_t, t, torch.full((len(x0),), s), cond={CLASS_LABELS: labels})
                       for s in args.scales}
            outputs = {s: student_x0(x_t, t, **{CLASS_LABELS: labels, GUIDANCE_SCALE: torch.full((len(x0),), s)})
                       for s in args.scales}
        print(f"t in [{low}, {high}): rows = student scale, columns = teacher scale {args.scales}")
        for s in args.scales:
            print(f"  {s:g}: " + "  ".join(f"{float((weight * (outputs[s] - targets[q]) ** 2).mean()):.2e}"
                                           for q in args.scales))


if __name__ == "__main__":
    main()
