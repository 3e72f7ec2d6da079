"""meddiff.training: loss cross-check, bit-for-bit resume, checkpoints, NaN stop, EMA, LR schedule, CLI."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch.utils.data import Dataset

from meddiff.diffusion import diffusion_loss, make_schedule
from meddiff.diffusion.losses import focus_training_times
from meddiff.errors import MeddiffError
from meddiff.training import (
    EMA,
    Trainer,
    TrainingDiverged,
    list_checkpoints,
    load_checkpoint,
    load_state,
    lr_factor,
)


class TinyDataset(Dataset):
    """n random images (C, *spatial) in [-1, 1] with labels i % 2 and, optionally, a conditioning image."""

    num_classes = 2

    def __init__(self, n: int = 12, shape=(1, 16, 16), cond: bool = False, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand((n, *shape), generator=g) * 2 - 1
        self.labels = torch.arange(n) % 2
        self.cond = cond
        self.image_shape = shape
        self.poisoned = False

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        image = self.images[i] * (float("nan") if self.poisoned else 1.0)
        item = {"image": image, "label": self.labels[i]}
        if self.cond:
            item["cond_image"] = -self.images[i]
        return item


def tiny_config(**run) -> dict:
    return {
        "model": {"channels": [8, 16], "attention_levels": [False, True], "num_classes": "auto", "class_dropout": 0.3},
        "schedule": {"warmup_steps": 2, "kind": "cosine"},
        "optimiser": {"lr": 1e-3},
        "run": {"name": "tiny", "steps": 6, "batch_size": 4, "grad_accum": 2, "log_every": 1, "checkpoint_every": 2,
                "keep_checkpoints": 2, "progress": False, "ema_decay": 0.9, **run},
    }


def test_loss_with_caller_drawn_t_and_noise_equals_generator_draws_bit_for_bit():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    model = lambda x, t: net(x) * (1 + t.view(-1, 1, 1, 1) / 1000)  # noqa: E731
    schedule = make_schedule("cosine")
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    for prediction, gamma in (("eps", None), ("v", 5.0), ("x0", 5.0), ("score", None)):
        reference = diffusion_loss(model, x0, schedule, prediction, min_snr_gamma=gamma,
                                   generator=torch.Generator().manual_seed(3))
        g = torch.Generator().manual_seed(3)
        t = schedule.sample_training_times(4, g)
        noise = torch.randn(x0.shape, generator=g)
        assert diffusion_loss(model, x0, schedule, prediction, min_snr_gamma=gamma, t=t, noise=noise) == reference


def test_time_focus_draws_the_stated_share_of_low_noise_times():
    """time_focus {below: 0.2, probability: 0.7}: P(t < 0.2 T) = 0.7 + 0.3 x 0.2 = 0.76, integers for discrete
    schedules, uniform inside the band; probability 0 leaves the uniform draws untouched."""
    schedule = make_schedule({"kind": "discrete", "num_train_steps": 1000})
    g = torch.Generator().manual_seed(0)
    uniform = schedule.sample_training_times(40000, g)
    t = focus_training_times(uniform, schedule, 0.2, 0.7, g)
    assert (t < 200).float().mean().item() == pytest.approx(0.76, abs=0.01)
    assert torch.equal(t, t.floor()) and t.min() >= 0 and t.max() <= 999
    band = t[t < 200]
    assert (band < 100).float().mean().item() == pytest.approx(0.5, abs=0.02)
    assert torch.equal(focus_training_times(uniform, schedule, 0.2, 0.0, g), uniform)
    continuous = make_schedule({"kind": "vp"})
    t = focus_training_times(continuous.sample_training_times(1000, g), continuous, 0.1, 1.0, g)
    assert t.max() <= continuous.t_min + 0.1 * (continuous.t_max - continuous.t_min) and not torch.equal(t, t.floor())


def test_resume_repeats_the_loss_sequence_bit_for_bit(tmp_path):
    full = Trainer(tiny_config(), TinyDataset(), run_dir=tmp_path / "full")
    uninterrupted = full.fit()
    assert [s for s, _ in uninterrupted] == [1, 2, 3, 4, 5, 6]

    def kill_after_5(step, loss):  # step 4 is checkpointed, step 5 is lost with the "killed" process
        if step == 5:
            raise KeyboardInterrupt

    first = Trainer(tiny_config(), TinyDataset(), run_dir=tmp_path / "killed")
    with pytest.raises(KeyboardInterrupt):
        first.fit(on_step=kill_after_5)
    assert first.history == uninterrupted[:5]
    with pytest.raises(MeddiffError, match="pass --resume"):
        Trainer(tiny_config(), TinyDataset(), run_dir=tmp_path / "killed").fit()
    resumed = Trainer(tiny_config(), TinyDataset(), run_dir=tmp_path / "killed")
    after = resumed.fit(resume=True)
    assert after == uninterrupted[4:]  # steps 5 and 6, exact float equality
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(tmp_path / "full" / "checkpoints" / "step_00000006" / name)
        b = load_file(tmp_path / "killed" / "checkpoints" / "step_00000006" / name)
        assert all(torch.equal(a[k], b[k]) for k in a)
    # the log was cut back to the checkpoint and continued: one line per step, same losses
    lines = [json.loads(line) for line in (tmp_path / "killed" / "log.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in lines] == uninterrupted
    # a changed config is refused on resume
    changed = tiny_config()
    changed["optimiser"]["lr"] = 1.0
    with pytest.raises(MeddiffError, match="optimiser.lr: 0.001 -> 1.0"):
        Trainer(changed, TinyDataset(), run_dir=tmp_path / "killed").fit(resume=True)


def test_resume_of_a_run_saved_before_a_new_off_by_default_option(tmp_path):
    """A run whose saved config lacks an option a newer meddiff added with an off default (None / False) resumes;
    the same option switched on is still a refused change."""
    import yaml

    Trainer(tiny_config(), TinyDataset(), run_dir=tmp_path / "run").fit()
    saved_path = tmp_path / "run" / "config.yaml"
    saved = yaml.safe_load(saved_path.read_text())
    saved["model"].pop("guidance_input", None)  # as written by an older meddiff
    saved_path.write_text(yaml.safe_dump(saved))
    longer = tiny_config()
    longer["run"]["steps"] = 7
    longer["model"]["guidance_input"] = False
    assert [s for s, _ in Trainer(longer, TinyDataset(), run_dir=tmp_path / "run").fit(resume=True)] == [7]
    saved_path.write_text(yaml.safe_dump(saved))
    switched_on = tiny_config()
    switched_on["model"]["guidance_input"] = True
    with pytest.raises(MeddiffError, match="model.guidance_input: None -> True"):
        Trainer(switched_on, TinyDataset(), run_dir=tmp_path / "run").fit(resume=True)


def test_checkpoint_layout_meta_and_load(tmp_path):
    trainer = Trainer(tiny_config(sample_every=3, num_samples=4, sample_steps=3), TinyDataset(),
                      run_dir=tmp_path / "run")
    trainer.fit()
    checkpoints = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [c.name for c in checkpoints] == ["step_00000004", "step_00000006"]  # keep_checkpoints=2
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".")]
    state = torch.load(checkpoints[-1] / "state.pt", weights_only=True)
    assert state["step"] == 6 and set(state) >= {"optimizer", "scheduler", "generator", "torch_rng"}
    assert load_state(tmp_path / "run")["step"] == 6
    meta = json.loads((checkpoints[-1] / "meta.json").read_text())
    for key in ("task", "network", "image_size", "channels", "normalisation", "schedule", "prediction", "versions"):
        assert key in meta
    assert meta["image_size"] == [16, 16] and meta["network"]["num_classes"] == 2
    assert meta["versions"]["torch"] == torch.__version__ and "git_commit" in meta["versions"]
    model, meta2 = load_checkpoint(tmp_path / "run")  # the run directory resolves to the latest checkpoint
    ema = load_file(checkpoints[-1] / "ema.safetensors")
    assert all(torch.equal(model.state_dict()[k], ema[k]) for k in ema)
    assert not all(torch.equal(ema[k], trainer.net.state_dict()[k].cpu()) for k in ema)  # EMA differs from raw
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["model"]["in_channels"] == 1 and config["run"]["batch_size"] == 4  # resolved
    assert sorted(p.name for p in (tmp_path / "run" / "samples").iterdir()) == ["step_00000003.png",
                                                                              "step_00000006.png"]
    header = (tmp_path / "run" / "log.csv").read_text().splitlines()[0]
    assert header == "step,loss,lr,grad_norm,images_per_s,elapsed_s"


def test_tensorboard_scalars_equal_the_jsonl_log(tmp_path):
    """run.tensorboard=true writes the same per-step scalars as log.jsonl (read back with TensorBoard's reader)."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    Trainer(tiny_config(tensorboard=True), TinyDataset(), run_dir=tmp_path / "run").fit()
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert "train/loss" in events.Tags()["scalars"] and "train/lr" in events.Tags()["scalars"]
    board = {(e.step, round(e.value, 5)) for e in events.Scalars("train/loss")}
    assert board == {(r["step"], round(r["loss"], 5)) for r in logged} and len(board) == 6


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    data = TinyDataset()
    trainer = Trainer(tiny_config(), data, run_dir=tmp_path / "run")

    def poison(step, loss):
        if step == 2:
            data.poisoned = True

    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 3.*step_00000002"):
        trainer.fit(on_step=poison)
    assert [c.name for c in list_checkpoints(tmp_path / "run" / "checkpoints")] == ["step_00000002"]
    saved = load_file(tmp_path / "run" / "checkpoints" / "step_00000002" / "model.safetensors")
    assert all(torch.equal(saved[k], v.cpu()) for k, v in trainer.net.state_dict().items())  # no NaN update


@pytest.mark.parametrize("kind", ["3d_unconditional", "2d_image_conditional", "classifier"])
def test_other_model_kinds_train(tmp_path, kind):
    config = tiny_config(steps=2, grad_accum=1, checkpoint_every=2)
    if kind == "3d_unconditional":
        config["model"] = {"channels": [8, 16], "attention_levels": [False, True]}
        data = TinyDataset(shape=(1, 8, 8, 8))
    elif kind == "2d_image_conditional":
        config["model"] = {"channels": [8, 16], "attention_levels": [False, False]}
        config["diffusion"] = {"prediction": "v", "schedule": {"kind": "vp"},
                               "time_focus": {"below": 0.1, "probability": 0.5}}
        data = TinyDataset(cond=True)
    else:
        config["task"] = "classifier"
        config["model"] = {"channels": [8, 16], "attention_levels": [False, True]}
        data = TinyDataset()
    trainer = Trainer(config, data, run_dir=tmp_path / kind)
    losses = [loss for _, loss in trainer.fit()]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    model, meta = load_checkpoint(tmp_path / kind)
    if kind == "2d_image_conditional":
        assert meta["network"]["cond_channels"] == 1 and meta["network"]["time_scale"] == 1000.0
        assert trainer.sample(2, seed=0).shape == (2, 1, 16, 16)
    if kind == "classifier":
        assert meta["task"] == "classifier" and model(torch.zeros(1, 1, 16, 16), torch.zeros(1)).shape == (1, 2)
    if kind == "3d_unconditional":
        assert meta["image_size"] == [8, 8, 8]


def test_ema_warmup_matches_the_formula():
    net = torch.nn.Linear(2, 1)
    ema = EMA(net, decay=0.99, warmup=True)
    start = ema.module.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net, 1)
    d = 2 / 11  # min(0.99, (1 + 1) / (10 + 1))
    torch.testing.assert_close(ema.module.weight, d * start + (1 - d) * net.weight)
    assert ema.decay_at(10**6) == 0.99 and EMA(net, 0.5, warmup=False).decay_at(1) == 0.5


