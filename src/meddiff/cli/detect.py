"""`meddiff detect` (anomaly maps of MR volumes, BraTS case folders or 2D images) and `meddiff evaluate-anomaly`
(Dice, AUROC, AUPRC and image-level AUROC of every method against tumour masks and X-ray labels)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from meddiff.tasks.anomaly import METHODS, RESIDUALS, THRESHOLDS
    from meddiff.tasks.anomaly.methods import MR_DEFAULTS

    parser = subparsers.add_parser(
        "detect", help="unsupervised anomaly maps (Wolleb, AnoDDPM, autoencoder, intensity baseline)",
        description="For each input (a NIfTI volume, a BraTS case folder <case>_<contrast>.nii.gz, a 2D image, or a "
                    "folder of them) write <name>_anomaly.npy (+ .nii.gz for volumes), _healthy.npy, "
                    "_segmentation.npy (+ .nii.gz) and _overlay.png to --out, and scores.csv (one image-level "
                    "score per input, per slice for volumes). Default models: the shipped BraTS ones, with each method's "
                    "settings chosen on development data (benchmarks/README.md); --paper-settings for the papers'.",
    )
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--checkpoint", help="diffusion model / autoencoder: shipped name or path")
    parser.add_argument("--classifier", help="noise-aware classifier for --method wolleb: shipped name or path")
    parser.add_argument("--input", required=True, help="NIfTI volume, BraTS case folder, 2D image, or a folder")
    parser.add_argument("--out", required=True, help="output folder")
    add_setting_options(parser, MR_DEFAULTS)
    add_map_options(parser, RESIDUALS, MR_DEFAULTS)
    parser.add_argument("--threshold", default="otsu", choices=THRESHOLDS,
                        help="otsu (per input), percentile (of --healthy maps) or fixed (--threshold-value)")
    parser.add_argument("--threshold-value", type=float, help="fixed threshold, or the percentile (default 99)")
    parser.add_argument("--healthy", help="healthy images for --threshold percentile")
    parser.add_argument("--median", type=int,
                        help="median filter size in pixels (0: none; default 5 per 240 px, i.e. 5 on BraTS, none on 28 px)")
    parser.add_argument("--min-size", type=int, default=10, help="drop connected components smaller than this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    parser.set_defaults(func=run_detect)

    evaluate = subparsers.add_parser(
        "evaluate-anomaly", help="pixel and image-level metrics of the anomaly methods on BraTS and chest X-rays",
        description="Pixel AUROC/AUPRC/best Dice/Dice at Otsu on BraTS subjects not used in training, image-level "
                    "AUROC on slices of the training subject and on held-out PneumoniaMNIST val images; prints a markdown "
                    "table and writes JSON.",
    )
    evaluate.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    evaluate.add_argument("--checkpoint", help="evaluate this model (shipped name or path) instead of the shipped "
                                               "BraTS one; needs exactly one --methods and --pneumonia ''")
    evaluate.add_argument("--classifier", help="Wolleb's noise-aware classifier instead of the shipped one")
    evaluate.add_argument("--brats-test", default="../shared/data/brats_slices_2d/brats_slices.npz",
                          help="npz of BraTS slices of unseen subjects ('' to skip)")
    evaluate.add_argument("--brats-case", default="../shared/data/brats_case_1",
                          help="the training case folder, for image-level AUROC on its slices ('' to skip)")
    evaluate.add_argument("--pneumonia", default="../shared/data/medmnist/pneumoniamnist.npz",
                          help="PneumoniaMNIST npz for the chest X-ray image-level task ('' to skip)")
    evaluate.add_argument("--chest-per-class", type=int, default=50)
    add_setting_options(evaluate, MR_DEFAULTS)
    add_map_options(evaluate, RESIDUALS, MR_DEFAULTS)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--out", help="JSON file for the results")
    evaluate.set_defaults(func=run_evaluate)


def add_setting_options(parser: argparse.ArgumentParser, defaults: dict) -> None:
    a, g = defaults["anoddpm"], defaults["anoddpm-gaussian"]
    parser.add_argument("--noise-level", type=float,
                        help=f"Wolleb L / AnoDDPM t_lambda in schedule steps of 1000 (BraTS default: "
                             f"{defaults['wolleb']['noise_level']:g} / {a['noise_level']:g} simplex, "
                             f"{g['noise_level']:g} Gaussian; papers: 500 / 250)")
    parser.add_argument("--guidance-scale", type=float, help=f"Wolleb classifier scale s (BraTS default: "
                                                            f"{defaults['wolleb']['guidance_scale']:g}; paper: 100)")
    parser.add_argument("--steps", type=int, help=f"sampler steps between the noise level and 0 (BraTS default: "
                                                  f"AnoDDPM {a['steps']} simplex, {g['steps']} Gaussian, Wolleb "
                                                  f"{defaults['wolleb']['steps']}; papers: 25)")
    parser.add_argument("--paper-settings", dest="settings", action="store_const", const="paper", default="default",
                        help="use the papers' settings for whatever is left out (Wolleb L 500, AnoDDPM t_lambda 250, "
                             "|x - healthy| summed over all contrasts, one reconstruction)")


def add_map_options(parser: argparse.ArgumentParser, residuals, defaults: dict) -> None:
    parser.add_argument("--map-contrasts", nargs="+", metavar="CONTRAST",
                        help="contrasts summed in the anomaly map, by name (t1ce t2 flair for the shipped BraTS "
                             "models), channel index, or 'all' (default for BraTS MR checkpoints: flair; otherwise "
                             "all, as Wolleb et al.)")
    parser.add_argument("--residual", choices=residuals,
                        help="abs: |x - healthy|; positive: only brighter than healthy (FLAIR/T2 lesions) (default "
                             "for BraTS MR checkpoints: positive; otherwise abs)")
    parser.add_argument("--samples", type=int,
                        help=f"AnoDDPM: reconstructions per input with independent noise, maps averaged (default for "
                             f"BraTS MR checkpoints: {defaults['anoddpm']['samples']}; otherwise 1)")


def run_detect(args: argparse.Namespace) -> int:
    from meddiff.tasks.anomaly import run_detect as detect

    rows = detect(args.method, args.input, args.out, checkpoint=args.checkpoint, classifier=args.classifier,
                  noise_level=args.noise_level, guidance_scale=args.guidance_scale, steps=args.steps,
                  threshold=args.threshold, threshold_value=args.threshold_value, healthy=args.healthy,
                  median=args.median, min_size=args.min_size, seed=args.seed, device=args.device,
                  map_contrasts=args.map_contrasts, residual=args.residual, samples=args.samples,
                  settings=args.settings, progress=True)
    inputs = len({r["input"] for r in rows})
    print(f"wrote anomaly maps of {inputs} input(s) ({len(rows)} scores) to {args.out}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from meddiff.data.io import write_json
    from meddiff.tasks.anomaly import markdown_table, run_evaluation

    results = run_evaluation(args.methods, brats_test=args.brats_test or None, brats_case=args.brats_case or None,
                             pneumonia=args.pneumonia or None, chest_per_class=args.chest_per_class,
                             noise_level=args.noise_level, guidance_scale=args.guidance_scale, steps=args.steps,
                             seed=args.seed, map_contrasts=args.map_contrasts, residual=args.residual,
                             samples=args.samples, checkpoint=args.checkpoint, classifier=args.classifier,
                             settings=args.settings)
    print(markdown_table(results))
    if args.out:
        print(f"wrote {write_json(results, args.out)}")
    return 0
