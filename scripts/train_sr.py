"""Train the 4x super-resolution models of issue 22 for a fixed wall time and ship them: SR3 (a conditional diffusion
model, configs/sr3_ixi_4x.yaml, the meddiff Trainer) and the supervised UNet baseline (configs/regression/unet_sr_ixi_4x.yaml,
``meddiff.training.regression``), on the same pairs (``meddiff.data.superres``), each on one CPU thread, started
together so both get the same wall time on the same machine:

    OMP_NUM_THREADS=1 nohup .venv/bin/python scripts/train_sr.py --model sr3 --max-seconds 2400 > runs/sr3/sr3.log &
    OMP_NUM_THREADS=1 nohup .venv/bin/python scripts/train_sr.py --model unet --max-seconds 2400 > runs/sr3/unet.log &

Runs go to runs/sr3/<name>/ (``--resume`` continues exactly; the seconds of all sittings count towards
``--max-seconds``); at the end the model is shipped to src/meddiff/assets/checkpoints/<name>/ (SR3: fp16 EMA weights
by ``export_checkpoint``; UNet: fp16 weights by ``save_regression``) with config, log, command and split.
``--export-only`` ships the latest checkpoint of a run. ``--tune-val N`` (no training) scores bicubic, the UNet and
SR3 sampling variants (steps, eta, start) on N VAL subjects x 2 slices of the benchmark (never test subjects) from
the run directories and writes runs/sr3/tune.json: how ``restore.LEARNED_DEFAULTS["sr3"]`` was chosen.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch

from meddiff.data import build_dataset
from meddiff.files import read_yaml_mapping, write_text
from meddiff.training import list_checkpoints, load_config
from meddiff.training.config import dump_yaml
from meddiff.training.regression import (build_regression_unet, load_regression, save_regression,
                                         train_regression)
from meddiff.training.shipped import SHIPPED_DIR, export_checkpoint
from meddiff.training.trainer import Trainer

CONFIGS = {"sr3": "configs/sr3_ixi_4x.yaml", "unet": "configs/regression/unet_sr_ixi_4x.yaml"}
NAMES = {"sr3": "sr3_ixi_4x", "unet": "unet_sr_ixi_4x"}
DESCRIPTIONS = {
    "sr3": "SR3 4x super-resolution of 2 mm axial IXI T1 slices (conditional diffusion on the bicubic upsampling, "
           "residual target); meddiff restore --method sr3",
    "unet": "supervised MONAI UNet for 4x super-resolution of 2 mm axial IXI T1 slices (L1, residual); the "
            "regression baseline of SR3; meddiff restore --method unet",
}
TRAINED_ON = "IXI T1 2 mm axial slices, 150 train subjects (configs/splits/ixi_t1_2mm_dlmuse.json)"


TUNE_VARIANTS = {
    "bicubic": {}, "unet": {},
    "sr3 s20 eta0": {"steps": 20, "eta": 0.0}, "sr3 s20 eta1": {"steps": 20, "eta": 1.0},
    "sr3 s10 eta0": {"steps": 10, "eta": 0.0}, "sr3 s10 start0.5": {"steps": 10, "eta": 0.0, "start": 0.5},
    "sr3-untrained s20": {"steps": 20},
}


def tune_val(subjects: int, out_dir: Path) -> dict:
    """Mean PSNR / brain PSNR / SSIM of each ``TUNE_VARIANTS`` entry on VAL slices at 4x (benchmark slices)."""
    import statistics

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import restoration as bench
    from mri_ixi import split_subjects

    from meddiff.tasks import restore as R

    torch.set_num_threads(1)
    cases = bench.load_slices(split_subjects("val", subjects), 2)
    sr3 = R.load_sr_model("sr3", out_dir / NAMES["sr3"])
    models = {"sr3": sr3, "sr3-untrained": R.untrained_sr3(sr3),
              "unet": R.load_sr_model("unet", out_dir / NAMES["unet"])}
    results = {}
    for name, params in TUNE_VARIANTS.items():
        label = name.split()[0]
        method = label.replace("-untrained", "")
        scores = []
        for case in cases:
            given = bench.degrade(case, "sr4")
            kwargs = dict(params, model=models[label]) if label in models else dict(params)
            out = R.restore(given["input"], "super-resolution", method, scale=4, **kwargs)
            scores.append(R.scores(out.image, case["image"], case["brain"]))
        results[name] = {k: statistics.mean(s[k] for s in scores) for k in ("psnr", "psnr_brain", "ssim")}
        print(name, {k: round(v, 3) for k, v in results[name].items()}, flush=True)
    write_text(out_dir / "tune.json", json.dumps({"cases": [[c["subject"], c["slice"]] for c in cases],
                                                  "results": results}, indent=1))
    return results


class _TimeUp(Exception):
    pass


def seconds_file(run_dir: Path) -> Path:
    return run_dir / "train_seconds.json"


def train_sr3(config: dict, run_dir: Path, max_seconds: float, resume: bool) -> dict:
    """Trainer.fit until run.steps or ``max_seconds`` of training in all sittings (checked after each step; the
    step that crosses the limit is checkpointed)."""
    trainer = Trainer(config, run_dir=run_dir)
    done = json.loads(seconds_file(run_dir).read_text())["seconds"] if resume and seconds_file(run_dir).is_file() else 0
    state = {"start": time.perf_counter(), "step": 0}

    def on_step(step: int, loss: float) -> None:
        seconds = done + time.perf_counter() - state["start"]
        state["step"] = step
        if step % config["run"]["checkpoint_every"] == 0 or seconds >= max_seconds:
            write_text(seconds_file(run_dir), json.dumps({"seconds": seconds, "step": step}))
        if seconds >= max_seconds:
            if step % config["run"]["checkpoint_every"]:
                trainer.save()
            raise _TimeUp

    try:
        trainer.fit(resume=resume, on_step=on_step)
    except _TimeUp:
        pass
    finally:
        trainer.close()
    seconds = done + time.perf_counter() - state["start"]
    write_text(seconds_file(run_dir), json.dumps({"seconds": seconds, "step": trainer.step}))
    return {"steps": trainer.step, "seconds": seconds}


def ship_diffusion(config: dict, run_dir: Path, name: str, *, command: str, description: str, trained_on: str
                   ) -> tuple[Path, dict]:
    """Ship the last checkpoint of a `train_sr3` run as ``name`` (fp16 EMA, with the split file); returns (shipped
    directory, the run's seconds and steps)."""
    result = json.loads(seconds_file(run_dir).read_text())
    checkpoint = list_checkpoints(run_dir / "checkpoints")[-1]
    shipped = export_checkpoint(checkpoint, name, command=command, description=description, trained_on=trained_on,
                                extra_files={"split.json": Path(config["data"]["split_file"])})
    result["steps"] = json.loads((checkpoint / "meta.json").read_text()).get("step", result.get("step"))
    return shipped, result


def ship_regression(run_dir: Path, name: str, config: dict, data: dict, *, command: str, description: str,
                    trained_on: str, log_every: int = 1) -> tuple[Path, dict]:
    """Ship the regression UNet saved in ``run_dir/final`` as ``name`` (fp16 weights, config, split, command and
    every ``log_every``-th line of log.csv plus the last); returns (shipped directory, its training result)."""
    model = load_regression(run_dir / "final")
    result = json.loads((run_dir / "final" / "regression.json").read_text())["meta"]
    shipped = SHIPPED_DIR / name
    save_regression(model, shipped, meta={**result, "shipped": {"name": name, "description": description,
                                                                 "trained_on": trained_on}}, dtype=torch.float16)
    write_text(shipped / "config.yaml", dump_yaml({**config, "data": data}))
    lines = (run_dir / "log.csv").read_text().splitlines()
    kept = [lines[0]] + [line for i, line in enumerate(lines[1:], 1) if i % log_every == 0 or i == len(lines) - 1]
    write_text(shipped / "log.csv", "\n".join(kept) + "\n")
    shutil.copy2(data["split_file"], shipped / "split.json")
    write_text(shipped / "command.txt", command + "\n")
    return shipped, result


def unet_data_config(unet_config: dict) -> dict:
    """The SR3 config's data section with the plain target (the UNet is residual itself)."""
    data = dict(load_config(unet_config["data_from"])["data"])
    data.update({"residual": False, "residual_scale": 1.0})
    return data


def val_table(out_dir: Path) -> str:
    """The --tune-val results (VAL slices) as markdown, or "" when there are none."""
    file = out_dir / "tune.json"
    if not file.is_file():
        return ""
    tune = json.loads(file.read_text())
    rows = "\n".join(f"| {k} | {v['psnr']:.2f} | {v['psnr_brain']:.2f} | {v['ssim']:.3f} |"
                     for k, v in tune["results"].items())
    return (f"\nVAL slices ({len(tune['cases'])}: {', '.join(f'{s} z={z}' for s, z in tune['cases'])}), 4x area "
            "averaging, K = 4 samples for sr3 (`scripts/train_sr.py --tune-val 2`; test numbers: "
            "benchmarks/README.md):\n\n| method | PSNR | PSNR brain | SSIM |\n|---|---|---|---|\n" + rows + "\n")


def model_card(kind: str, name: str, result: dict, config_path: str, command: str, out_dir: Path) -> str:
    what = ("SR3 (Saharia et al. 2021): a conditional DiffusionModelUNet (v-prediction, 1000-step linear schedule, "
            "min-SNR-5 weighting) whose input is the noisy target concatenated with the bicubic upsampling of the "
            "4x area-averaged slice; the target is the residual 2 x (slice - bicubic) (SRDiff-style), so "
            "`meddiff restore --method sr3` adds bicubic + output / 2 back (DDIM, K samples -> mean and std)."
            if kind == "sr3" else
            "A MONAI UNet (channels 16-32-64-128, 2 residual units per level) predicting slice - bicubic "
            "(residual), L1 loss, Adam 1e-3 constant: the supervised regression baseline of SR3, trained on the same "
            "pairs for the same wall time, at the same time on the same machine.")
    return f"""# {name}

{what}

- Data: IXI T1 at 2 mm (../shared/data/ixi_t1_2mm_dlmuse), whole axial slices (90 x 120, padded with air to 96 x 120),
  150 train subjects; val/test subjects never used for training (split.json). Pairs: `meddiff.data.superres`
  (4x4 block mean, bicubic back up; intensities over the low-resolution image's `magnitude_scale`, zero = -1).
- Training: {result['steps']} steps in {result['seconds'] / 60:.1f} min of wall time on one CPU thread of a shared
  2-core machine (other jobs running), config `{config_path}` (copied as config.yaml), log.csv, command.txt.
- Short training: a first model that shows the method, not a converged one; see benchmarks/README.md (restoration,
  SR3 rows) for how it compares with bicubic, TV and the other model.
{val_table(out_dir)}
- Reproduce (one line per sitting):

```
{command}
```
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(CONFIGS), help="the model to train and ship")
    parser.add_argument("--tune-val", type=int, metavar="N", help="only score sampling variants on N val subjects")
    parser.add_argument("--max-seconds", type=float, default=2400.0, help="training wall time, all sittings")
    parser.add_argument("--out-dir", default="runs/sr3")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--export-only", action="store_true")
    args = parser.parse_args(argv)
    if args.tune_val:
        tune_val(args.tune_val, Path(args.out_dir))
        return 0
    if args.model is None:
        parser.error("--model is required (or --tune-val N)")
    name, config_path = NAMES[args.model], CONFIGS[args.model]
    run_dir = Path(args.out_dir) / name
    command = "OMP_NUM_THREADS=1 " + shlex.join([".venv/bin/python", "scripts/train_sr.py", *(argv or sys.argv[1:])])
    previous = SHIPPED_DIR / name / "command.txt"
    if (args.resume or args.export_only) and previous.is_file():  # every sitting's command, in order
        command = previous.read_text().strip() + ("" if args.export_only else "\n" + command)
    if args.model == "sr3":
        config = load_config(config_path)
        config["run"].update({"name": name, "out_dir": args.out_dir, "progress": False})
        if not args.export_only:
            train_sr3(config, run_dir, args.max_seconds, args.resume)
        shipped, result = ship_diffusion(config, run_dir, name, command=command, description=DESCRIPTIONS["sr3"],
                                         trained_on=TRAINED_ON)
    else:
        config = read_yaml_mapping(config_path)
        data = unet_data_config(config)
        if not args.export_only:
            dataset = build_dataset(data, "train")
            model = build_regression_unet(1, 1, **config["model"])
            result = train_regression(model, dataset, max_seconds=args.max_seconds, run_dir=run_dir,
                                      resume=args.resume, log=lambda line: print(line, flush=True), **config["train"])
            save_regression(model, run_dir / "final", meta={**result, "data": data})
        shipped, result = ship_regression(run_dir, name, config, data, command=command,
                                          description=DESCRIPTIONS["unet"], trained_on=TRAINED_ON)
    result.setdefault("seconds", 0.0)
    write_text(shipped / "README.md", model_card(args.model, name, result, config_path, command,
                                                         Path(args.out_dir)))
    print(f"shipped {name} -> {shipped}: {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
