"""Whole-head latent diffusion benchmark (issue 27): label fidelity, memory and speed of brain3d_ldm.

For each TEST subject of configs/splits/ixi_t1_2mm_dlmuse.json (never used for training or choices) the subject's
raw DLMUSE parcellation is the condition; the generated head is segmented by the shipped brain_parcellation_ixi
(with `meddiff segment`'s default clean-up) and scored by Dice per merged class against the condition (Med-DDPM's
fidelity measure). Rows:

- ``ldm``: the shipped brain3d_ldm (latent UNet + autoencoder), dpmpp_2m with --steps steps;
- ``random_unet``: the same pipeline with a random-weight latent UNet (control: what the decoder and
  the segmenter give without a trained prior; MONAI zero-initialises the UNet's output layer, so the weights are
  drawn N(0, 0.05^2) everywhere, seed 0);
- ``painting``: no learning beyond averages: every labelled voxel gets its class's mean
  intensity over the 150 training heads, class-0 voxels the voxel-wise mean training head, then a Gaussian blur
  of 0.6 voxel (partial volume); what a label map alone gives the segmenter;
- ``retrieval``: the real training head whose merged label map has the highest mean Dice
  with the given one (classical atlas selection; real anatomy, but not the given one);
- ``ae_recon``: encode + decode of the real test head (the first stage's
  ceiling);
- ``real``: the segmenter on the real images (the ceiling of the measure itself).

Peak memory: the maximum resident set of a child process running ``meddiff sample --checkpoint brain3d_ldm --n 1
--label-map <test map>`` (whole-head sampling and decoding, one thread), and its seconds per volume. Memorisation:
for each generated head, the smallest mean absolute difference to the 150 training heads (inside the original grid)
against the same for the real test head of that label map (lower than real = closer to a training subject than an
unseen real subject is).

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/synthesis3d.py --out runs/ldm/benchmark.json

``--rows`` measures some rows only and ``--merge`` adds an earlier run's other rows (the model-independent controls
can run while the latent UNet trains):

    ... benchmarks/synthesis3d.py --rows random_unet,painting,retrieval,ae_recon,real --out runs/ldm/controls.json
    ... benchmarks/synthesis3d.py --rows ldm --merge runs/ldm/controls.json --out runs/ldm/benchmark.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
DATA = ROOT.parent / "shared" / "data" / "ixi_t1_2mm_dlmuse"
SPLIT = ROOT / "configs" / "splits" / "ixi_t1_2mm_dlmuse.json"


ROWS = {
    "ldm": "brain3d_ldm (label map -> latent diffusion -> decoder)",
    "random_unet": "same pipeline, random-weight latent UNet",
    "painting": "class-mean painting of the label map (classical)",
    "retrieval": "nearest training head by label-map Dice (retrieval)",
    "ae_recon": "autoencoder reconstruction of the real test head",
    "real": "real test heads (the segmenter's ceiling)",
}


def markdown_table(result: dict) -> str:
    """The benchmarks/README.md table of a result: mean Dice and the per-class Dice of every row."""
    rows = result["rows"]
    classes = list(next(iter(rows.values()))["per_class"])
    lines = ["| row | subjects | mean Dice | " + " | ".join(classes) + " |",
             "|---|---|---|" + "---|" * len(classes)]
    for key, row in rows.items():
        lines.append(f"| {row.get('title', key)} | {len(row['subjects'])} | {row['mean_dice']:.3f} | "
                     + " | ".join(f"{row['per_class'][c]:.2f}" for c in classes) + " |")
    return "\n".join(lines)


def distribution_rows(args, volumes: dict, train_heads, ldm, subjects: list[str]) -> dict:
    """2.5D FID/KID/precision/recall (random-cnn features) of each row's heads against the real test heads, the
    MS-SSIM diversity of each row's heads (different label maps), the real floor (as many real TRAIN heads against
    the test heads) and, for ldm, the diversity of ``--diversity-seeds`` heads drawn from one label map."""
    from meddiff.data.heads import HEAD_GRID, pad_volume, unpad_volume
    from meddiff.metrics.features import get_feature_extractor
    from meddiff.tasks.segment.data import load_labelled
    from meddiff.tasks.synthesis3d import sample_heads
    from meddiff.tasks.synthesis3d.evaluate import distribution_scores, ms_ssim_diversity
    from meddiff.tasks.synthesis3d.labelmap import condition_from_labels

    extractor = get_feature_extractor("random-cnn")
    real = volumes.get("real")
    if not real:
        raise SystemExit("--distribution needs the real row (the reference heads)")
    out = {}
    for row, heads in volumes.items():
        entry = {"ms_ssim_diversity": ms_ssim_diversity(heads)}
        if row != "real":
            entry.update(distribution_scores(real, heads, extractor))
        out[row] = entry
        print(f"distribution {row}: {json.dumps({k: round(v, 4) for k, v in entry.items() if isinstance(v, float)})}",
              flush=True)
    if train_heads is not None:
        floor = train_heads[:len(real)]
        out["real_train"] = {"ms_ssim_diversity": ms_ssim_diversity(floor),
                             **distribution_scores(real, floor, extractor)}
    if "ldm" in volumes and args.diversity_seeds > 1:
        s = load_labelled(DATA, subjects[0])
        cond = condition_from_labels(pad_volume(s.labels, HEAD_GRID, 0), 10, ldm.ae.factor)
        draws = [volumes["ldm"][0]] + [
            unpad_volume(sample_heads(ldm, cond, steps=args.steps, seed=1000 + k)[0, 0].numpy(), s.image.shape)
            for k in range(1, args.diversity_seeds)]
        out["ldm"]["ms_ssim_same_label_map"] = ms_ssim_diversity(draws)
        out["ldm"]["same_label_map_draws"] = len(draws)
    return out


def distribution_table(dist: dict) -> str:
    """Markdown: 2.5D FID / KID / precision / recall against the real test heads and MS-SSIM diversity per row."""
    lines = ["| row | 2.5D FID | KID | precision | recall | MS-SSIM between heads |",
             "|---|---|---|---|---|---|"]
    for key, d in dist.items():
        title = ROWS.get(key, "real TRAIN heads (the real-vs-real floor)")
        cells = [f"{d[k]:.3f}" if k in d else "-" for k in ("fid", "kid", "precision", "recall")]
        lines.append(f"| {title} | " + " | ".join(cells) + f" | {d['ms_ssim_diversity']:.3f} |")
    return "\n".join(lines)


def random_unet(ldm):
    from meddiff.nets import build_network

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build_network(ldm.meta["network"])
        with torch.no_grad():
            for p in net.parameters():
                p.normal_(0.0, 0.05)
    return net.eval()


def peak_memory_run(checkpoint: str, label_map: Path, steps: int, out: Path) -> dict:
    """Peak RSS (MiB) and seconds per volume of one `meddiff sample` child process (one thread)."""
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "meddiff.cli.main", "sample", "--checkpoint", checkpoint, "--n", "1",
                    "--label-map", str(label_map), "--steps", str(steps), "--out", str(out)], check=True, env=env,
                   capture_output=True)
    wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    manifest = json.loads((out / "manifest.json").read_text())
    return {"peak_rss_mib": round(peak, 1), "seconds_per_volume": manifest["seconds_per_volume"],
            "process_wall_s": round(wall, 1)}


def nearest_training_distance(volume: np.ndarray, train: np.ndarray) -> float:
    """Smallest mean |volume - training head| over the training heads (model range, original grid)."""
    v = torch.from_numpy(np.asarray(volume, dtype=np.float32))
    return float(min((v - torch.from_numpy(t.astype(np.float32))).abs().mean() for t in train))


def class_mean_painting(labels: np.ndarray, class_means: np.ndarray, mean_head: np.ndarray,
                        sigma: float = 0.6) -> np.ndarray:
    """A head painted from its label map: class-mean intensity per labelled voxel, the mean training head where the
    label is 0 (background: scalp, skull, air), blurred by a Gaussian of ``sigma`` voxels."""
    from scipy.ndimage import gaussian_filter

    labels = np.asarray(labels, dtype=np.int64)
    painted = np.where(labels > 0, class_means[labels], mean_head).astype(np.float32)
    return gaussian_filter(painted, sigma)


def label_dice(a: np.ndarray, b: np.ndarray, num_classes: int = 10) -> float:
    """Mean Dice over the foreground classes present in either merged map (a, b same shape)."""
    joint = np.bincount((np.asarray(a, np.int64) * num_classes + np.asarray(b, np.int64)).ravel(),
                        minlength=num_classes ** 2).reshape(num_classes, num_classes)
    inter, sizes = np.diag(joint)[1:], (joint.sum(1) + joint.sum(0))[1:]
    present = sizes > 0
    return float(np.mean(2 * inter[present] / sizes[present]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="brain3d_ldm")
    parser.add_argument("--subjects", type=int, default=10, help="first N test subjects (default: all 10)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--heads", default=str(ROOT / "runs" / "ldm" / "heads.npz"),
                        help="head cache for the memorisation check (skipped when missing)")
    parser.add_argument("--figure", default=str(ROOT / "benchmarks" / "figures" / "ldm_label_vs_generated.png"))
    parser.add_argument("--rows", help=f"comma-separated rows to measure (default: all of {', '.join(ROWS)})")
    parser.add_argument("--merge", help="an earlier --out JSON whose other rows join this one's")
    parser.add_argument("--distribution", action="store_true",
                        help="also 2.5D FID/KID/precision/recall of each row's heads against the real test heads "
                             "(random-cnn features) and MS-SSIM diversity")
    parser.add_argument("--diversity-seeds", type=int, default=3,
                        help="with --distribution: heads drawn from the first test label map for the ldm row's "
                             "same-condition diversity (default 3)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from meddiff.data.heads import HEAD_GRID, normalize_head, pad_volume, unpad_volume
    from meddiff.files import write_png, write_text
    from meddiff.tasks.segment.data import load_labelled, subject_files
    from meddiff.tasks.segment.labels import CLASS_NAMES
    from meddiff.tasks.segment.pipeline import load_segmenter
    from meddiff.tasks.synthesis3d import load_ldm, sample_heads
    from meddiff.tasks.synthesis3d.autoencoder import decode, encode
    from meddiff.tasks.synthesis3d.evaluate import label_fidelity
    from meddiff.tasks.synthesis3d.labelmap import condition_from_labels
    from meddiff.tasks.synthesis3d.output import three_planes

    split = json.loads(SPLIT.read_text())
    subjects = split["test"][:args.subjects]
    wanted = [r.strip() for r in args.rows.split(",")] if args.rows else list(ROWS)
    unknown = sorted(set(wanted) - set(ROWS))
    if unknown:
        raise SystemExit(f"--rows: unknown row(s) {unknown}; choose from {list(ROWS)}")
    ldm = load_ldm(args.checkpoint)
    control = type(ldm)(random_unet(ldm), ldm.ae, ldm.meta, ldm.path)
    segmenter = load_segmenter("brain_parcellation_ixi")
    train_heads = None
    if Path(args.heads).is_file():
        cache = np.load(args.heads)
        names = [str(s) for s in cache["subjects"]]
        keep = [names.index(s) for s in split["train"]]
        shape = tuple(int(v) for v in cache["shape"])
        images, labels = cache["images"], cache["labels"]
        train_heads = [unpad_volume(images[i], shape, HEAD_GRID).astype(np.float32) for i in keep]
        train_labels = [unpad_volume(labels[i], shape, HEAD_GRID) for i in keep]
        del images, labels
        mean_head = np.mean(train_heads, axis=0)
        sums, counts = np.zeros(10), np.zeros(10)
        for head, lab in zip(train_heads, train_labels):
            sums += np.bincount(lab.ravel(), weights=head.ravel(), minlength=10)
            counts += np.bincount(lab.ravel(), minlength=10)
        class_means = sums / np.maximum(counts, 1)
    elif {"painting", "retrieval"} & set(wanted):
        raise SystemExit(f"--heads {args.heads}: missing; the painting and retrieval rows need the training heads")
    rows = {k: [] for k in wanted}
    volumes = {k: [] for k in wanted}  # kept for --distribution only
    seconds, memorisation, figure = [], [], None
    for n, subject in enumerate(subjects):
        s = load_labelled(DATA, subject)
        real = normalize_head(s.image)
        cond = condition_from_labels(pad_volume(s.labels, HEAD_GRID, 0), 10, ldm.ae.factor)

        def make(row):
            if row == "ldm":
                started = time.perf_counter()
                head = sample_heads(ldm, cond, steps=args.steps, seed=n)[0, 0].numpy()
                seconds.append(time.perf_counter() - started)
                return unpad_volume(head, s.image.shape)
            if row == "random_unet":
                return unpad_volume(sample_heads(control, cond, steps=args.steps, seed=n)[0, 0].numpy(), s.image.shape)
            if row == "painting":
                return class_mean_painting(s.labels, class_means, mean_head)
            if row == "retrieval":
                return train_heads[int(np.argmax([label_dice(s.labels, lab) for lab in train_labels]))]
            if row == "ae_recon":
                x = torch.from_numpy(pad_volume(real, HEAD_GRID, -1.0))[None, None]
                return unpad_volume(decode(ldm.ae, encode(ldm.ae, x))[0, 0].numpy(), s.image.shape)
            return real

        for row in wanted:
            volume = make(row)
            if args.distribution:
                volumes[row].append(volume.astype(np.float32))
            rows[row].append({"subject": subject, **label_fidelity(volume, s.labels, segmenter)})
            if row == "ldm":
                if train_heads is not None:
                    memorisation.append({"subject": subject,
                                         "generated_to_nearest_train": nearest_training_distance(volume, train_heads),
                                         "real_test_to_nearest_train": nearest_training_distance(real, train_heads)})
                if figure is None:  # generated over its label map, then the real test head
                    figure = np.concatenate([three_planes(volume, s.labels), three_planes(real)])
        print(f"{subject}: " + ", ".join(f"{k} {rows[k][-1]['dice']:.3f}" for k in rows), flush=True)
    summary = {k: {"title": ROWS[k], "mean_dice": float(np.mean([r["dice"] for r in v])),
                   "per_class": dict(zip(CLASS_NAMES[1:], np.nanmean([r["per_class"] for r in v], axis=0).tolist())),
                   "subjects": v} for k, v in rows.items()}
    result = {"checkpoint": str(ldm.path), "sampler": "dpmpp_2m", "steps": args.steps, "test_subjects": subjects,
              "rows": summary, "threads": 1}
    if "ldm" in wanted:
        out_dir = Path(args.out).with_suffix("")
        result["seconds_per_volume_in_process"] = float(np.mean(seconds))
        result["cli_sample"] = peak_memory_run(args.checkpoint, subject_files(DATA, subjects[0])["seg"], args.steps,
                                               out_dir.parent / (out_dir.name + "_cli_sample"))
        result["memorisation"] = memorisation
    if args.distribution:
        result["distribution"] = distribution_rows(args, volumes, train_heads, ldm, subjects)
    if args.merge:  # rows measured by an earlier run (e.g. the controls, run while the model trained)
        earlier = json.loads(Path(args.merge).read_text())
        result["merged_from"] = {"file": str(args.merge), "test_subjects": earlier["test_subjects"]}
        result["rows"] = {**{k: v for k, v in earlier["rows"].items() if k not in summary}, **summary}
    write_text(args.out, json.dumps(result, indent=2) + "\n")
    if figure is not None:
        write_png(args.figure, figure)
    print(json.dumps({k: round(v["mean_dice"], 3) for k, v in result["rows"].items()}), json.dumps(result.get("cli_sample")))
    print(markdown_table(result))
    if "distribution" in result:
        print(distribution_table(result["distribution"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
