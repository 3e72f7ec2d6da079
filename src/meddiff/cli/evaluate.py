"""`meddiff evaluate --real DIR --fake DIR [--train DIR] [--features NAME] [--range R] --out FILE.json`: score
synthetic images."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from meddiff.metrics.features import FEATURE_EXTRACTORS
    from meddiff.metrics.generative import DEFAULT_K
    from meddiff.metrics.memorisation import DEFAULT_QUANTILE
    from meddiff.tasks.evaluate import RANGE_HELP

    parser = subparsers.add_parser(
        "evaluate", help="FID/KID, precision/recall, near-copies and train-synthetic-test-real of synthetic images",
        description="Score synthetic images (--fake) against real held-out images (--real). Each may be a folder "
                    "of PNG/NPY/NIfTI/DICOM images (class sub-folders give labels) or an array file (.npy; .npz with "
                    "an images array and optional labels; a MedMNIST .npz gives its --real-split / --train-split). "
                    "Features are offline networks trained here, not Inception: every output names them.",
    )
    parser.add_argument("--real", required=True, help="real images the generator never saw (e.g. the val split)")
    parser.add_argument("--fake", required=True, help="synthetic images")
    parser.add_argument("--train", help="the generator's training images: enables the near-copy test and, with "
                                        "labels, the real and real+synthetic classifiers")
    parser.add_argument("--features", default="pneumonia-cnn", choices=sorted(FEATURE_EXTRACTORS),
                        help="feature extractor for FID/KID/precision/recall (default: pneumonia-cnn)")
    parser.add_argument("--channels", default="mean", choices=("mean", "each"),
                        help="multi-channel images: embed the channel mean, or each channel (features concatenated)")
    parser.add_argument("--range", nargs="+", default=["auto"], metavar="RANGE", dest="intensity_range",
                        help="how stored intensities map to [-1, 1], one rule for --real, --fake and --train "
                             f"together (recorded in the JSON): {RANGE_HELP}")
    parser.add_argument("--labels", help="class labels of the --fake images (.npy/.txt/.csv, one integer per image "
                                         "in sorted file order) when their folder or file carries none")
    parser.add_argument("--real-split", default="val", help="split of a MedMNIST --real file (default: val)")
    parser.add_argument("--train-split", default="train", help="split of a MedMNIST --train file (default: train)")
    parser.add_argument("--k", type=int, default=DEFAULT_K,
                        help=f"k of the k-NN precision/recall (default: {DEFAULT_K})")
    parser.add_argument("--kid-subsets", type=int, default=100, help="KID subsets (default: 100)")
    parser.add_argument("--kid-subset-size", type=int, default=1000, help="KID subset size (default: 1000)")
    parser.add_argument("--quantile", type=float, default=DEFAULT_QUANTILE,
                        help="near-copy threshold: this quantile of real-to-train distances (default: 0.01)")
    parser.add_argument("--no-utility", action="store_true", help="skip the train-synthetic-test-real classifiers")
    parser.add_argument("--utility-steps", type=int, default=400, help="training steps per classifier (default: 400)")
    parser.add_argument("--paired", action="store_true", help="also PSNR/SSIM/MS-SSIM of real[i] vs fake[i]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the KID subsets and classifiers (default: 0)")
    parser.add_argument("--out", required=True, help="output JSON file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meddiff.data.io import write_json
    from meddiff.tasks.evaluate import evaluate_folders, format_table, parse_range

    intensity_range = parse_range(args.intensity_range)  # a bad --range fails before any image is read
    result = evaluate_folders(
        args.real, args.fake, features=args.features, train=args.train, labels=args.labels,
        real_split=args.real_split, train_split=args.train_split, k=args.k, kid_subsets=args.kid_subsets,
        kid_subset_size=args.kid_subset_size, quantile=args.quantile, utility=not args.no_utility,
        utility_steps=args.utility_steps, paired=args.paired, seed=args.seed, channels=args.channels,
        intensity_range=intensity_range)
    print(format_table(result))
    print(f"wrote {write_json(result, args.out)}")
    return 0
