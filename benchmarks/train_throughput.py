"""Training throughput: images/s and peak memory of one training step (forward, backward, optimiser).

meddiff's Trainer step (which also draws t/noise, clips gradients and updates the EMA) versus plain loops
over MONAI DiffusionModelUNet (default attention, and use_flash_attention=True) and diffusers UNet2DModel of
the same size. 2D: ~4.4 M parameters, batch 16, 64x64; 3D: batch 2, 32^3. Each case runs in its own process
so that peak memory (CUDA: max allocated; CPU: peak resident set size of the process) is its own.

Then, per dimension, the paired comparison that gives the ratio (``meddiff_vs_plain_2d`` / ``_3d`` in the JSON):
in one process, meddiff's real ``Trainer.fit`` loop (its DataLoader, draws, clipping, EMA, scheduler, logging
every 10 steps) and a plain MONAI loop (DDPMScheduler.add_noise, MSE, backward, AdamW with the trainer's
hyper-parameters, fed by a DataLoader over the same in-memory dataset) take alternate steps on the same network
and batch, so machine load hits both alike; ``--paired-warmup`` pairs are dropped, and the ratio is the median of
the per-pair ratios plain step time / meddiff step time (>1: meddiff faster), with its quartiles.

    python benchmarks/train_throughput.py --out results.json [--steps 3] [--threads 2] [--pairs 20]
    python benchmarks/train_throughput.py --only-paired --threads 1 --pairs 40 --dims 3   # the ratio alone
    python benchmarks/train_throughput.py --phases 10 --threads 1 --dims 3                # where the time goes
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

CHANNELS = {2: [64, 128, 128], 3: [32, 64, 64]}
ATTENTION = {2: [False, False, True], 3: [False, False, True]}
# A layout at the same parameter count (within 3 %): one level deeper, capacity moved off the full-size level,
# where a CPU step spends its FLOPs (2D: 4.33 M params, 141 vs 385 GFLOP per step; 3D: 2.94 M, 60 vs 201). It learns
# less per step but more per second on CPU (layout_quality.py); a different network, so it is reported beside
# meddiff's trainer speedup (same network as the plain loops), not as it.
DEEP_CHANNELS = {2: [32, 64, 128, 128], 3: [16, 32, 64, 64]}
BATCH = {2: 16, 3: 2}
SIZE = {2: 64, 3: 32}
CASES = {2: ["monai_default", "monai_flash", "diffusers", "meddiff", "meddiff_deeper_layout"],
         3: ["monai_default", "monai_flash", "meddiff", "meddiff_deeper_layout"]}


def _peak_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


class _Enough(Exception):
    """Raised from Trainer.fit's on_step callback once the paired run has its pairs."""


def _images_dataset(x0):
    """The in-memory dataset both loops read: the batch's images as dict items, as a meddiff dataset gives them."""
    from torch.utils.data import Dataset

    class Images(Dataset):
        image_shape = tuple(x0.shape[1:])

        def __len__(self):
            return x0.shape[0] * 4

        def __getitem__(self, i):
            return {"image": x0[i % x0.shape[0]]}

    return Images()


def _plain_monai(dims: int, device, flash: bool = False):
    import torch
    from monai.networks.nets import DiffusionModelUNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = DiffusionModelUNet(spatial_dims=dims, in_channels=1, out_channels=1, channels=CHANNELS[dims],
                                 attention_levels=ATTENTION[dims], num_res_blocks=1, num_head_channels=32,
                                 use_flash_attention=flash)
    return net.to(device)


def _plain_step(forward, params, device):
    """One step of the plain loop on a (B, 1, *spatial) batch: DDPM noising at a uniform t, eps MSE, AdamW with
    meddiff's defaults (lr 1e-4, weight decay 0), so the optimisers do the same work."""
    import torch
    import torch.nn.functional as F
    from monai.networks.schedulers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)

    def step(x0):
        x0 = x0.to(device)
        t = torch.randint(0, 1000, (x0.shape[0],), device=device)
        noise = torch.randn_like(x0)
        x_t = scheduler.add_noise(original_samples=x0, noise=noise, timesteps=t)
        optimizer.zero_grad(set_to_none=True)
        F.mse_loss(forward(x_t, t), noise).backward()
        optimizer.step()

    return step