def test_ema_update_matches_the_per_parameter_formula_and_copies_buffers():
    """The foreach update over cached lists: each parameter d * ema + (1 - d) * w, buffers copied, and weights loaded
    into the model afterwards (load_state_dict keeps the parameter objects) are what the next update blends in."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    ema = EMA(net, decay=0.9, warmup=False)
    expected = {k: v.clone() for k, v in ema.module.state_dict().items()}
    for n in (1, 2):
        net.train()(torch.randn(8, 3))  # moves the BatchNorm running statistics (buffers)
        state = {k: v + (torch.randn_like(v) if v.is_floating_point() else 0) for k, v in net.state_dict().items()}
        net.load_state_dict(state)
        ema.update(net, n)
        buffers = {k for k, _ in net.named_buffers()}
        for k, v in net.state_dict().items():
            expected[k] = v.clone() if k in buffers else 0.9 * expected[k] + 0.1 * v
        for k, v in ema.module.state_dict().items():
            torch.testing.assert_close(v, expected[k], rtol=1e-6, atol=1e-6)
            if k in buffers:
                assert torch.equal(v, net.state_dict()[k])


def test_foreach_gradient_clip_equals_the_per_parameter_clip_bit_for_bit(tmp_path):
    """The trainer's one-pass foreach norm and clip give the same losses, gradient norms and weights as
    clip_grad_norm_'s per-parameter CPU path (foreach off), with the clip active (grad_clip 0.05)."""
    runs = {}
    for foreach in (True, False):
        config = tiny_config(steps=3, checkpoint_every=3)
        config["optimiser"]["grad_clip"] = 0.05
        trainer = Trainer(config, TinyDataset(), run_dir=tmp_path / str(foreach))
        trainer._foreach = foreach
        norms = []
        step = trainer._train_step
        trainer._train_step = lambda micro: norms.append(step(micro)) or norms[-1]
        losses = trainer.fit()
        norms = [float(norm) for _, norm, _ in norms]  # (loss, grad norm as a 0-dim tensor, lr) per step
        runs[foreach] = (losses, norms, trainer.net.state_dict(), trainer.ema.module.state_dict())
    (losses, norms, weights, ema), (losses_ref, norms_ref, weights_ref, ema_ref) = runs[True], runs[False]
    assert losses == losses_ref and norms == norms_ref and max(norms) > 0.05  # the clip acted
    assert all(torch.equal(weights[k], weights_ref[k]) and torch.equal(ema[k], ema_ref[k]) for k in weights)


