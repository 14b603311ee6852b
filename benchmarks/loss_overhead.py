"""Loss overhead: forward+backward time and peak memory of DDSDLoss vs pixel KD vs CE, measured in one run.

    python benchmarks/loss_overhead.py [--repeats 5] [--device cpu|cuda] [--shapes 8x11x360x480,4x19x512x1024]

Variants (all on the same student logits, virtual teacher a = 0.9, T = 1):
  ce        F.cross_entropy(ignore_index=255)
  kd-naive  CE + textbook pixel KD: the teacher tensor [B,K,H,W] materialised, F.kl_div over valid pixels
  kd        DDSDLoss with a constant rate 0 (closed-form virtual-teacher KL; the `kd` method of this tool)
  ddsd      DDSDLoss with the Capability schedule at r = 0.5 (difficulty = the same per-pixel KL + selection)
Time is the median over interleaved repeats; peak memory is the increase of the peak RSS over the inputs,
measured in a fresh subprocess per variant (CPU: allocator caching makes in-process RSS peaks depend on what
ran before), or of torch.cuda.max_memory_allocated (CUDA).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ddsd import DDSDLoss, virtual_teacher
from ddsd.schedules import Capability, Constant


def kd_naive(z, y, k):
    valid = y != 255
    pt = virtual_teacher(y, k, 0.9)
    kl = F.kl_div(F.log_softmax(z, 1), pt, reduction="none").sum(1)
    return F.cross_entropy(z, y, ignore_index=255) + (kl * valid).sum() / valid.sum().clamp_min(1)


def make_variants(k, device):
    kd = DDSDLoss(k, schedule=Constant(0.0)).to(device)
    ddsd = DDSDLoss(k, schedule=Capability()).to(device)  # rate r_max = 0.5 before any measurement
    return {
        "ce": lambda z, y: F.cross_entropy(z, y, ignore_index=255),
        "kd-naive": lambda z, y: kd_naive(z, y, k),
        "kd": lambda z, y: kd(z, y).loss,
        "ddsd": lambda z, y: ddsd(z, y).loss,
    }


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_once(fn, z, y, device):
    z.grad = None
    _sync(device)
    t0 = time.perf_counter()
    fn(z, y).backward()
    _sync(device)
    return time.perf_counter() - t0


def peak_mb(fn, z, y, device):
    z.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn(z, y).backward()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    base = _rss_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) to the current RSS
    fn(z, y).backward()
    return (_rss_kb("VmHWM") - base) / 1024


def make_inputs(shape, device):
    b, k, h, w = shape
    g = torch.Generator().manual_seed(0)
    z = torch.randn(b, k, h, w, generator=g).to(device).requires_grad_(True)
    y = torch.randint(0, k, (b, h, w), generator=g)
    y[torch.rand(b, h, w, generator=g) < 0.05] = 255
    return z, y.to(device)


def peak_in_subprocess(shape_text, variant, device):
    out = subprocess.run(
        [sys.executable, __file__, "--device", str(device), "--shapes", shape_text, "--_memory-of", variant],
        capture_output=True, text=True, check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def bench(shape, shape_text, device, repeats):
    z, y = make_inputs(shape, device)
    variants = make_variants(shape[1], device)
    for fn in variants.values():  # warm-up
        run_once(fn, z, y, device)
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(run_once(fn, z, y, device))
    med = {name: statistics.median(t) for name, t in times.items()}
    if device.type == "cuda":
        mem = {name: peak_mb(fn, z, y, device) for name, fn in variants.items()}
    else:
        mem = {name: peak_in_subprocess(shape_text, name, device) for name in variants}
    return med, mem


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--shapes", default="8x11x360x480,4x19x512x1024")
    p.add_argument("--_memory-of", dest="memory_of", help=argparse.SUPPRESS)
    args = p.parse_args()
    device = torch.device(args.device)
    if args.memory_of:  # child process: one variant's peak memory
        shape = tuple(int(v) for v in args.shapes.split("x"))
        z, y = make_inputs(shape, device)
        print(peak_mb(make_variants(shape[1], device)[args.memory_of], z, y, device))
        return
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("| shape | variant | fwd+bwd ms | peak MB | time / kd | time / kd-naive | mem / kd | mem / kd-naive |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for s in args.shapes.split(","):
        shape = tuple(int(v) for v in s.split("x"))
        med, mem = bench(shape, s, device, args.repeats)
        for v in med:
            print(
                f"| {s} | {v} | {1000 * med[v]:.1f} | {mem[v]:.0f} | {med[v] / med['kd']:.2f} | "
                f"{med[v] / med['kd-naive']:.2f} | {mem[v] / mem['kd']:.2f} | {mem[v] / mem['kd-naive']:.2f} |"
            )


if __name__ == "__main__":
    main()
