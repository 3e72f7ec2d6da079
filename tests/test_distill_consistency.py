"""Consistency distillation (Song et al. 2023; meddiff.diffusion.distill, meddiff.training.distill method
"consistency"): the boundary parametrisation, the target against a hand-made teacher DDIM step, a short training run
with the analytic Gaussian teacher (the one-step student moves to the teacher's N-step ODE map), multistep sampling
(Alg. 1) against a hand computation, and `meddiff distill --method consistency` with exact resume and `sample`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from meddiff.cli.main import main
from meddiff.diffusion import CLEAN_TIME, ClipDenoised, ModelDenoiser, TimeGrid, make_schedule
from meddiff.diffusion.analytic import anisotropic_gaussian
from meddiff.diffusion.distill import (ConsistencyFunction, consistency_coefficients, consistency_loss,
                                       consistency_target, sample_consistency)
from meddiff.diffusion.samplers import sample_ddim
from meddiff.errors import MeddiffError
from meddiff.nets import CLASS_LABELS
from meddiff.tasks import synthesis
from meddiff.training import load_checkpoint
from meddiff.training.distill import ConsistencyTrainer, distill, distill_grid, resolve_distill_config

from test_distill import TinyImages, train_teacher  # noqa: E402  (the tiny class-conditional teacher)

SCHEDULE = make_schedule({"kind": "discrete", "beta_schedule": "linear", "num_train_steps": 1000})

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_boundary_parametrisation_and_target():
    """c_skip = 1, c_out = 0 at CLEAN_TIME (f(x, clean) = x whatever the network), c_out ~ 1 and c_skip ~ 0 at every
    time of the discrete schedule (f starts as the teacher's denoiser); the target of the last pair (t_next = CLEAN)
    is the teacher's clamped x0 estimate, and of other pairs f_target at one hand-made DDIM step."""
    alpha, sigma = SCHEDULE.alpha_sigma(torch.tensor([CLEAN_TIME, 0.0, 30.0, 999.0]))
    c_skip, c_out = consistency_coefficients(alpha, sigma)
    assert c_skip[0] == 1 and c_out[0] == 0
    assert (c_skip[1:] < 0.05).all() and (c_out[1:] > 0.98).all() and (c_skip[2:] < 1e-3).all()

    def network(x, t):  # an arbitrary x0 denoiser, different per time
        return torch.tanh(1.3 * x - 0.2) * (1 + t.reshape(-1, 1) / 500)

    f = ConsistencyFunction(network, SCHEDULE)
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(0)) * 2
    torch.testing.assert_close(f(x, torch.full((3,), CLEAN_TIME)), x)
    t = torch.tensor([999.0, 500.0, 30.0])
    a, s = (v.float().reshape(-1, 1) for v in SCHEDULE.alpha_sigma(t))
    cs, co = (v.float().reshape(-1, 1) for v in consistency_coefficients(a.double(), s.double()))
    torch.testing.assert_close(f(x, t), cs * x / a + co * network(x, t))

    teacher = lambda z, time: 3 * torch.sin(z)  # noqa: E731  (out of [-1, 1]: the clamp matters)
    clean = torch.full((3,), CLEAN_TIME)
    torch.testing.assert_close(consistency_target(teacher, f, x, t, clean, SCHEDULE, clip=(-1.0, 1.0)),
                               teacher(x, t).clamp(-1, 1))
    t_next = torch.tensor([749.0, 250.0, 0.0])
    an, sn = (v.float().reshape(-1, 1) for v in SCHEDULE.alpha_sigma(t_next))
    x0 = teacher(x, t)
    x_hat = an * x0 + sn * (x - a * x0) / s  # DDIM, eta = 0
    torch.testing.assert_close(consistency_target(teacher, f, x, t, t_next, SCHEDULE), f(x_hat, t_next))