def test_lr_schedule_warmup_then_decay():
    assert [lr_factor(s, 4, 10, "constant", 0) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_factor(10, 4, 10, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(7, 4, 10, "linear", 0.0) == pytest.approx(0.5)


def test_config_errors(tmp_path):
    with pytest.raises(MeddiffError, match=r"unknown key\(s\) \['stepz'\] in run"):
        Trainer({"run": {"name": "x", "stepz": 3}}, TinyDataset(), run_dir=tmp_path)
    with pytest.raises(MeddiffError, match="run.batch_size=5 must be divisible by run.grad_accum x processes = 2 x 1"):
        Trainer(tiny_config(batch_size=5), TinyDataset(), run_dir=tmp_path)
    with pytest.raises(MeddiffError, match="run.precision='bf16' needs CUDA"):
        Trainer(tiny_config(precision="bf16", device="cpu"), TinyDataset(), run_dir=tmp_path)
    with pytest.raises(MeddiffError, match="model.in_channels=3 does not match the data"):
        config = tiny_config()
        config["model"]["in_channels"] = 3
        Trainer(config, TinyDataset(), run_dir=tmp_path)
    with pytest.raises(MeddiffError, match=r"diffusion.time_focus=.*must be null or \{below: f, probability: p\}"):
        Trainer({**tiny_config(), "diffusion": {"time_focus": {"below": 1.5, "probability": 0.5}}}, TinyDataset(),
                run_dir=tmp_path)
    with pytest.raises(MeddiffError, match=r"diffusion.time_focus=.*must be null"):
        Trainer({**tiny_config(), "diffusion": {"time_focus": {"below": "low", "probability": 0.5}}}, TinyDataset(),
                run_dir=tmp_path)
    with pytest.raises(MeddiffError, match="pad or crop to a multiple of 2"):
        Trainer(tiny_config(), TinyDataset(shape=(1, 15, 16)), run_dir=tmp_path)
    with pytest.raises(MeddiffError, match=r"optimiser.lr='fast' must be a number \(e.g. 4.0e-4\)"):
        Trainer({**tiny_config(), "optimiser": {"lr": "fast"}}, TinyDataset(), run_dir=tmp_path)
    # PyYAML reads 4e-4 (no dot) as a string: it is still the number the user meant
    assert Trainer({**tiny_config(), "optimiser": {"lr": "4e-4"}}, TinyDataset(),
                   run_dir=tmp_path).optimizer.param_groups[0]["initial_lr"] == 4e-4


def test_cli_train_runs_and_reports_errors(tmp_path, monkeypatch, capsys):
    import meddiff.data
    from meddiff.cli import main as cli_main
    from meddiff.cli import train as cli_train

    assert "meddiff.cli.train" in cli_main.COMMAND_MODULES
    config = tiny_config(steps=2, checkpoint_every=2, out_dir=str(tmp_path / "runs"))
    config["data"] = {"kind": "tiny"}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config))
    seen = {}

    def build_dataset(data_config, split="train"):
        seen["args"] = (data_config, split)
        return TinyDataset()

    monkeypatch.setattr(meddiff.data, "build_dataset", build_dataset, raising=False)
    parser = argparse.ArgumentParser()
    cli_train.register(parser.add_subparsers())
    args = parser.parse_args(["train", "--config", str(path), "--name", "cli"])
    assert args.func(args) == 0
    assert seen["args"] == ({"kind": "tiny"}, "train")
    assert (tmp_path / "runs" / "cli" / "checkpoints" / "step_00000002" / "meta.json").is_file()
    assert "run directory" in capsys.readouterr().out
    args = parser.parse_args(["train", "--config", str(tmp_path / "missing.yaml")])
    with pytest.raises(MeddiffError, match="missing.yaml not found"):
        args.func(args)


