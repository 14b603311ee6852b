"""Loss overhead: forward + backward time and peak memory of DDSDLoss against F.cross_entropy, in one run.

    python benchmarks/loss_overhead.py [--repeats 9] [--device cpu|cuda] [--threads 1]
                                       [--shapes 8x11x360x480,4x2x256x256] [--clock thread|wall] [--no-compile]
                                       [--temperature T] [--profile VARIANT]

Variants (the same student logits, ~5 % void pixels, virtual teacher a = 0.99, the loss's default T = 4 and
kd_weight unless --temperature is given):
  ce             F.cross_entropy(ignore_index=255)
  kd-naive       CE + textbook pixel KD: the teacher tensor [B,K,H,W] materialised, F.kl_div over valid pixels
  kd             DDSDLoss at a constant rate 0 (the `kd` method: no selection)
  ddsd           DDSDLoss at a constant rate 0.3 with the defaults (one_sided_kl, bernoulli, random ties):
                 eager, the binned bernoulli selection (exact ranks only for the open draws, ddsd._bernoulli)
  ddsd-hardest   the same with selection="hardest" (exactly the top 30 % dropped: histogram + kthvalue)
  ddsd-compiled  `ddsd` under torch.compile(fullgraph=True), check_inputs=False (bernoulli: a sort per image,
                 the only static-shape exact ranking)
  ddsd-hardest-compiled  `ddsd-hardest` compiled the same way (radix select, no sort)
Time: the variants are interleaved round by round; reported are the median per variant, its ratio to `ce`
(ratio of medians) and the median of the per-round ratios (each variant timed right next to `ce`). On CPU the
clock is the thread's CPU time (``time.thread_time``) by default: on a shared machine the wall clock also counts
the time the process waits for a core. Peak memory: increase of the peak RSS over the inputs in a fresh
subprocess per eager variant (CPU; run with ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed tensors leave the RSS
and the peak is that of the live tensors), or ``torch.cuda.max_memory_allocated`` (CUDA).

``--profile VARIANT`` (e.g. ``ddsd``) instead times nothing: it runs that variant ``--repeats`` times per shape under
``torch.profiler`` and prints the CPU time per step of the loss's labelled stages (``ddsd::...``, e.g. the
``bernoulli`` selection's priorities / bins / thresholds / draws / open_ranks) and of the costliest operators.

Last, the fullgraph check: a conv model + DDSDLoss(check_inputs=False) step compiled with ``fullgraph=True``
for three optimiser steps while the rate changes (0.5, 0.4, 0.3): graphs, graph breaks, recompilations and the
largest difference to the eager loss.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ddsd import DDSDLoss, virtual_teacher
from ddsd.schedules import Constant, Linear

A, RATE = 0.99, 0.3


def kd_naive(z, y, k):
    valid = y != 255
    pt = virtual_teacher(y, k, A)
    kl = F.kl_div(F.log_softmax(z, 1), pt, reduction="none").sum(1)
    return F.cross_entropy(z, y, ignore_index=255) + (kl * valid).sum() / valid.sum().clamp_min(1)


def make_variants(k, device, compiled=True, t=None):
    opts = {} if t is None else {"temperature": t}
    kd = DDSDLoss(k, confidence=A, schedule=Constant(0.0), **opts).to(device)
    ddsd = DDSDLoss(k, confidence=A, schedule=Constant(RATE), **opts).to(device)  # the default selection
    hardest = DDSDLoss(k, confidence=A, schedule=Constant(RATE), selection="hardest", **opts).to(device)
    out = {
        "ce": lambda z, y: F.cross_entropy(z, y, ignore_index=255),
        "kd-naive": lambda z, y: kd_naive(z, y, k),
        "kd": lambda z, y: kd(z, y).loss,
        "ddsd": lambda z, y: ddsd(z, y).loss,
        "ddsd-hardest": lambda z, y: hardest(z, y).loss,
    }
    if compiled:
        fast = DDSDLoss(k, confidence=A, schedule=Constant(RATE), check_inputs=False, **opts).to(device)
        out["ddsd-compiled"] = torch.compile(lambda z, y: fast(z, y).loss, fullgraph=True)
        fast_h = DDSDLoss(k, confidence=A, schedule=Constant(RATE), selection="hardest", check_inputs=False,
                          **opts).to(device)
        out["ddsd-hardest-compiled"] = torch.compile(lambda z, y: fast_h(z, y).loss, fullgraph=True)
    return out


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_once(fn, z, y, device, clock):
    z.grad = None
    _sync(device)
    t0 = clock()
    fn(z, y).backward()
    _sync(device)
    return clock() - t0


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


def peak_in_subprocess(shape_text, variant, args):
    cmd = [sys.executable, __file__, "--device", args.device, "--shapes", shape_text, "--_memory-of", variant,
           "--threads", str(args.threads)]
    if args.temperature is not None:
        cmd += ["--temperature", str(args.temperature)]
    # every block over 64 KiB its own mapping, returned to the OS when freed: the peak RSS is then the peak of the
    # live tensors (as torch.cuda.max_memory_allocated), not of what glibc's heap happened to keep (+-20 MB)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def bench(shape, shape_text, device, args, clock):
    z, y = make_inputs(shape, device)
    variants = make_variants(shape[1], device, compiled=not args.no_compile, t=args.temperature)
    for fn in variants.values():  # warm-up (and compilation)
        run_once(fn, z, y, device, clock)
        run_once(fn, z, y, device, clock)
    times = {name: [] for name in variants}
    for r in range(args.repeats):
        names = list(variants)
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(run_once(variants[name], z, y, device, clock))
    if device.type == "cuda":
        mem = {name: peak_mb(fn, z, y, device) for name, fn in variants.items() if not name.endswith("-compiled")}
    else:
        mem = {name: peak_in_subprocess(shape_text, name, args) for name in variants if not name.endswith("-compiled")}
    return times, mem


def profile_variant(shape, device, args) -> None:
    """Per-step CPU time of the ``ddsd::`` labels and the top operators (self time) of one variant."""
    from torch.profiler import ProfilerActivity, profile

    z, y = make_inputs(shape, device)
    fn = make_variants(shape[1], device, compiled=False, t=args.temperature)[args.profile]
    for _ in range(3):  # warm-up
        run_once(fn, z, y, device, time.perf_counter)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(args.repeats):
            run_once(fn, z, y, device, time.perf_counter)
    events = prof.key_averages()
    per_step = {e.key: (e.cpu_time_total / args.repeats, e.self_cpu_time_total / args.repeats) for e in events}
    print(f"\n{args.profile} on {'x'.join(map(str, shape))}, {args.repeats} steps under torch.profiler "
          f"(its overhead included; us per step)")
    step = sum(e.self_cpu_time_total for e in events) / args.repeats
    print(f"| stage (ddsd:: label) | CPU total |\n|---|---:|\n| the whole step (sum of self times) | {step:.0f} |")
    for k in sorted(k for k in per_step if k.startswith("ddsd::")):
        print(f"| {k} | {per_step[k][0]:.0f} |")
    print("| operator (top 12 by self time) | self CPU |\n|---|---:|")
    ops = sorted(((v[1], k) for k, v in per_step.items() if k.startswith("aten::")), reverse=True)[:12]
    for t, k in ops:
        print(f"| {k} | {t:.0f} |")


def fullgraph_check(device) -> str:
    """Compile a conv model + DDSDLoss step with fullgraph=True; steps with rates 0.5, 0.4, 0.3."""
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 11, 3, padding=1).to(device)
    crit = DDSDLoss(11, schedule=Linear(0.5, 0.2, 3), check_inputs=False).to(device)
    eager = DDSDLoss(11, schedule=Linear(0.5, 0.2, 3)).to(device)
    x = torch.randn(2, 3, 32, 48, device=device)
    y = torch.randint(0, 11, (2, 32, 48), device=device)

    def step(c, x, y):
        return c(model(x), y).loss

    compiled = torch.compile(step, fullgraph=True)
    diffs, rates = [], []
    try:
        for _ in range(3):
            rates.append(round(crit.rate, 3))
            loss = compiled(crit, x, y)
            loss.backward()
            diffs.append(abs(float(loss.detach()) - float(step(eager, x, y).detach())))
            crit.step()
            eager.step()
    except Exception as e:  # report, do not hide: the check failed
        return f"FAILED: {type(e).__name__}: {str(e).splitlines()[0]}"
    c = torch._dynamo.utils.counters
    graphs, breaks = c["stats"]["unique_graphs"], sum(c["graph_break"].values())
    ok = graphs == 1 and breaks == 0
    return (
        f"{'OK' if ok else 'NOT OK'}: model + DDSDLoss step, fullgraph=True, rates {rates}: {graphs} graph(s), "
        f"{breaks} graph break(s), {graphs - 1} recompilation(s), max |compiled - eager| loss {max(diffs):.2e}"
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--shapes", default="8x11x360x480,4x2x256x256")
    p.add_argument("--clock", choices=["thread", "wall"], default=None, help="default: thread on CPU, wall on CUDA")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled variant and the fullgraph check")
    p.add_argument("--temperature", type=float, default=None, help="KD temperature (default: DDSDLoss's)")
    p.add_argument("--profile", metavar="VARIANT", help="profile one variant (e.g. ddsd) instead of timing")
    p.add_argument("--_memory-of", dest="memory_of", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.memory_of:  # child process: one variant's peak memory
        shape = tuple(int(v) for v in args.shapes.split("x"))
        z, y = make_inputs(shape, device)
        fn = make_variants(shape[1], device, compiled=False, t=args.temperature)[args.memory_of]
        fn(z, y).backward()  # first call: allocator warm-up, lazy inits
        print(peak_mb(fn, z, y, device))
        return
    if args.profile:
        for s in args.shapes.split(","):
            profile_variant(tuple(int(v) for v in s.split("x")), device, args)
        return
    clock_name = args.clock or ("wall" if device.type == "cuda" else "thread")
    clock = time.perf_counter if clock_name == "wall" else time.thread_time
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"clock {clock_name}, repeats {args.repeats}, a = {A}, ddsd rate {RATE}, "
          f"T = {args.temperature or DDSDLoss(2).temperature}")
    print("| shape | variant | fwd+bwd ms (median) | / ce | / ce (paired median) | peak MB | mem / kd |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for s in args.shapes.split(","):
        shape = tuple(int(v) for v in s.split("x"))
        times, mem = bench(shape, s, device, args, clock)
        med = {n: statistics.median(t) for n, t in times.items()}
        for v, t in times.items():
            paired = statistics.median(a / c for a, c in zip(t, times["ce"], strict=True))
            ratio = f"{mem[v] / mem['kd']:.2f}" if v in mem and mem["kd"] > 0 else "-"
            m = f"{mem[v]:.0f} | {ratio}" if v in mem else "- | -"
            print(f"| {s} | {v} | {1000 * med[v]:.2f} | {med[v] / med['ce']:.2f} | {paired:.2f} | {m} |")
    if not args.no_compile:
        print("\nfullgraph check: " + fullgraph_check(device))


if __name__ == "__main__":
    main()