def _meddiff_config(dims: int, batch: int, steps: int, channels=None, options: dict | None = None) -> dict:
    options = options or {}
    channels = channels or CHANNELS[dims]
    return {
        "model": {"channels": channels, "attention_levels": [False] * (len(channels) - 1) + [True],
                  "num_res_blocks": 1},
        # use_flash_attention left at meddiff's default (auto: SDPA on CUDA, default attention on CPU)
        "run": {"name": "bench", "steps": steps, "batch_size": batch, "progress": False,
                "checkpoint_every": 10**9, "channels_last": options.get("channels_last", "auto"),
                "compile": options.get("compile", False)},
        "optimiser": {"fused": options.get("fused", "auto")},
    }


def run_paired(dims: int, pairs: int, warmup: int, options: dict) -> dict:
    """Alternate steps of meddiff's Trainer.fit and the plain MONAI loop in this process (see the module doc)."""
    import statistics
    import tempfile

    import torch
    from torch.utils.data import DataLoader

    from meddiff.training import Trainer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch, size = BATCH[dims], SIZE[dims]
    x0 = torch.rand((batch, 1, *([size] * dims)), generator=torch.Generator().manual_seed(0)) * 2 - 1
    dataset = _images_dataset(x0)
    net = _plain_monai(dims, device)
    plain = _plain_step(net, net.parameters(), device)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0), pin_memory=device.type == "cuda")

    def batches():
        while True:
            yield from loader

    feed = batches()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    meddiff_s, plain_s, meddiff_cpu, plain_cpu = [], [], [], []
    mark = [0.0, 0.0]

    def on_step(step, loss):
        sync()
        meddiff_s.append(time.perf_counter() - mark[0])
        meddiff_cpu.append(time.process_time() - mark[1])
        start, start_cpu = time.perf_counter(), time.process_time()
        plain(next(feed)["image"])
        sync()
        plain_s.append(time.perf_counter() - start)
        plain_cpu.append(time.process_time() - start_cpu)
        if len(plain_s) == warmup + pairs:
            raise _Enough
        mark[:] = time.perf_counter(), time.process_time()

    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(_meddiff_config(dims, batch, 10**6, options=options), dataset, run_dir=run_dir)
        assert sum(p.numel() for p in trainer.net.parameters()) == sum(p.numel() for p in net.parameters())
        mark[:] = time.perf_counter(), time.process_time()
        try:
            trainer.fit(on_step=on_step)
        except _Enough:
            pass
    record = {"dims": dims, "batch": batch, "size": size, "pairs": pairs, "warmup_pairs": warmup,
              "device": str(device), "threads": torch.get_num_threads(), "options": options}
    # wall clock (what a user sees) and the process's CPU time (all threads; far less sensitive to other processes
    # on a shared machine, but it also counts the time threads spin while waiting for each other)
    for prefix, meddiff_t, plain_t in (("", meddiff_s, plain_s), ("cpu_", meddiff_cpu, plain_cpu)):
        meddiff_t, plain_t = meddiff_t[warmup:], plain_t[warmup:]
        ratios = sorted(p / m for p, m in zip(plain_t, meddiff_t))
        quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        record.update({
            f"{prefix}ratio_median": quartiles[1], f"{prefix}ratio_q1": quartiles[0],
            f"{prefix}ratio_q3": quartiles[2],
            f"{prefix}ratio_of_medians": statistics.median(plain_t) / statistics.median(meddiff_t),
            f"meddiff_step_{prefix}s_median": statistics.median(meddiff_t),
            f"plain_step_{prefix}s_median": statistics.median(plain_t),
            f"meddiff_step_{prefix}s": meddiff_t, f"plain_step_{prefix}s": plain_t})
    return record