@pytest.mark.parametrize("variant", ["fp16", "bf16", "channels_last", "fused"])
def test_the_cuda_defaults_run_on_cpu_when_forced(tmp_path, monkeypatch, variant):
    """What `auto` turns on only on CUDA (autocast with a GradScaler for fp16, bf16 autocast, channels_last, fused
    AdamW), forced on this CPU with the tiny model: the same first loss as fp32 (same draws), finite training, and for
    fp16 a resume that repeats the run bit for bit, GradScaler state included. CUDA kernels themselves need a GPU."""
    reference = Trainer(tiny_config(), TinyDataset(), run_dir=tmp_path / "fp32").fit()
    run, optimiser = {}, {}
    if variant in ("fp16", "bf16"):
        dtype = torch.float16 if variant == "fp16" else torch.bfloat16
        monkeypatch.setattr(Trainer, "_amp_dtype", staticmethod(lambda precision, cuda: dtype))
    elif variant == "channels_last":
        run["channels_last"] = True
    else:
        optimiser["fused"] = True
    config = tiny_config(**run)
    config["optimiser"].update(optimiser)
    trainer = Trainer(config, TinyDataset(), run_dir=tmp_path / variant)
    assert (trainer.scaler is not None) == (variant == "fp16")
    losses = trainer.fit()
    assert [s for s, _ in losses] == [1, 2, 3, 4, 5, 6] and all(torch.isfinite(torch.tensor([v for _, v in losses])))
    tolerance = {"fp16": 2e-3, "bf16": 2e-2}.get(variant, 1e-5)  # relative; bf16 keeps 8 mantissa bits
    assert losses[0][1] == pytest.approx(reference[0][1], rel=tolerance)
    if variant in ("channels_last", "fused"):  # fp32 throughout: the whole run agrees with the default one
        assert [v for _, v in losses] == pytest.approx([v for _, v in reference], rel=1e-4)
    if variant == "fp16":
        state = torch.load(list_checkpoints(tmp_path / variant / "checkpoints")[-1] / "state.pt", weights_only=True)
        assert state["scaler"]["scale"] == trainer.scaler.get_scale()

        def kill_after_5(step, loss):
            if step == 5:
                raise KeyboardInterrupt

        killed = Trainer(config, TinyDataset(), run_dir=tmp_path / "killed")
        with pytest.raises(KeyboardInterrupt):
            killed.fit(on_step=kill_after_5)
        assert Trainer(config, TinyDataset(), run_dir=tmp_path / "killed").fit(resume=True) == losses[4:]


