"""meddiff report: sections and embedded images, one grid per class, guidance forwarding, the memorisation check,
3D views, shipped checkpoints, errors; and the PIL line plot against its analytic pixel positions."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from meddiff.cli.main import main
from meddiff.errors import MeddiffError
from meddiff.report.plots import MARGIN, Series, line_plot, log_ticks, nice_ticks, smooth
from meddiff.tasks.run_report import (
    LOSS_PLOT_SIZE,
    _enlarge,
    _neighbour_section,
    wall_time,
    write_run_report,
)
from meddiff.data.io import write_json
from meddiff.tasks.evaluate import evaluate_folders
from meddiff.tasks.synthesis import generate, sample_grid
from meddiff.training import Trainer, resolve_checkpoint
from meddiff.training import shipped as shipped_module

DATA = {"kind": "medmnist", "path": "asset:pneumoniamnist/pneumoniamnist_small.npz", "size": 16, "max_items": 48}


def train_tiny(run_dir, num_classes="auto", data=DATA, dataset=None):
    config = {
        "model": {"channels": [8, 16], "attention_levels": [False, True], "num_classes": num_classes,
                  "class_dropout": 0.3 if num_classes else 0.0},
        "data": data,
        "schedule": {"warmup_steps": 1},
        "optimiser": {"lr": 1e-3},
        "run": {"name": "tiny", "steps": 3, "batch_size": 4, "log_every": 1, "checkpoint_every": 3,
                "progress": False},
    }
    trainer = Trainer(config, dataset, run_dir=run_dir)
    trainer.fit()
    return run_dir


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("runs") / "cond")


@pytest.fixture(scope="module")
def unconditional_run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("runs") / "uncond", num_classes=None)


def images_of(page: str) -> list[Image.Image]:
    found = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    images = [Image.open(io.BytesIO(base64.b64decode(data))) for data in found]
    for image in images:
        image.load()  # raises on a corrupt PNG
    return images


def titles_of(page: str) -> list[str]:
    return re.findall(r"<h2>(.*?)</h2>", page)


def test_conditional_run_report_has_every_section_and_one_grid_per_class(conditional_run, tmp_path):
    out = write_run_report(conditional_run, tmp_path / "r.html", num_samples=4, steps=3)
    page = out.read_text()
    assert titles_of(page) == ["Run summary", "Config", "Loss curve", "Samples: class 0", "Samples: class 1",
                               "Real images and their nearest generated neighbours", "Metrics"]
    assert "<details><summary>config.yaml" in page and "class_dropout: 0.3" in page
    assert "parameters" in page and "git commit" in page and "3 of 3" in page
    images = images_of(page)
    assert len(images) == 4  # loss, 2 sample grids, neighbours
    assert images[0].size == LOSS_PLOT_SIZE
    assert "near-copies flagged" in page and "held-out -&gt; nearest training image" in page  # val split as reference
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]  # no temporary files left


def test_guidance_scale_reaches_the_sampler(conditional_run, tmp_path):
    """At scale 0 every class gives the unconditional model's samples: the class-0 grid (seed 0) equals class 1's."""
    page = write_run_report(conditional_run, tmp_path / "r.html", num_samples=2, sampler="ddim", steps=2,
                            guidance_scale=0.0).read_text()
    grid = np.asarray(images_of(page)[1])
    other, _ = generate(conditional_run, 2, sampler="ddim", steps=2, class_label=1, guidance_scale=0.0, seed=0)
    np.testing.assert_array_equal(grid, _enlarge(sample_grid(other)))


def test_unconditional_run_cli_default_output_and_eval_json(unconditional_run, tmp_path, capsys):
    assert main(["report", str(unconditional_run), "--samples", "2", "--steps", "2"]) == 0
    out = unconditional_run / "report.html"
    assert f"wrote {out}" in capsys.readouterr().out
    page = out.read_text()
    assert [t for t in titles_of(page) if t.startswith("Samples")] == ["Samples"]
    assert len(images_of(page)) == 3
    run_copy = tmp_path / "run"
    shutil.copytree(unconditional_run, run_copy)
    fake = tmp_path / "fake.npy"
    np.save(fake, np.random.default_rng(0).uniform(-1, 1, (8, 1, 28, 28)).astype(np.float32))
    result = evaluate_folders(DATA["path"], fake, features="random-cnn", train=DATA["path"], k=3, kid_subsets=2,
                              kid_subset_size=8, utility=False)
    write_json(result, run_copy / "eval.json")
    page = write_run_report(run_copy, num_samples=2, steps=2).read_text()
    assert "from eval.json" in page and f"<td>FID</td><td>{result['fid']:.4g}</td>" in page
    assert "<td>near-copies</td><td>0/8 (0.0%)</td>" in page
    (run_copy / "eval.json").write_text(json.dumps({"fid": 1.0}))
    with pytest.raises(MeddiffError, match="eval.json is not a `meddiff evaluate` result"):
        write_run_report(run_copy, num_samples=2, steps=2)


def test_shipped_checkpoint_directory(unconditional_run, tmp_path, monkeypatch):
    """A shipped folder (fp16 EMA weights, meta.json, config.yaml, log.csv; no state.pt), by path or by name."""
    checkpoint = resolve_checkpoint(unconditional_run)
    shipped = tmp_path / "tiny_shipped"
    shipped.mkdir()
    save_file({k: v.half() for k, v in load_file(checkpoint / "ema.safetensors").items()}, shipped / "ema.safetensors")
    for source in (checkpoint / "meta.json", unconditional_run / "config.yaml", unconditional_run / "log.csv"):
        shutil.copy(source, shipped / source.name)
    (shipped / "command.txt").write_text("python scripts/train_shipped.py --name tiny_shipped\n")
    monkeypatch.chdir(tmp_path)
    out = write_run_report(shipped, num_samples=2, sampler="ddim", steps=2)
    assert out == tmp_path / "tiny_shipped_report.html"
    page = out.read_text()
    assert "scripts/train_shipped.py" in page and len(images_of(page)) == 3
    monkeypatch.setattr(shipped_module, "SHIPPED_DIR", tmp_path)  # and by its shipped name, from elsewhere
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["report", "tiny_shipped", "--samples", "2", "--sampler", "ddim", "--steps", "2"]) == 0
    assert len(images_of((tmp_path / "elsewhere" / "tiny_shipped_report.html").read_text())) == 3


def test_errors_name_the_path_and_what_is_expected(unconditional_run, tmp_path, capsys):
    with pytest.raises(MeddiffError, match="run directory .*nowhere not found"):
        write_run_report(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MeddiffError, match="empty has no config.yaml"):
        write_run_report(tmp_path / "empty")
    (tmp_path / "nockpt").mkdir()
    shutil.copy(unconditional_run / "config.yaml", tmp_path / "nockpt" / "config.yaml")
    with pytest.raises(MeddiffError, match="nockpt has no checkpoint: expected checkpoints/step_"):
        write_run_report(tmp_path / "nockpt")
    with pytest.raises(MeddiffError, match="does not exist"):
        write_run_report(unconditional_run, tmp_path / "missing" / "r.html")
    assert main(["report", str(tmp_path / "empty")]) == 1
    assert capsys.readouterr().err.startswith("error: ")


class ImageList(Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i]}


def test_copied_training_images_are_flagged_and_shown_at_distance_zero(tmp_path):
    g = torch.Generator().manual_seed(0)
    real, held = (torch.rand(n, 1, 8, 8, generator=g) * 2 - 1 for n in (20, 10))
    samples = [real[[3, 7]].clone(), torch.rand(2, 1, 8, 8, generator=g) * 2 - 1]
    section, rows = _neighbour_section(samples, ImageList(real), ImageList(held), "", tmp_path, num_pairs=3,
                                       max_real=100)
    values = {r["metric"]: r["value"] for r in rows}
    assert values["exact copies"] == 2 and values["near-copies flagged (fraction of samples)"] >= 0.5
    d_held = torch.cdist(held.flatten(1).double(), real.flatten(1).double()).min(1).values / 8  # RMS over 64 values
    assert values["held-out -> nearest training image, median d"] == pytest.approx(float(d_held.median()))
    pairs = Image.open(section["figure"])
    assert pairs.height == 16 + 4 + 2 * 64 + 4  # caption, pad, real above sample (enlarged to 64 px), gap
    assert re.findall(r"d=([0-9.]+)", section["text"]) == [f"{float(d_held.median()):.3f}"]


def test_without_held_out_images_the_reference_is_the_training_set_itself(tmp_path):
    real = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    _, rows = _neighbour_section([real[[3]].clone()], ImageList(real), None, "", tmp_path, num_pairs=1, max_real=100)
    values = {r["metric"]: r["value"] for r in rows}
    assert values["sample -> nearest training image, min d"] == 0
    d_train = torch.cdist(real.flatten(1).double(), real.flatten(1).double()).fill_diagonal_(math.inf)
    expected = d_train.min(1).values.median() / 8
    assert values["training -> nearest other training image, median d"] == pytest.approx(float(expected))


def test_3d_run_shows_the_central_slices_and_skips_neighbours_without_data(tmp_path):
    run = train_tiny(tmp_path / "vol", num_classes=None, data=None, dataset=ImageList(torch.rand(6, 1, 8, 8, 8)))
    page = write_run_report(run, num_samples=2, sampler="ddim", steps=2, seed=4).read_text()
    assert "skipped: the run has no data section" in page
    loss, samples = images_of(page)
    volumes, _ = generate(run, 2, sampler="ddim", steps=2, seed=4)
    np.testing.assert_array_equal(np.asarray(samples), _enlarge(sample_grid(volumes)))  # sample_grid: 3 central slices


# --- plots ----------------------------------------------------------------------------------------------------


def test_ticks():
    assert nice_ticks(0, 60) == [0, 10, 20, 30, 40, 50, 60]
    assert nice_ticks(0.13, 0.61, 5) == [0.2, 0.3, 0.4, 0.5, 0.6]
    assert log_ticks(0.01, 10) == [0.01, 0.1, 1.0, 10.0]
    assert log_ticks(0.15, 3) == pytest.approx([0.2, 0.5, 1, 2])
    assert log_ticks(1e-6, 1e6) == [10.0**d for d in range(-6, 7, 2)]


def test_smooth_is_a_centred_average_exact_on_straight_lines():
    line = np.arange(20) * 0.5 + 3
    np.testing.assert_allclose(smooth(line, 7), line)  # no lag, also at the ends
    np.testing.assert_allclose(smooth([0, 3, 0, 3, 0], 3), [0, 1, 2, 1, 0])
    np.testing.assert_array_equal(smooth([1.0, 5.0, 3.0], 1), [1.0, 5.0, 3.0])


def test_line_plot_puts_points_where_the_axes_say():
    """y = 1 on a log axis over [1/1.5, 1.5] lies half-way up; the line spans the plot area."""
    image = line_plot([Series([0, 10], [1.0, 1.0], color=(255, 0, 0))], size=(300, 200), log_y=True)
    assert image.size == (300, 200)
    top, bottom = MARGIN["top"], 200 - MARGIN["bottom"]
    middle = (top + bottom) / 2
    red = np.argwhere((np.asarray(image) == [255, 0, 0]).all(-1))
    assert abs(red[:, 0].mean() - middle) < 1.5
    assert red[:, 1].min() <= MARGIN["left"] + 1 and red[:, 1].max() >= 300 - MARGIN["right"] - 1
    with pytest.raises(ValueError, match="no finite points"):
        line_plot([Series([1.0], [-1.0])], log_y=True)


def test_wall_time_adds_the_segments_of_a_resumed_run():
    assert wall_time(np.array([5.0, 10.0, 3.0, 8.0, np.nan])) == 18.0