def run_phases(dims: int, reps: int, options: dict) -> dict:
    """CPU time (``time.process_time``) of each phase of one meddiff Trainer step and one plain step, the two loops
    alternating (which goes first alternates too) after one step each; median and min per phase over ``reps``.
    The meddiff phases are those of ``Trainer._train_step`` (grad_accum 1, one process), spelled out."""
    import statistics

    import torch
    import torch.nn.functional as F
    from monai.networks.schedulers import DDPMScheduler
    from torch.utils.data import DataLoader

    from meddiff.training import Trainer
    from meddiff.training.trainer import StepBatchSampler

    batch, size = BATCH[dims], SIZE[dims]
    x0 = torch.rand((batch, 1, *([size] * dims)), generator=torch.Generator().manual_seed(0)) * 2 - 1
    dataset = _images_dataset(x0)
    trainer = Trainer(_meddiff_config(dims, batch, 10**6, options=options), dataset, run_dir=os.devnull)
    meddiff_batches = iter(DataLoader(dataset, batch_sampler=StepBatchSampler(len(dataset), batch, 1, 0, 1, 0, 0,
                                                                              10**6)))
    net = _plain_monai(dims, torch.device("cpu"))
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.0)
    scheduler = DDPMScheduler(num_train_timesteps=1000)

    def plain_batches():
        while True:
            yield from DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True)

    plain_feed = plain_batches()
    times: dict[str, list[float]] = {}
    clip = trainer.config["optimiser"]["grad_clip"]

    def tick(name, start):
        now = time.process_time()
        times.setdefault(name, []).append(now - start)
        return now

    def meddiff_step():
        s = time.process_time()
        item = next(meddiff_batches)
        s = tick("meddiff data", s)
        t, noise, drop = trainer._draws(batch)
        s = tick("meddiff t/noise draws", s)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss = trainer._micro_loss(item, t, noise, drop)
        s = tick("meddiff forward + loss", s)
        loss.backward()
        s = tick("meddiff backward", s)
        float(loss.detach().double().cpu())
        norm = torch.nn.utils.get_total_norm([p.grad for p in trainer._params], foreach=trainer._foreach)
        torch.nn.utils.clip_grads_with_norm_(trainer._params, clip, norm, foreach=trainer._foreach)
        s = tick("meddiff loss read-back + grad norm + clip", s)
        trainer.optimizer.step()
        trainer.scheduler.step()
        s = tick("meddiff AdamW + LR scheduler", s)
        trainer.step += 1
        trainer.ema.update(trainer.net, trainer.step)
        tick("meddiff EMA", s)

    def plain_step():
        s = time.process_time()
        image = next(plain_feed)["image"]
        s = tick("plain data", s)
        t = torch.randint(0, 1000, (batch,))
        noise = torch.randn_like(image)
        x_t = scheduler.add_noise(original_samples=image, noise=noise, timesteps=t)
        s = tick("plain t/noise draws", s)
        optimizer.zero_grad(set_to_none=True)
        loss = F.mse_loss(net(x_t, t), noise)
        s = tick("plain forward + loss", s)
        loss.backward()
        s = tick("plain backward", s)
        optimizer.step()
        tick("plain AdamW", s)

    meddiff_step(), plain_step()
    times.clear()
    for i in range(reps):
        for step in ((meddiff_step, plain_step) if i % 2 == 0 else (plain_step, meddiff_step)):
            step()
    phases = {name: {"median_ms": 1000 * statistics.median(v), "min_ms": 1000 * min(v)} for name, v in times.items()}
    total = {who: sum(p["median_ms"] for name, p in phases.items() if name.startswith(who))
             for who in ("meddiff", "plain")}
    return {"dims": dims, "reps": reps, "threads": torch.get_num_threads(), "phases": phases,
            "meddiff_sum_of_medians_ms": total["meddiff"], "plain_sum_of_medians_ms": total["plain"],
            "options": options}