def test_resume_with_other_steps_follows_the_new_learning_rate_schedule(tmp_path):
    """run.steps may change on resume (extend or shorten a run): the cosine schedule then ends at the new total
    (LambdaLR's saved state used to bring back the old total, so a shortened run never annealed)."""
    from meddiff.training.trainer import lr_factor

    config = tiny_config()
    config["schedule"] = {"kind": "cosine", "warmup_steps": 1, "min_lr_ratio": 0.1}
    first = Trainer(config, TinyDataset(), run_dir=tmp_path / "run")

    def stop_after_4(step, loss):  # step 4 is checkpointed
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        first.fit(on_step=stop_after_4)
    longer = tiny_config(steps=12)
    longer["schedule"] = dict(config["schedule"])
    resumed = Trainer(longer, TinyDataset(), run_dir=tmp_path / "run")
    seen = []
    resumed.fit(resume=True, on_step=lambda step, loss: seen.append((step, resumed.optimizer.param_groups[0]["lr"])))
    base = config["optimiser"]["lr"]
    for step, lr in seen:  # the rate set after step k (0-based index k: the next step) under the 12-step schedule
        assert lr == pytest.approx(base * lr_factor(step, 1, 12, "cosine", 0.1)), (step, lr)
    assert seen[-1][0] == 12


