"""What changes the speed of one 2D training step on CPU: torch.compile, channels_last, and where the UNet's channels are.

A plain loop (forward, MSE, backward, AdamW) over MONAI DiffusionModelUNet at train_throughput.py's 2D setting
(batch 16, 64x64, attention at the lowest level), per variant: parameters, GFLOP per step (torch's FlopCounterMode,
forward + backward), best of ``--steps`` timed steps after two warm-up steps (compilation happens there), and the
ratio to the eager [64, 128, 128] baseline. Prints a markdown table; ``--out`` writes JSON. Then the ceilings the
step is up against: GFLOP/s of a large fp32 matrix product and of the UNet's own 3x3 convolutions (forward, and
forward + backward) at their training shapes, so the step's GFLOP/s can be read as a fraction of what oneDNN
reaches on this CPU.

    python benchmarks/cpu_step_variants.py --out cpu_step_variants.json [--threads 2] [--steps 4]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F
from monai.networks.nets import DiffusionModelUNet
from torch.utils.flop_counter import FlopCounterMode

from meddiff.data.io import write_json

BASE = [64, 128, 128]
VARIANTS = [  # name, channels, compile, channels_last
    ("eager", BASE, False, False),
    ("compile", BASE, True, False),
    ("channels_last", BASE, False, True),
    ("compile + channels_last", BASE, True, True),
    ("eager, channels [32, 128, 128]", [32, 128, 128], False, False),
    ("eager, channels [32, 128, 160]", [32, 128, 160], False, False),
]


def measure(channels, compile_: bool, channels_last: bool, steps: int) -> dict:
    torch.manual_seed(0)
    net = DiffusionModelUNet(spatial_dims=2, in_channels=1, out_channels=1, channels=channels,
                             attention_levels=[False, False, True], num_res_blocks=1, num_head_channels=channels[-1],
                             norm_num_groups=32)
    x, t = torch.randn(16, 1, 64, 64), torch.randint(0, 1000, (16,))
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    with FlopCounterMode(display=False) as counter:
        F.mse_loss(net(x, t), x).backward()
    forward = torch.compile(net) if compile_ else net
    optimiser = torch.optim.AdamW(net.parameters(), 1e-4)

    def step():
        optimiser.zero_grad(set_to_none=True)
        F.mse_loss(forward(x, t), x).backward()
        optimiser.step()

    start = time.perf_counter()
    step(), step()
    warmup = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"params_m": sum(p.numel() for p in net.parameters()) / 1e6, "gflop": counter.get_total_flops() / 1e9,
            "step_s": min(times), "all_s": times, "warmup_s": warmup}


def _best_seconds(fn, repeats: int = 5) -> float:
    fn(), fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def kernel_ceilings() -> list[dict]:
    """GFLOP/s of a 2048^2 fp32 matrix product and of the [64, 128, 128] UNet's 3x3 convolutions at batch 16 (64 -> 64
    at 64^2, 128 -> 128 at 32^2 and 16^2), forward alone and forward + backward (input and weight gradients)."""
    torch.manual_seed(0)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    rows = [{"kernel": "matmul 2048^2", "gflop_per_s": 2 * 2048**3 / _best_seconds(lambda: a @ b) / 1e9}]
    for channels, size in ((64, 64), (128, 32), (128, 16)):
        x = torch.randn(16, channels, size, size, requires_grad=True)
        w = torch.randn(channels, channels, 3, 3, requires_grad=True)
        flop = 2 * 16 * channels * channels * 9 * size * size                   # one forward convolution
        forward = _best_seconds(lambda: F.conv2d(x.detach(), w.detach(), padding=1))
        both = _best_seconds(lambda: F.conv2d(x, w, padding=1).sum().backward())
        rows.append({"kernel": f"conv 3x3 {channels}->{channels} at {size}^2, batch 16",
                     "gflop_per_s": flop / forward / 1e9, "forward_backward_gflop_per_s": 3 * flop / both / 1e9})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per variant (best is reported)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    for name, channels, compile_, channels_last in VARIANTS:
        record = {"name": name, "channels": channels, "compile": compile_, "channels_last": channels_last,
                  **measure(channels, compile_, channels_last, args.steps)}
        results.append(record)
        print(f"{name}: {record['step_s']:.2f} s", flush=True)
    base = results[0]["step_s"]
    lines = ["| variant | params (M) | GFLOP / step | step (s, best) | GFLOP/s | speed vs eager |", "|---|---|---|---|---|---|"]
    for r in results:
        r["speedup"] = base / r["step_s"]
        lines.append(f"| {r['name']} | {r['params_m']:.2f} | {r['gflop']:.0f} | {r['step_s']:.2f} | "
                     f"{r['gflop'] / r['step_s']:.0f} | {r['speedup']:.2f}x |")
    print("\n".join(lines))
    ceilings = kernel_ceilings()
    print("\n| kernel | GFLOP/s forward | GFLOP/s forward + backward |\n|---|---|---|")
    for row in ceilings:
        both = row.get("forward_backward_gflop_per_s")
        print(f"| {row['kernel']} | {row['gflop_per_s']:.0f} | {'' if both is None else f'{both:.0f}'} |")
    if args.out:
        write_json({"results": results, "ceilings": ceilings, "threads": args.threads, "torch": torch.__version__},
                   args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
