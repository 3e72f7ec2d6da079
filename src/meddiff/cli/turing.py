"""`meddiff turing-test create|serve|score`: a blinded real-vs-synthetic reading study on this machine."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from meddiff.tasks.turing.server import DEFAULT_PORT
    from meddiff.tasks.turing.study import WINDOW_HELP

    parser = subparsers.add_parser(
        "turing-test", help="visual Turing test: create, serve and score a blinded real-vs-synthetic reading study",
        description="A reading study in the browser: raters say real or synthetic for each image; the key stays "
                    "with the organiser and no data leaves this machine.")
    commands = parser.add_subparsers(dest="turing_command", metavar="STEP", required=True)

    create = commands.add_parser("create", help="draw a balanced, shuffled, de-identified set into a study folder")
    create.add_argument("--real", required=True, help="real images: a folder (PNG/NPY/NIfTI/DICOM) or an array file "
                                                      "(.npy/.npz; a MedMNIST .npz gives its train split)")
    create.add_argument("--synthetic", required=True, help="synthetic images: a `meddiff sample` folder, an image "
                                                           "folder or an array file")
    create.add_argument("--n", type=int, default=40, help="images in the study, half of each kind (default: 40)")
    create.add_argument("--seed", type=int, default=0, help="seed of the draw and the shuffle (default: 0)")
    create.add_argument("--window", default=None, help=WINDOW_HELP)
    create.add_argument("--size", type=int, nargs="+", metavar="N",
                        help="resample both sets to this size (H W, or D H W for volumes) when they differ")
    create.add_argument("--out", required=True, help="study folder to write")
    create.set_defaults(func=run_create)

    serve = commands.add_parser("serve", help="serve the study on 127.0.0.1 (answers are saved as they come)")
    serve.add_argument("study", help="study folder written by `create`")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine "
                                                           "only; anything else needs --allow-remote)")
    serve.add_argument("--allow-remote", action="store_true",
                       help="allow a non-loopback --host (other machines can then see the images and answer)")
    serve.set_defaults(func=run_serve)

    score = commands.add_parser("score", help="accuracy, intervals, kappa, binomial test and the verdict")
    score.add_argument("study", help="study folder")
    score.add_argument("--out", help="HTML report (default: STUDY/report.html)")
    score.add_argument("--json", help="JSON result (default: STUDY/score.json)")
    score.set_defaults(func=run_score)


def run_create(args: argparse.Namespace) -> int:
    from meddiff.tasks.turing.study import create_study

    manifest = create_study(args.real, args.synthetic, args.out, n=args.n, seed=args.seed, window=args.window,
                            size=tuple(args.size) if args.size else None)
    print(f"wrote {args.out}: {manifest['n']} images ({manifest['n'] // 2} real, {manifest['n'] // 2} synthetic), "
          f"shape {tuple(manifest['shape'])}; keep {args.out}/manifest.json to yourself (it is the key, never served)")
    print(f"next: meddiff turing-test serve {args.out}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from meddiff.tasks.turing.server import serve_study

    serve_study(args.study, host=args.host, port=args.port, allow_remote=args.allow_remote)
    return 0


def run_score(args: argparse.Namespace) -> int:
    from meddiff.tasks.turing.score import format_summary, write_score

    result = write_score(args.study, args.out, json_out=args.json)
    print(format_summary(result))
    print(f"wrote {result['files']['json']} and {result['files']['html']}")
    return 0
