"""Train the contrast-translation models of issue 24 (Palette and the supervised UNet baseline, T1 -> T2 + FLAIR)
for a wall-clock budget, and ship them as src/meddiff/assets/checkpoints/<name>/ (Palette EMA weights in fp16, the
UNet under unet/, translation.json with contrasts, normalisation and training histograms).

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python scripts/train_translation.py --method palette --minutes 40
    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python scripts/train_translation.py --method unet --minutes 40
    .venv/bin/python scripts/train_translation.py --export t1_to_t2_flair

Both read the data section of configs/palette_t1_to_t2_flair.yaml (training subjects; the test subject is never
loaded). --resume continues a run exactly (Palette: the trainer's checkpoint; UNet: train_regression's). The run
directories are runs/translate/palette and runs/translate/unet.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import yaml

PALETTE_CONFIG = Path("configs/palette_t1_to_t2_flair.yaml")
# The supervised UNet baseline (meddiff.training.regression: MONAI UNet, L1, Adam at a constant rate) on the same
# pairs as Palette (T1 -> T2, FLAIR as 2 output channels, the data section of PALETTE_CONFIG) and the same wall time.
# (Kept here, not in configs/: every YAML there must be a training config, tests/test_configs.py.)
UNET_SETTINGS = {
    "model": {"channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 2},  # 0.40 M parameters
    "train": {"loss": "l1", "batch_size": 8, "lr": 1.0e-3, "seed": 0, "checkpoint_every": 200},
}
RUNS = Path("runs/translate")


class _TimeUp(Exception):
    pass


def dataset_from(data: dict):
    from meddiff.tasks.translate.data import PairedSlices

    return PairedSlices(data["subjects"], source=data["source"], targets=data["targets"], size=data["size"],
                        factor=data["factor"], flip=data["flip"])


def train_palette(minutes: float, resume: bool, run_dir: Path) -> None:
    from meddiff.training import Trainer, load_config

    config = load_config(PALETTE_CONFIG)
    trainer = Trainer(config, dataset_from(config["data"]), run_dir=run_dir)
    start = time.perf_counter()

    def stop_when_due(step: int, loss: float) -> None:
        if time.perf_counter() - start > minutes * 60:
            raise _TimeUp

    try:
        trainer.fit(resume=resume, on_step=stop_when_due)
    except _TimeUp:
        trainer.save()
        print(f"stopped at step {trainer.step} after {minutes} min", flush=True)
    finally:
        trainer.close()


def train_unet(minutes: float, resume: bool, run_dir: Path) -> None:
    from meddiff.training.regression import build_regression_unet, save_regression, train_regression

    config = UNET_SETTINGS
    data = yaml.safe_load(PALETTE_CONFIG.read_text())["data"]
    dataset = dataset_from(data)
    model = build_regression_unet(len(data["source"]), len(data["targets"]), **config["model"])
    t = config["train"]
    result = train_regression(model, dataset, loss=t["loss"], batch_size=t["batch_size"], lr=t["lr"],
                              max_seconds=minutes * 60, seed=t["seed"], run_dir=run_dir, resume=resume,
                              checkpoint_every=t["checkpoint_every"], log=lambda m: print(m, flush=True))
    save_regression(model, run_dir / "model", meta={"data": data, "train": t, "result": result})
    print(json.dumps(result), flush=True)


def export(name: str, palette_dir: Path, unet_dir: Path, command: str) -> Path:
    """Ship the Palette run's latest checkpoint (fp16 EMA) as ``name`` with the UNet (fp16) under unet/ and
    translation.json (the card ``meddiff translate`` reads)."""
    import tempfile

    from meddiff.tasks.translate.pipeline import translation_card
    from meddiff.training import list_checkpoints
    from meddiff.training.regression import load_regression, save_regression
    from meddiff.training.shipped import export_checkpoint

    import torch

    data = yaml.safe_load(PALETTE_CONFIG.read_text())["data"]
    card = translation_card(dataset_from(data), data)
    checkpoint = list_checkpoints(palette_dir / "checkpoints")[-1]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "translation.json").write_text(json.dumps(card, indent=1))
        unet = save_regression(load_regression(unet_dir / "model"), tmp / "unet", dtype=torch.float16,
                               meta=json.loads((unet_dir / "model" / "regression.json").read_text())["meta"])
        extra = {"translation.json": tmp / "translation.json"}
        final = export_checkpoint(
            checkpoint, name, command=command, trained_on="MS patient07 + BraTS TCGA-FG-6692 (2 mm axial slices); "
            "test: MS patient19",
            description="Palette T1 -> T2 + FLAIR (conditional diffusion; supervised UNet baseline under unet/)",
            extra_files=extra)
        (final / "unet").mkdir(exist_ok=True)
        for f in unet.iterdir():
            (final / "unet" / f.name).write_bytes(f.read_bytes())
        if (unet_dir / "log.csv").is_file():  # every 50th step (and the last): the per-step log is 0.2 MB
            lines = (unet_dir / "log.csv").read_text().splitlines()
            kept = [lines[0]] + [r for r in lines[1:] if int(r.split(",")[0]) % 50 == 0] + \
                ([lines[-1]] if int(lines[-1].split(",")[0]) % 50 else [])
            (final / "unet" / "log.csv").write_text("\n".join(kept) + "\n")
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=("palette", "unet"))
    parser.add_argument("--minutes", type=float, default=40.0, help="wall-clock training budget (default 40)")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--export", metavar="NAME", help="ship the two finished runs as NAME")
    args = parser.parse_args(argv)
    if args.export:
        command = "\n".join([
            "nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python scripts/train_translation.py --method palette "
            "--minutes 40",
            "nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python scripts/train_translation.py --method unet --minutes 40",
            shlex.join([".venv/bin/python", "scripts/train_translation.py", *(argv or sys.argv[1:])])])
        print(export(args.export, RUNS / "palette", RUNS / "unet", command))
        return 0
    if args.method is None:
        parser.error("give --method or --export")
    run_dir = RUNS / args.method
    (train_palette if args.method == "palette" else train_unet)(args.minutes, args.resume, run_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