def test_init_from_starts_network_and_ema_from_the_checkpoint_ema_and_refuses_another_network(tmp_path):
    """run.init_from: step 0 holds the source checkpoint's EMA weights (network and EMA), the optimiser and the
    schedule start fresh; a checkpoint of another layout is refused naming the differing keys."""
    from meddiff.training.checkpoint import load_checkpoint

    Trainer(tiny_config(steps=2), TinyDataset(), run_dir=tmp_path / "first").fit()
    source, _ = load_checkpoint(tmp_path / "first")
    warm = Trainer(tiny_config(steps=2, init_from=str(tmp_path / "first")), TinyDataset(), run_dir=tmp_path / "warm")
    cold = Trainer(tiny_config(steps=2), TinyDataset(), run_dir=tmp_path / "cold")
    for name, tensor in source.state_dict().items():
        assert torch.equal(warm.net.state_dict()[name], tensor), name
        assert torch.equal(warm.ema.module.state_dict()[name], tensor), name
    assert any(not torch.equal(cold.net.state_dict()[k], v) for k, v in source.state_dict().items())
    assert warm.step == 0 and not warm.optimizer.state
    other = tiny_config(steps=2, init_from=str(tmp_path / "first"))
    other["model"]["channels"] = [8, 8]
    with pytest.raises(MeddiffError, match="init_from.*channels"):
        Trainer(other, TinyDataset(), run_dir=tmp_path / "other")
    with pytest.raises(MeddiffError, match="no checkpoint found"):
        Trainer(tiny_config(init_from=str(tmp_path / "missing")), TinyDataset(), run_dir=tmp_path / "m")
