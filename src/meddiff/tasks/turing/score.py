"""`meddiff turing-test score`: accuracy, intervals, agreement and the verdict of a study, as JSON and HTML.

Each rater's last answer per image counts (earlier ones stay in the log and are counted as re-answers). The
pooled test treats every (rater, image) answer as independent, which answers of one rater on one image set are
not quite; the per-rater rows are the cleaner test and are reported beside it. Sensitivity is the share of
synthetic images called synthetic, specificity the share of real images called real. The verdict uses seed
002's bar: accuracy below 55 %, and whether the 95 % interval still includes 50 % (chance).
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from meddiff.errors import MeddiffError
from meddiff.files import write_text
from meddiff.tasks.turing.answers import CONFIDENCES, final_answers, read_answers
from meddiff.tasks.turing.stats import accuracy_summary, fleiss_kappa, proportion
from meddiff.tasks.turing.study import ANSWERS, IMAGES, KINDS, load_manifest

BAR = 0.55  # seed 002: raters should not tell real from synthetic, accuracy < 55 %
SCORE_FILE = "score.json"
REPORT_FILE = "report.html"
SHOW = 8  # images shown per "fooled" row


def score_study(study: str | Path) -> dict:
    """Score the answers logged in ``study`` -> the result (see module docstring)."""
    study = Path(study)
    manifest = load_manifest(study)
    truth = {item["id"]: item["kind"] for item in manifest["items"]}
    records, torn = read_answers(study / ANSWERS)
    records = [r for r in records if r.get("id") in truth]
    if not records:
        raise MeddiffError(f"{study}: no answers logged yet ({ANSWERS} is missing or empty); run `meddiff "
                           "turing-test serve` and let raters answer first")
    final = final_answers(records)
    repeats = Counter((r["rater"], r["id"]) for r in records)
    raters = sorted({rater for rater, _ in final})
    pairs = [(truth[i], a["label"]) for (_, i), a in final.items()]
    per_rater = {}
    for rater in raters:
        mine = [(truth[i], a["label"]) for (name, i), a in final.items() if name == rater]
        per_rater[rater] = {"answered": len(mine), "complete": len(mine) == len(truth),
                            "re_answered": sum(1 for (name, _), c in repeats.items() if name == rater and c > 1),
                            **accuracy_summary(mine)}
    by_confidence = {}
    for c in CONFIDENCES:
        answers = [truth[i] == a["label"] for (_, i), a in final.items() if a["confidence"] == c]
        by_confidence[str(c)] = proportion(sum(answers), len(answers))
    pooled = accuracy_summary(pairs)
    result = {
        "study": str(study), "n_images": len(truth), "raters": raters, "answers_logged": len(records),
        "answers_counted": len(final), "torn_lines_skipped": torn,
        "re_answered": [{"rater": rater, "id": i, "times": c} for (rater, i), c in sorted(repeats.items()) if c > 1],
        "pooled": pooled, "per_rater": per_rater, "by_confidence": by_confidence,
        "fleiss_kappa": _kappa(final, raters, truth), "images": _per_image(final, truth),
        "verdict": verdict(pooled),
    }
    return result


def _kappa(final: dict, raters: list[str], truth: dict) -> dict:
    """Fleiss' kappa over the images every rater answered (categories real, synthetic)."""
    if len(raters) < 2:
        return {"kappa": None, "raters": len(raters), "images": 0, "note": "needs two or more raters"}
    common = [i for i in truth if all((r, i) in final for r in raters)]
    if not common:
        return {"kappa": None, "raters": len(raters), "images": 0, "note": "no image was answered by every rater"}
    counts = [[sum(final[(r, i)]["label"] == k for r in raters) for k in KINDS] for i in common]
    kappa = fleiss_kappa(counts)
    return {"kappa": None if np.isnan(kappa) else kappa, "raters": len(raters), "images": len(common),
            "note": "over the images every rater answered" + (" (every answer alike: undefined)" if np.isnan(kappa)
                                                               else "")}


def _per_image(final: dict, truth: dict) -> list[dict]:
    rows = defaultdict(list)
    for (_, i), a in final.items():
        rows[i].append(a)
    out = []
    for i, kind in truth.items():
        answers = rows.get(i, [])
        fooled = [a for a in answers if a["label"] != kind]
        out.append({"id": i, "kind": kind, "answers": len(answers), "fooled": len(fooled),
                    "fooled_rate": len(fooled) / len(answers) if answers else None,
                    "fooled_confidence": float(np.mean([a["confidence"] for a in fooled])) if fooled else None})
    return out


def verdict(pooled: dict) -> dict:
    """Seed 002's terms: accuracy < 55 %, and whether the 95 % interval includes 50 %."""
    acc, (lo, hi) = pooled["accuracy"], pooled["ci95"]
    below = acc is not None and acc < BAR
    chance = lo <= 0.5 <= hi
    if below and chance:
        text = "passes: raters could not tell real from synthetic (accuracy below 55 %, interval includes 50 %)"
    elif below:
        text = ("passes the 55 % bar, but the interval excludes 50 %: raters did better than chance (or worse: "
                "check sensitivity and specificity)" if lo > 0.5 else
                "passes the 55 % bar; accuracy is below chance (raters systematically swapped the kinds)")
    else:
        text = "fails: raters told real from synthetic (accuracy at or above 55 %)"
    if hi >= BAR and below:
        text += f"; the interval reaches {hi:.1%}, above 55 %: more answers would make the verdict firm"
    return {"accuracy_below_55": below, "ci_includes_50": chance, "passes": below, "text": text}


