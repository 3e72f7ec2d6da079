"""`meddiff report RUN_DIR`: one self-contained HTML page about a training run (or a shipped checkpoint).

Sections: run summary, the resolved config, the loss curve, EMA sample grids (one per class), real training
images next to their nearest generated neighbours, and a metric table (eval.json when present, else cheap
nearest-neighbour statistics computed here).
"""

from __future__ import annotations

import csv
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from meddiff.device import resolve_device
from meddiff.errors import MeddiffError
from meddiff.files import write_png
from meddiff.metrics.memorisation import memorisation, nearest_neighbours
from meddiff.report.html import labelled_row, write_report
from meddiff.report.plots import Series, line_plot, smooth
from meddiff.tasks.synthesis import generate, sample_grid
from meddiff.training.checkpoint import load_checkpoint, resolve_checkpoint
from meddiff.training.config import load_config
from meddiff.training.images import image_grid

LOSS_PLOT_SIZE = (720, 320)  # pixels (width, height) of the loss-curve PNG
GRID_WIDTH = 400             # sample grids are enlarged (nearest neighbour) by an integer factor to about this width
REAL_VALUES_BUDGET = 50_000_000  # at most this many real-image values (float32) are loaded for nearest neighbours


def write_run_report(run_dir: str | Path, out: str | Path | None = None, *, num_samples: int = 16,
                     sampler: str = "dpmpp_2m", steps: int = 20, seed: int = 0,
                     guidance_scale: float = 1.0, device: str = "cpu", num_pairs: int = 8,
                     max_real: int = 2000) -> Path:
    """Write the HTML report of ``run_dir`` (a `meddiff train` run, a shipped checkpoint directory or name).

    ``num_samples`` EMA samples per class by `meddiff.tasks.synthesis.generate` with ``sampler``/``steps``;
    ``guidance_scale`` is the classifier-free guidance scale (1: plain conditional model).
    Default ``out``: RUN_DIR/report.html for a run, ./<name>_report.html for a checkpoint directory.
    """
    run_dir = _find_run_dir(run_dir)
    config = _read_config(run_dir)
    try:
        checkpoint = resolve_checkpoint(run_dir)
    except MeddiffError:
        raise MeddiffError(f"{run_dir} has no checkpoint: expected checkpoints/step_*/ (model.safetensors, "
                           "ema.safetensors, state.pt, meta.json) written by `meddiff train` (one is saved every "
                           "run.checkpoint_every steps and at the end), or meta.json + ema.safetensors") from None
    if out is None:
        out = run_dir / "report.html" if (run_dir / "checkpoints").is_dir() else Path.cwd() / f"{run_dir.name}_report.html"
    out = Path(out)
    if not out.parent.is_dir():
        raise MeddiffError(f"--out {out}: the directory {out.parent} does not exist; create it first")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise MeddiffError(f"num_samples={num_samples!r} must be a positive integer")
    device = resolve_device(device)
    net, meta = load_checkpoint(checkpoint, device=device)
    run = config.get("run") or {}
    log = read_log(run_dir)
    dataset, holdout, data_note = _datasets(meta.get("data"))

    with tempfile.TemporaryDirectory(prefix="meddiff-report-") as tmp:
        tmp = Path(tmp)
        sections = [_summary_section(run_dir, checkpoint, config, meta, net, log, dataset)]
        config_text = (run_dir / "config.yaml").read_text()
        sections.append({"title": "Config", "text": "The resolved config: every default explicit.",
                         "details": (f"config.yaml ({len(config_text.splitlines())} lines)", config_text)})
        sections.append(_loss_section(log, tmp))
        samples: list[torch.Tensor] = []
        if meta.get("task", "synthesis") == "synthesis":
            sample_sections, samples = _sample_sections(
                net, meta, checkpoint, dataset, tmp, num=num_samples, sampler=sampler, steps=steps, seed=seed,
                guidance_scale=guidance_scale, device=device)
            sections += sample_sections
        else:
            sections.append({"title": "Samples", "text": f"a {meta.get('task')} network: it does not generate images."})
        nn_section, nn_rows = _neighbour_section(samples, dataset, holdout, data_note, tmp, num_pairs, max_real)
        sections.append(nn_section)
        sections.append(_metric_section(run_dir, nn_rows))
        write_report(out, f"meddiff run report: {run.get('name') or run_dir.name}", sections)
    return out