def run_case(name: str, dims: int, steps: int, warmup: int, options: dict) -> dict:
    """Time ``steps`` training steps after ``warmup`` ones; returns the result record."""
    import torch
    import torch.nn.functional as F

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch, size = BATCH[dims], SIZE[dims]
    shape = (batch, 1, *([size] * dims))
    g = torch.Generator().manual_seed(0)
    x0 = (torch.rand(shape, generator=g) * 2 - 1).to(device)

    if name in ("meddiff", "meddiff_deeper_layout"):
        from meddiff.training import Trainer

        channels = CHANNELS[dims] if name == "meddiff" else DEEP_CHANNELS[dims]
        trainer = Trainer(_meddiff_config(dims, batch, 10**6, channels, options), _images_dataset(x0.cpu()),
                          run_dir=os.devnull)
        params = sum(p.numel() for p in trainer.net.parameters())
        micro = [{"image": x0.cpu()}]

        def step():
            trainer._train_step(micro)
    else:
        if name == "diffusers":
            from diffusers import UNet2DModel

            levels = len(CHANNELS[2])
            net = UNet2DModel(sample_size=size, in_channels=1, out_channels=1, block_out_channels=CHANNELS[2],
                              layers_per_block=1, norm_num_groups=32,
                              down_block_types=("DownBlock2D",) * (levels - 1) + ("AttnDownBlock2D",),
                              up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1)).to(device)

            def forward(x, t):
                return net(x, t).sample
        else:
            net = forward = _plain_monai(dims, device, flash=name == "monai_flash")
        params = sum(p.numel() for p in net.parameters())
        plain = _plain_step(forward, net.parameters(), device)

        def step():
            plain(x0)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    best = min(times)
    return {"name": name, "dims": dims, "params_m": round(params / 1e6, 3), "batch": batch, "size": size,
            "images_per_s": batch / best, "step_s_min": best, "step_s_median": sorted(times)[len(times) // 2],
            "peak_memory_mb": _peak_mb(device), "device": str(device), "threads": torch.get_num_threads(),
            "options": options}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per case (best is reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--pairs", type=int, default=20,
                        help="paired meddiff/plain steps per dimension, after the warm-up pairs (0: skip)")
    parser.add_argument("--paired-warmup", type=int, default=2, help="leading pairs left out of the paired ratio")
    parser.add_argument("--only-paired", action="store_true", help="skip the one-case-per-process table")
    parser.add_argument("--options", default="{}", help="JSON meddiff options, e.g. '{\"fused\": true}'")
    parser.add_argument("--phases", type=int, default=0, metavar="REPS",
                        help="instead: CPU time per phase of a meddiff and a plain step, REPS interleaved steps each")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    parser.add_argument("--paired", action="store_true", help=argparse.SUPPRESS)  # internal: the paired run
    args = parser.parse_args()
    options = json.loads(args.options)

    if args.phases:
        import torch

        torch.set_num_threads(args.threads)
        report = {"phases": [run_phases(dims, args.phases, options) for dims in args.dims]}
        for r in report["phases"]:
            print(f"\n{r['dims']}D, {r['threads']} thread(s), {r['reps']} steps each: CPU time per phase (ms)\n"
                  "| phase | median | min |\n|---|---|---|")
            for name, p in r["phases"].items():
                print(f"| {name} | {p['median_ms']:.2f} | {p['min_ms']:.2f} |")
            print(f"| meddiff, sum of medians | {r['meddiff_sum_of_medians_ms']:.1f} | |\n"
                  f"| plain, sum of medians | {r['plain_sum_of_medians_ms']:.1f} | |")
        if args.out:
            from meddiff.files import write_text

            write_text(args.out, json.dumps(report, indent=2))
        return

    if args.case or args.paired:
        import torch

        torch.set_num_threads(args.threads)
        if args.paired:
            record = run_paired(args.dims[0], args.pairs, args.paired_warmup, options)
        else:
            record = run_case(args.case, args.dims[0], args.steps, args.warmup, options)
        print("RESULT " + json.dumps(record))
        return

    def subprocess_record(extra: list[str], dims: int, what: str) -> dict | None:
        command = [sys.executable, __file__, *extra, "--dims", str(dims), "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--threads", str(args.threads), "--pairs", str(args.pairs),
                   "--paired-warmup", str(args.paired_warmup), "--options", args.options]
        output = subprocess.run(command, capture_output=True, text=True, check=False)
        lines = [l for l in output.stdout.splitlines() if l.startswith("RESULT ")]
        if output.returncode or not lines:
            print(f"{what} {dims}D failed:\n{output.stderr[-2000:]}", file=sys.stderr)
            return None
        return json.loads(lines[-1][len("RESULT "):])

    results = []
    for dims in args.dims if not args.only_paired else []:
        for name in CASES[dims]:
            record = subprocess_record(["--case", name], dims, f"case {name}")
            if record is not None:
                results.append(record)
                print(f"  {dims}D {name}: {record['images_per_s']:.2f} images/s", file=sys.stderr)
    paired = {}
    for dims in args.dims if args.pairs > 0 else []:
        record = subprocess_record(["--paired"], dims, "paired run")
        if record is not None:
            paired[dims] = record
            print(f"  {dims}D paired: meddiff / plain {record['ratio_median']:.3f}x wall "
                  f"(quartiles {record['ratio_q1']:.3f}-{record['ratio_q3']:.3f}), {record['cpu_ratio_median']:.3f}x "
                  f"CPU time ({record['cpu_ratio_q1']:.3f}-{record['cpu_ratio_q3']:.3f}), {record['pairs']} pairs",
                  file=sys.stderr)

    speedups = {}
    lines = ["| case | dims | params (M) | batch x size | images/s | step (s, best) | peak memory (MB) | vs fastest plain |",
             "|---|---|---|---|---|---|---|---|"]
    for dims in args.dims:
        rows = [r for r in results if r["dims"] == dims]
        plain = [r["images_per_s"] for r in rows if not r["name"].startswith("meddiff")]
        fastest = max(plain) if plain else float("nan")
        for r in rows:
            ratio = r["images_per_s"] / fastest
            if r["name"] == "meddiff":
                speedups[f"speedup_{dims}d"] = ratio
            elif r["name"] == "meddiff_deeper_layout":
                speedups[f"speedup_{dims}d_deeper_layout"] = ratio
            lines.append(f"| {r['name']} | {dims}D | {r['params_m']:.2f} | {r['batch']} x {r['size']}^{dims} | "
                         f"{r['images_per_s']:.2f} | {r['step_s_min']:.3f} | {r['peak_memory_mb']:.0f} | {ratio:.2f}x |")
    if results:
        print("\n".join(lines))
    if paired:
        print("\n| dims | threads | pairs | meddiff step (s, median) | plain step (s, median) | meddiff / plain speed, "
              "wall (median of pairs, quartiles) | same, CPU time |\n|---|---|---|---|---|---|---|")
        for dims, r in paired.items():
            speedups[f"meddiff_vs_plain_{dims}d"] = r["ratio_median"]
            speedups[f"meddiff_vs_plain_{dims}d_cpu_time"] = r["cpu_ratio_median"]
            print(f"| {dims}D | {r['threads']} | {r['pairs']} | {r['meddiff_step_s_median']:.3f} | "
                  f"{r['plain_step_s_median']:.3f} | {r['ratio_median']:.3f}x ({r['ratio_q1']:.3f}-{r['ratio_q3']:.3f}) | "
                  f"{r['cpu_ratio_median']:.3f}x ({r['cpu_ratio_q1']:.3f}-{r['cpu_ratio_q3']:.3f}) |")
    if args.out:
        report = {"results": results, "paired": list(paired.values()), **speedups, "steps": args.steps,
                  "threads": args.threads, "options": options}
        tmp = args.out + ".tmp"
        with open(tmp, "w") as handle:
            json.dump(report, handle, indent=2)
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
