"""`meddiff checkpoints list`: the models shipped with meddiff (usable by name in every --checkpoint)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser("checkpoints", help="list the shipped checkpoints",
                                   description="Shipped checkpoints: small models trained by scripts/train_shipped.py "
                                               "(each folder keeps its config, log and exact command).")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="table of shipped checkpoints")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(func=run_list)


def run_list(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from meddiff.training.shipped import SHIPPED_DIR, list_shipped

    cards = list_shipped()
    if args.json:
        print(json.dumps(cards, indent=2))
        return 0
    if not cards:
        print(f"no shipped checkpoints in {SHIPPED_DIR}")
        return 0
    print("| name | task | image size | classes | parameters | MB | default for | trained on | description |")
    print("|---|---|---|---|---|---|---|---|---|")
    for c in cards:
        size = "x".join(str(s) for s in c["image_size"] or []) + f" ({c['channels']} ch)"
        params = f"{c['parameters'] / 1e6:.2f} M" if c["parameters"] else "?"
        print(f"| {c['name']} | {c['task']} | {size} | {c['num_classes'] or '-'} | {params} | {c['size_mb']} | "
              f"{', '.join(c['default_for']) or '-'} | {c['trained_on'] or '?'} | {c['description']} |")
    for c in cards:
        if c.get("labels"):
            print(f"\n{c['name']} classes (labels.json; id: name <- DLMUSE ids):")
            for k in c["labels"]:
                print(f"  {k['id']}: {k['name']} <- {', '.join(map(str, k.get('dlmuse_ids', []))) or '-'}")
    for c in cards:  # translation models: contrasts and the normalisation they expect (translation.json)
        card_file = Path(c["path"]) / "translation.json"
        if card_file.is_file():
            t = json.loads(card_file.read_text())
            n = t.get("normalisation", {})
            print(f"\n{c['name']} contrasts: {' + '.join(t['source'])} -> {', '.join(t['targets'])} (meddiff translate); "
                  f"axial slices at {t.get('spacing_mm')} mm, each volume's brain {n.get('lower')}/{n.get('upper')}th "
                  "percentiles -> -1/1; outputs in the training subject's target units")
    return 0