# --- inputs ---------------------------------------------------------------------------------------------------


def _find_run_dir(run_dir: str | Path) -> Path:
    path = Path(run_dir)
    if path.is_dir():
        return path
    from meddiff.training.shipped import shipped_path

    shipped = None if path.exists() else shipped_path(str(run_dir))
    if shipped is not None:
        return shipped
    raise MeddiffError(f"run directory {path} not found: pass a directory written by `meddiff train` "
                       "(runs/<name>/) or a shipped checkpoint name (`meddiff checkpoints list`)")


def _read_config(run_dir: Path) -> dict:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise MeddiffError(f"{run_dir} has no config.yaml: expected a run directory written by `meddiff train` "
                           "(config.yaml, log.csv, checkpoints/step_*/) or a shipped checkpoint directory "
                           "(config.yaml, meta.json, ema.safetensors)")
    return load_config(path)


def read_log(run_dir: str | Path) -> dict[str, np.ndarray]:
    """Columns (step, loss, lr, grad_norm, images_per_s, elapsed_s) of log.csv (else log.jsonl); {} when absent."""
    run_dir = Path(run_dir)
    rows: list[dict] = []
    if (run_dir / "log.csv").is_file():
        with open(run_dir / "log.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
    elif (run_dir / "log.jsonl").is_file():
        rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    if not rows:
        return {}
    return {key: np.array([_float(r.get(key)) for r in rows]) for key in rows[0]}


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def wall_time(elapsed_s: np.ndarray) -> float:
    """Total training seconds from the log's elapsed_s column, which restarts from 0 at each resume."""
    total, last = 0.0, 0.0
    for value in elapsed_s[np.isfinite(elapsed_s)]:
        if value < last:
            total += last
        last = float(value)
    return total + last


def _datasets(data_config: dict | None):
    """(training set, held-out set (val, else test), note): None where it cannot be built; no augmentation."""
    if not data_config:
        return None, None, "the run has no data section (it was trained on a dataset passed in code)"
    from meddiff.data import build_dataset

    config = {k: v for k, v in data_config.items() if k != "augment"}
    try:
        train = build_dataset(config, split="train")
    except (MeddiffError, OSError) as error:
        return None, None, f"the training data could not be read here ({error})"
    for split in ("val", "test"):
        try:
            holdout = build_dataset(config, split=split)
        except (MeddiffError, OSError):
            continue
        same = len(holdout) == len(train) and torch.equal(holdout[0]["image"], train[0]["image"])
        if len(holdout) and not same:  # a dataset kind that ignores `split` gives the training images again
            return train, holdout, ""
    return train, None, ""


# --- sections -------------------------------------------------------------------------------------------------


def _summary_section(run_dir: Path, checkpoint: Path, config: dict, meta: dict, net, log: dict, dataset) -> dict:
    env_file = run_dir / "environment.json"
    env = json.loads(env_file.read_text()) if env_file.is_file() else meta.get("versions") or {}
    run, data = config.get("run") or {}, meta.get("data") or {}
    rows = [
        ("task", meta.get("task")),
        ("run directory", str(run_dir)),
        ("checkpoint", f"{checkpoint.name} (EMA weights)"),
        ("network", f"{meta['network'].get('kind', 'unet')}, {sum(p.numel() for p in net.parameters()):,} parameters, "
                    f"channels {meta['network'].get('channels')}"),
        ("image shape", f"{meta.get('channels')} x {' x '.join(str(s) for s in meta.get('image_size') or [])}"),
        ("classes", meta.get("num_classes") or "unconditional"),
        ("diffusion", f"{meta['schedule'].get('kind')} schedule {_brief(meta['schedule'])}, "
                      f"predicts {meta.get('prediction')}"),
        ("data", ", ".join(f"{k}={v}" for k, v in data.items()) or "not recorded"),
        ("training images", len(dataset) if dataset is not None else "n/a"),
        ("steps", f"{meta.get('step')} of {run.get('steps')}, batch {run.get('batch_size')}"),
    ]
    if log.get("elapsed_s") is not None:
        rows.append(("wall time", f"{wall_time(log['elapsed_s']) / 60:.1f} min"))
    if log.get("images_per_s") is not None and np.isfinite(log["images_per_s"]).any():
        rows.append(("throughput", f"{np.nanmedian(log['images_per_s']):.1f} images/s (median of log windows)"))
    if log.get("loss") is not None and np.isfinite(log["loss"]).any():
        rows.append(("final loss", float(log["loss"][np.isfinite(log["loss"])][-1])))
    versions = ", ".join(f"{k} {env[k]}" for k in ("meddiff", "torch", "monai", "numpy", "python") if k in env)
    rows.append(("versions", versions or "not recorded"))
    commit = env.get("git_commit")
    rows.append(("git commit", f"{commit}{' (uncommitted changes)' if env.get('git_dirty') else ''}" if commit
                 else "not recorded"))
    if (run_dir / "command.txt").is_file():
        rows.append(("command", (run_dir / "command.txt").read_text().strip()))
    return {"title": "Run summary", "text": "", "table": [{"item": k, "value": v} for k, v in rows]}


def _brief(schedule: dict) -> str:
    return "(" + ", ".join(f"{k}={v}" for k, v in schedule.items() if k != "kind") + ")"


def loss_curve(log: dict[str, np.ndarray], size: tuple[int, int] = LOSS_PLOT_SIZE) -> Image.Image:
    """Training loss against step on a log axis: the logged window means (light) and a centred moving average."""
    steps, loss = log["step"], log["loss"]
    keep = np.isfinite(loss) & np.isfinite(steps)
    log_y = bool((loss[keep] > 0).all())
    window = max(1, int(keep.sum()) // 15) | 1
    values = np.log(loss[keep]) if log_y else loss[keep]
    smoothed = np.exp(smooth(values, window)) if log_y else smooth(values, window)
    series = [Series(steps, loss, "logged", (160, 190, 225), 1),
              Series(steps[keep], smoothed, "smoothed", (20, 70, 160), 2)]
    return line_plot(series, size=size, log_y=log_y, title="training loss", xlabel="optimiser step",
                     ylabel="loss" + (" (log scale)" if log_y else ""), x_range=(0, float(np.nanmax(steps))))


def _loss_section(log: dict, tmp: Path) -> dict:
    if not log or "loss" not in log or not np.isfinite(log["loss"]).any():
        return {"title": "Loss curve", "text": "no log.csv or log.jsonl with losses in the run directory."}
    path = tmp / "loss.png"
    loss_curve(log).save(path)
    return {"title": "Loss curve", "figure": path,
            "text": f"{len(log['loss'])} logged points (each the mean loss over run.log_every steps) and their "
                    "centred moving average (over 1/15 of the points, in log space)."}


def _enlarge(array: np.ndarray, width: int = GRID_WIDTH) -> np.ndarray:
    """Nearest-neighbour enlargement of a uint8 panel by the largest integer factor keeping it <= ``width`` wide."""
    factor = max(1, width // array.shape[1])
    return np.kron(array, np.ones((factor, factor) + (1,) * (array.ndim - 2), dtype=np.uint8))


def _sample_sections(net, meta, checkpoint, dataset, tmp: Path, *, num, sampler, steps, seed, guidance_scale,
                     device) -> tuple[list[dict], list[torch.Tensor]]:
    """One section per class (or one for an unconditional model) with a grid of ``num`` EMA samples."""
    if meta["network"].get("cond_channels"):
        return [{"title": "Samples", "text": "image-conditional model: its samples need conditioning images, "
                                             "which this report does not supply."}], []
    classes = meta.get("num_classes")
    names = getattr(dataset, "class_names", None) or []
    how = f"{num} EMA samples, sampler {sampler}, {steps} steps, seed {seed}"
    if classes:
        how += f" + class index, classifier-free guidance scale {guidance_scale:g}"
    if len(meta["image_size"]) == 3:
        how += "; each volume as its central slices across D, H and W"
    sections, samples = [], []
    for index, label in enumerate(range(classes) if classes else [None]):
        images, _ = generate(checkpoint, num, sampler=sampler, steps=steps, class_label=label,
                             guidance_scale=guidance_scale, seed=seed + index, device=device, model=net, meta=meta)
        samples.append(images)
        path = tmp / f"samples_{index}.png"
        write_png(path, _enlarge(sample_grid(images)))
        name = "" if label is None else f": class {label}" + (f" ({names[label]})" if label < len(names) else "")
        sections.append({"title": f"Samples{name}", "text": how + ".", "figure": path})
    return sections, samples


def _real_images(dataset, shape: tuple[int, ...], max_real: int) -> torch.Tensor:
    count = min(len(dataset), max_real, max(2, REAL_VALUES_BUDGET // math.prod(shape)))
    indices = np.linspace(0, len(dataset) - 1, count).round().astype(int)
    return torch.stack([torch.as_tensor(dataset[int(i)]["image"]).float() for i in indices])


def _panel(image: torch.Tensor) -> np.ndarray:
    return _enlarge(image_grid(image[None], nrow=1, pad=0), 64)


def _above(top: np.ndarray, bottom: np.ndarray, gap: int = 4) -> np.ndarray:
    """Two uint8 panels (H, W) or (H, W, 3) of equal width stacked with a white gap."""
    return np.concatenate([top, np.full((gap, *top.shape[1:]), 255, np.uint8), bottom])


def _neighbour_section(samples: list[torch.Tensor], dataset, holdout, data_note: str, tmp: Path, num_pairs: int,
                       max_real: int) -> tuple[dict, list[dict]]:
    """Figure of the training images closest to a sample, and metric rows from meddiff.metrics.memorisation
    (calibrated on held-out images when the data has a val/test split). Distances are RMS per value."""
    title = "Real images and their nearest generated neighbours"
    if not samples:
        return {"title": title, "text": "no generated samples."}, []
    synthetic = torch.cat(samples)
    if dataset is None:
        return {"title": title, "text": f"skipped: {data_note}."}, []
    shape = tuple(synthetic.shape[1:])
    real = _real_images(dataset, shape, max_real)
    if tuple(real.shape[1:]) != shape:
        return {"title": title, "text": f"skipped: training images have shape {tuple(real.shape[1:])}, samples "
                                        f"{shape}."}, []
    scale = 1 / math.sqrt(math.prod(shape))  # Euclidean distance of scaled vectors = RMS difference per value
    real_flat, synth_flat = real.reshape(len(real), -1) * scale, synthetic.reshape(len(synthetic), -1) * scale
    d_real, nearest = (a[:, 0] for a in nearest_neighbours(real_flat, synth_flat, k=1))
    order = torch.argsort(d_real)[:num_pairs].tolist()
    panels = [_above(_panel(real[i]), _panel(synthetic[nearest[i]])) for i in order]
    path = tmp / "neighbours.png"
    labelled_row(panels, [f"d={float(d_real[i]):.3f}" for i in order]).save(path)
    held = _real_images(holdout, shape, max_real) if holdout is not None else None
    if held is not None and tuple(held.shape[1:]) == shape and len(real) >= 2:
        summary = memorisation(synth_flat, real_flat, held.reshape(len(held), -1) * scale)["summary"]
        reference = ("a held-out real image's nearest training image lies at median "
                     f"d={summary['median_holdout_to_train']:.3f}")
        rows = [
            {"metric": "near-copies flagged (fraction of samples)", "value": summary["flagged_fraction"],
             "note": f"chance level {summary['expected_fraction']:g}; {summary['rule']}"},
            {"metric": "exact copies", "value": summary["exact_copies"], "note": ""},
            {"metric": "sample -> nearest training image, median d", "value": summary["median_fake_to_train"],
             "note": f"{summary['n_fake']} samples vs {summary['n_train']} training images"},
            {"metric": "held-out -> nearest training image, median d", "value": summary["median_holdout_to_train"],
             "note": f"{summary['n_holdout']} real images the model never saw: the reference"},
            {"metric": "median ratio d1/d2 (nearest / 2nd nearest)", "value": summary["median_ratio_d1_d2"],
             "note": "well below 1: samples copy one training image"},
        ]
    else:
        d_synth = nearest_neighbours(synth_flat, real_flat, k=1)[0][:, 0]
        d_train = nearest_neighbours(real_flat, real_flat, k=2)[0][:, 1]  # column 1 skips the image itself
        reference = f"a training image's nearest other training image lies at median d={float(d_train.median()):.3f}"
        rows = [
            {"metric": "sample -> nearest training image, median d", "value": float(d_synth.median()),
             "note": f"{len(synthetic)} samples vs {len(real)} training images (no held-out split to calibrate)"},
            {"metric": "sample -> nearest training image, min d", "value": float(d_synth.min()), "note": ""},
            {"metric": "training -> nearest other training image, median d", "value": float(d_train.median()),
             "note": "reference for the rows above"},
        ]
    rows += [
        {"metric": "pixel mean, samples / training", "value": f"{synthetic.mean():.3f} / {real.mean():.3f}",
         "note": "model space [-1, 1]"},
        {"metric": "pixel std, samples / training", "value": f"{synthetic.std():.3f} / {real.std():.3f}", "note": ""},
    ]
    text = (f"Top: the {len(order)} training images (of {len(real)} compared) closest to any of the "
            f"{len(synthetic)} samples; bottom: that sample. d is the RMS difference per value in model space "
            f"[-1, 1] (volumes: central slice shown, distance over the whole volume). For scale, {reference}; "
            "pairs far closer than that suggest memorisation (meddiff.metrics.memorisation).")
    return {"title": title, "text": text, "figure": path}, rows


def _metric_section(run_dir: Path, nn_rows: list[dict]) -> dict:
    eval_file = run_dir / "eval.json"
    if eval_file.is_file():
        return {"title": "Metrics", **_eval_table(eval_file)}
    if nn_rows:
        return {"title": "Metrics", "text": "no eval.json in the run directory (run `meddiff evaluate` for the full "
                                            "metrics); these are the cheap nearest-neighbour and intensity "
                                            "statistics of the samples above, computed in pixel space.",
                "table": nn_rows}
    return {"title": "Metrics", "text": "no eval.json in the run directory and no samples with training data to "
                                        "compare; run `meddiff evaluate`."}


def _eval_table(path: Path) -> dict:
    """Text and rows of the headline table that `meddiff evaluate` prints (tasks.evaluate.headline_rows)."""
    from meddiff.tasks.evaluate import caption, headline_rows

    try:
        result = json.loads(path.read_text())
        return {"text": f"from {path.name} (`meddiff evaluate`): {caption(result)}.", "table": headline_rows(result)}
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise MeddiffError(f"{path} is not a `meddiff evaluate` result ({type(error).__name__}: {error}); rerun "
                           f"`meddiff evaluate ... --out {path}` or delete it") from None