def _fmt_p(p: dict) -> str:
    if p["accuracy"] is None:
        return "-"
    return f"{p['accuracy']:.1%} [{p['ci95'][0]:.1%}, {p['ci95'][1]:.1%}] ({p['correct']}/{p['n']})"


def _figure(study: Path, rows: list[dict], folder: Path, name: str) -> Path | None:
    from meddiff.report.html import labelled_row
    from meddiff.files import write_png

    if not rows:
        return None
    panels, labels = [], []
    for row in rows:
        image = Image.open(study / IMAGES / f"{row['id']}.png").convert("L")
        scale = max(1, 128 // max(image.size))
        panels.append(np.asarray(image.resize((image.width * scale, image.height * scale), Image.NEAREST)))
        labels.append(f"{row['fooled']}/{row['answers']} fooled")
    return write_png(folder / name, labelled_row(panels, labels))


def format_summary(result: dict) -> str:
    p = result["pooled"]
    lines = [f"raters {len(result['raters'])}, answers {result['answers_counted']} "
             f"({result['answers_logged']} logged)",
             f"accuracy     {_fmt_p(p)}   binomial p vs 50 % = {p['p_value_vs_50']:.4g}",
             f"sensitivity  {_fmt_p(p['sensitivity'])}   (synthetic called synthetic)",
             f"specificity  {_fmt_p(p['specificity'])}   (real called real)"]
    kappa = result["fleiss_kappa"]["kappa"]
    lines.append(f"Fleiss kappa {'-' if kappa is None else f'{kappa:.3f}'} ({result['fleiss_kappa']['note']})")
    lines.append(f"verdict: {result['verdict']['text']}")
    return "\n".join(lines)


def write_score(study: str | Path, out: str | Path | None = None, *, json_out: str | Path | None = None) -> dict:
    """Score ``study``, write the JSON (default STUDY/score.json) and the HTML report (default STUDY/report.html);
    returns the result with the paths written under "files"."""
    from meddiff.report.html import write_report

    study = Path(study)
    result = score_study(study)
    json_path = Path(json_out) if json_out else study / SCORE_FILE
    html_path = Path(out) if out else study / REPORT_FILE
    if html_path.suffix.lower() not in (".html", ".htm"):
        raise MeddiffError(f"--out {html_path}: the report is HTML; give a name ending in .html")
    images = result["images"]
    fooled_synth = sorted((r for r in images if r["kind"] == "synthetic" and r["fooled"]),
                          key=lambda r: (-r["fooled_rate"], -(r["fooled_confidence"] or 0)))[:SHOW]
    fooled_real = sorted((r for r in images if r["kind"] == "real" and r["fooled"]),
                         key=lambda r: (-r["fooled_rate"], -(r["fooled_confidence"] or 0)))[:SHOW]
    p = result["pooled"]
    rater_rows = [{"rater": name, "answered": r["answered"], "accuracy": _fmt_p(r),
                   "sensitivity": _fmt_p(r["sensitivity"]), "specificity": _fmt_p(r["specificity"]),
                   "p vs 50 %": r["p_value_vs_50"], "re-answered": r["re_answered"]}
                  for name, r in result["per_rater"].items()]
    rater_rows.append({"rater": "pooled", "answered": result["answers_counted"], "accuracy": _fmt_p(p),
                       "sensitivity": _fmt_p(p["sensitivity"]), "specificity": _fmt_p(p["specificity"]),
                       "p vs 50 %": p["p_value_vs_50"], "re-answered": len(result["re_answered"])})
    conf_rows = [{"confidence": c, "answers": v["n"], "accuracy": _fmt_p(v)}
                 for c, v in result["by_confidence"].items()]
    kappa = result["fleiss_kappa"]
    with tempfile.TemporaryDirectory() as tmp:
        sections = [
            {"title": "Verdict", "text": f"{result['verdict']['text']}. Pooled accuracy {_fmt_p(p)}, exact binomial "
                                         f"p = {p['p_value_vs_50']:.4g} against 50 %."},
            {"title": "Accuracy per rater and pooled", "table": rater_rows,
             "text": "Wilson 95 % intervals; sensitivity: synthetic images called synthetic; specificity: real "
                     "images called real. The last answer of a rater per image counts."},
            {"title": "Accuracy by confidence", "table": conf_rows, "text": "1 = guess, 5 = certain."},
            {"title": "Agreement between raters",
             "text": f"Fleiss' kappa {'-' if kappa['kappa'] is None else format(kappa['kappa'], '.3f')} "
                     f"({kappa['raters']} raters, {kappa['images']} images; {kappa['note']})."},
            {"title": "Synthetic images most often called real",
             "text": "" if fooled_synth else "none fooled any rater",
             "figure": _figure(study, fooled_synth, Path(tmp), "synthetic.png")},
            {"title": "Real images most often called synthetic",
             "text": "" if fooled_real else "none fooled any rater",
             "figure": _figure(study, fooled_real, Path(tmp), "real.png")},
        ]
        write_report(html_path, "Visual Turing test", sections)
    write_text(json_path, json.dumps(result, indent=2))
    result["files"] = {"json": str(json_path), "html": str(html_path)}
    return result
