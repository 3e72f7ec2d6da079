"""Training throughput: images/s and peak memory of one training step (forward, backward, optimiser).

meddiff's Trainer step (which also draws t/noise, clips gradients and updates the EMA) versus plain loops
over MONAI DiffusionModelUNet (default attention, and use_flash_attention=True) and diffusers UNet2DModel of
the same size. 2D: ~4.4 M parameters, batch 16, 64x64; 3D: batch 2, 32^3. Each case runs in its own process
so that peak memory (CUDA: max allocated; CPU: peak resident set size of the process) is its own.

    python benchmarks/train_throughput.py --out results.json [--steps 3] [--threads 2]
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
        from torch.utils.data import Dataset

        from meddiff.training import Trainer

        class Images(Dataset):
            image_shape = shape[1:]

            def __len__(self):
                return batch * 4

            def __getitem__(self, i):
                return {"image": x0[i % batch].cpu()}

        channels = CHANNELS[dims] if name == "meddiff" else DEEP_CHANNELS[dims]
        attention = [False] * (len(channels) - 1) + [True]
        config = {
            "model": {"channels": channels, "attention_levels": attention, "num_res_blocks": 1},
            # use_flash_attention left at meddiff's default (auto: SDPA on CUDA, default attention on CPU)
            "run": {"name": "bench", "steps": 10**6, "batch_size": batch, "progress": False,
                    "channels_last": options.get("channels_last", "auto"), "compile": options.get("compile", False)},
            "optimiser": {"fused": options.get("fused", "auto")},
        }
        trainer = Trainer(config, Images(), run_dir=os.devnull)
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
                              up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1))

            def forward(x, t):
                return net(x, t).sample
        else:
            from monai.networks.nets import DiffusionModelUNet

            net = DiffusionModelUNet(spatial_dims=dims, in_channels=1, out_channels=1, channels=CHANNELS[dims],
                                     attention_levels=ATTENTION[dims], num_res_blocks=1, num_head_channels=32,
                                     use_flash_attention=name == "monai_flash")

            def forward(x, t):
                return net(x, t)
        net = net.to(device)
        params = sum(p.numel() for p in net.parameters())
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)

        def step():
            t = torch.randint(0, 1000, (batch,), device=device)
            noise = torch.randn_like(x0)
            x_t = x0 * 0.7 + noise * 0.7
            optimizer.zero_grad(set_to_none=True)
            loss = F.mse_loss(forward(x_t, t), noise)
            loss.backward()
            optimizer.step()

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
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    parser.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.case:
        import torch

        torch.set_num_threads(args.threads)
        record = run_case(args.case, args.dims[0], args.steps, args.warmup, json.loads(args.options))
        print("RESULT " + json.dumps(record))
        return

    results = []
    for dims in args.dims:
        for name in CASES[dims]:
            command = [sys.executable, __file__, "--case", name, "--dims", str(dims), "--steps", str(args.steps),
                       "--warmup", str(args.warmup), "--threads", str(args.threads)]
            output = subprocess.run(command, capture_output=True, text=True, check=False)
            lines = [l for l in output.stdout.splitlines() if l.startswith("RESULT ")]
            if output.returncode or not lines:
                print(f"case {name} {dims}D failed:\n{output.stderr[-2000:]}", file=sys.stderr)
                continue
            results.append(json.loads(lines[-1][len("RESULT "):]))
            print(f"  {dims}D {name}: {results[-1]['images_per_s']:.2f} images/s", file=sys.stderr)

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
    print("\n".join(lines))
    if args.out:
        report = {"results": results, **speedups, "steps": args.steps, "threads": args.threads}
        tmp = args.out + ".tmp"
        with open(tmp, "w") as handle:
            json.dump(report, handle, indent=2)
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