def test_multistep_sampling_is_algorithm_1():
    """sample_consistency: x0 = f(x_T, T); x = alpha x0 + sigma z; x0 = f(x, t): checked step by step with the same
    generator draws."""
    grid = distill_grid(SCHEDULE, 3)
    calls = []

    def f(x, t):
        calls.append(float(t[0]))
        return 0.5 * torch.tanh(x) + t.reshape(-1, 1) / 2000

    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    got = sample_consistency(f, x, grid, generator=torch.Generator().manual_seed(2))
    assert calls == [float(v) for v in grid.times[:-1]]
    g = torch.Generator().manual_seed(2)
    x0 = f(x, torch.full((4,), float(grid.times[0])))
    for i in (1, 2):
        z = torch.randn(x.shape, generator=g)
        x0 = f(float(grid.alphas[i]) * x0 + float(grid.sigmas[i]) * z, torch.full((4,), float(grid.times[i])))
    torch.testing.assert_close(got, x0)


def test_analytic_teacher_short_consistency_distillation():
    """Gaussian data, exact teacher denoiser, N = 4 grid times. The student's x0 estimate is one affine map per grid
    time, started from the teacher's denoiser (the teacher's weights). 200 Adam steps (batch 64) of the CD loss with an EMA target
    (mu = 0.9) make one-step consistency sampling land close to the teacher's 4-step DDIM (probability-flow ODE)
    samples from the same noise: the fixed point of CD on this grid. The undistilled one-step sampler (f = the
    teacher's denoiser) is far off."""
    dim, n_steps = 4, 4
    data = anisotropic_gaussian(dim=dim, eig_min=0.05, eig_max=1.0, seed=0)
    teacher = data.denoiser(SCHEDULE)
    grid = distill_grid(SCHEDULE, n_steps)
    times = grid.times[:-1]

    def affine_at(time_value):
        zero = teacher(torch.zeros(1, dim, dtype=torch.float64), torch.full((1,), time_value))
        eye = teacher(torch.eye(dim, dtype=torch.float64), torch.full((dim,), time_value))
        return (eye - zero).T.float(), zero[0].float()

    maps = [affine_at(float(t)) for t in times]
    weight = torch.stack([w for w, _ in maps]).requires_grad_(True)  # (N, D, D)
    bias = torch.stack([b for _, b in maps]).requires_grad_(True)  # (N, D)

    def student_x0(params):
        w, b = params

        def x0(z, t):
            index = torch.searchsorted(-times.float(), -t.float()).clamp(max=n_steps - 1)  # grid index per sample
            return torch.einsum("nij,nj->ni", w[index], z.float()) + b[index]
        return x0

    target_params = [weight.detach().clone(), bias.detach().clone()]
    student = ConsistencyFunction(student_x0((weight, bias)), SCHEDULE)
    target = ConsistencyFunction(student_x0(target_params), SCHEDULE)
    teacher32 = lambda z, t: teacher(z.double(), t).float()  # noqa: E731
    optimiser = torch.optim.Adam([weight, bias], lr=0.03)
    g = torch.Generator().manual_seed(1)
    for _ in range(200):
        x0 = data.sample(64, generator=g).float()
        index = torch.randint(0, n_steps, (64,), generator=g)
        t, t_next = grid.times[index], grid.times[index + 1]
        a, s = (v.float().reshape(-1, 1) for v in SCHEDULE.alpha_sigma(t))
        z = a * x0 + s * torch.randn(x0.shape, generator=g)
        with torch.no_grad():
            goal = consistency_target(teacher32, target, z, t.float(), t_next.float(), SCHEDULE)
        loss = consistency_loss(student, z, t.float(), goal)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            for online, slow in zip((weight, bias), target_params):
                slow.lerp_(online, 0.1)
    noise = torch.randn(512, dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * grid.prior_std()
    reference = sample_ddim(teacher, noise, grid).float()
    one = TimeGrid.from_times(SCHEDULE, [float(times[0])])
    with torch.no_grad():
        distilled = sample_consistency(student, noise.float(), one)
    undistilled = sample_ddim(teacher, noise, one).float()
    error, baseline = ((distilled - reference) ** 2).mean(), ((undistilled - reference) ** 2).mean()
    print(f"\none-step MSE to the teacher's 4-step ODE samples: distilled {float(error):.2e}, "
          f"undistilled {float(baseline):.2e}")
    assert error < 0.05 * baseline


SETTINGS = {"method": "consistency", "steps": 2, "start_steps": 4, "iterations": 4, "batch_size": 4,
            "checkpoint_every": 2, "log_every": 1, "progress": False, "lr": 1e-3, "target_decay": 0.9}


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "consistency_004" / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return train_teacher(tmp_path_factory.mktemp("cd_teacher"))


def test_consistency_distill_resumes_exactly_and_samples_with_its_own_sampler(teacher, tmp_path, monkeypatch):
    """A 4-iteration CD run; an interruption after step 3 (checkpoint at 2), then --resume, repeats the loss sequence
    bit for bit (the EMA target network is in state.pt); `meddiff sample` of the student uses multistep consistency
    sampling on its 2-step grid, equal to a hand-built ConsistencyFunction + sample_consistency."""
    settings = {**SETTINGS, "teacher": str(teacher)}
    student = distill(settings, tmp_path / "a", dataset=TinyImages())
    full = losses(tmp_path / "a")
    assert len(full) == 4 and np.isfinite(full).all()

    class Stop(Exception):
        pass

    original = ConsistencyTrainer.fit

    def interrupted(self, *, resume=False, on_step=None):
        def stop(step, loss):
            if step == 3:
                raise Stop
        return original(self, resume=resume, on_step=stop)

    monkeypatch.setattr(ConsistencyTrainer, "fit", interrupted)
    with pytest.raises(Stop):
        distill(settings, tmp_path / "b", dataset=TinyImages())
    monkeypatch.undo()
    distill(settings, tmp_path / "b", resume=True, dataset=TinyImages())
    assert losses(tmp_path / "b") == full

    meta = json.loads((student / "meta.json").read_text())
    assert (meta["sampling"]["sampler"], meta["sampling"]["steps"], meta["sampling"]["method"]) == \
        ("consistency", 2, "consistency")
    assert meta["sampling"]["times"] == [999.0, 499.0]
    assert main(["sample", "--checkpoint", str(student), "--n", "3", "--seed", "4", "--out", str(tmp_path / "s")]) == 0
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert (manifest["sampler"], manifest["steps"], manifest["network_evaluations_per_sample"]) == ("consistency", 2, 2)
    model, meta = load_checkpoint(student)
    grid = TimeGrid.from_times(SCHEDULE, meta["sampling"]["times"])
    generator = torch.Generator().manual_seed(4)
    noise = torch.randn((3, 1, 8, 8), generator=generator) * grid.prior_std()
    f = ConsistencyFunction(ModelDenoiser(model, SCHEDULE, "v"), SCHEDULE)
    with torch.no_grad():
        expected = sample_consistency(f, noise, grid, hook=ClipDenoised(-1, 1), generator=generator,
                                      cond={CLASS_LABELS: torch.arange(3) % 2}).clamp(-1, 1)
    got, _ = synthesis.generate(student, 3, seed=4)
    torch.testing.assert_close(got, expected)


def test_consistency_settings_errors(teacher, tmp_path):
    with pytest.raises(MeddiffError, match="must divide --start-steps"):
        resolve_distill_config({"teacher": "x", "method": "consistency", "steps": 3, "start_steps": 32})
    with pytest.raises(MeddiffError, match="target_decay"):
        resolve_distill_config({"teacher": "x", "method": "consistency", "steps": 2, "start_steps": 32,
                                "target_decay": 1.0})
    # the CLI: --method consistency reaches the same checks, one line
    code = main(["distill", "--teacher", str(teacher), "--method", "consistency", "--steps", "3", "--start-steps", "8",
                 "--out", str(tmp_path / "x")])
    assert code == 1
