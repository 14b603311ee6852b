"""CPU inference latency of the students: onnxruntime (exported ONNX) vs PyTorch eager, measured in one run.

    python benchmarks/export_latency.py [--models simple,unet_small] [--size 360x480] [--runs 30] [--warmup 5]
                                        [--threads N] [--classes 11]

For each model (random init, K classes, eval mode) the script exports ONNX with ``ddsd.export.export_model``
(opset 17, static shape ``[1, 3, H, W]``), checks it with ``verify_export``, then times batch-1 inference:

  eager  ``model(x)`` under ``torch.no_grad()`` (``torch.set_num_threads(N)``); models with another output
         convention (SegFormer: ``.logits`` at 1/4) run as ``LogitsModule(model)``, i.e. with the same bilinear
         upsampling to ``H x W`` that the exported graph contains
  ort    ``InferenceSession.run`` with ``CPUExecutionProvider`` (``intra_op_num_threads=N``, graph optimisation
         level ``ORT_ENABLE_ALL``, thread spinning off: spinning ort workers would slow the next eager call)

After ``--warmup`` untimed calls of each, the two runtimes are timed alternately (eager, ort, eager, ort, ...
swapping which goes first every run) so that machine noise hits both alike; the table reports medians and
the ratio ort/eager (target: <= 1). Needs ``pip install 'ddsd[export]'``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ddsd.export import export_model, verify_export
from ddsd.models import LogitsModule, count_parameters, create_model


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # onnxruntime's worker threads busy-wait after each run by default, which would steal the cores from the
    # eager call timed right after it; interleaved timing needs them to sleep.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def bench_model(name: str, classes: int, size: tuple[int, int], runs: int, warmup: int, threads: int, folder: Path):
    """Return a dict with median eager / ort latency (ms) for ``name`` on a ``[1, 3, H, W]`` input."""
    torch.manual_seed(0)
    model = LogitsModule(create_model(name, classes)).eval()  # a no-op for [B, K, H, W] models
    path = export_model(model, "onnx", folder / f"{name}.onnx", size=size)
    check = verify_export(model, path, "onnx", size=size)
    session = _session(path, threads)
    x = torch.randn(1, 3, *size)
    x_np = x.numpy()

    def eager() -> None:
        with torch.no_grad():
            model(x)

    def ort_run() -> None:
        session.run(None, {"image": x_np})

    for _ in range(warmup):
        eager()
        ort_run()
    times: dict[str, list[float]] = {"eager": [], "ort": []}
    for i in range(runs):
        order = [("eager", eager), ("ort", ort_run)]
        for key, fn in order if i % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            fn()
            times[key].append((time.perf_counter() - t0) * 1e3)
    eager_ms, ort_ms = statistics.median(times["eager"]), statistics.median(times["ort"])
    return {
        "model": name,
        "params": count_parameters(model),
        "eager_ms": eager_ms,
        "ort_ms": ort_ms,
        "ratio": ort_ms / eager_ms,
        "max_abs_diff": check.max_abs_diff,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="simple,unet_small")
    parser.add_argument("--size", default="360x480", help="HxW")
    parser.add_argument("--classes", type=int, default=11)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    h, w = (int(v) for v in args.size.lower().split("x"))
    torch.set_num_threads(args.threads)

    import onnxruntime as ort

    print(
        f"# export latency: batch 1, {h}x{w}, K={args.classes}, {args.runs} interleaved runs after "
        f"{args.warmup} warm-up, median\n"
        f"# cpu: {_cpu_name()}; threads: {args.threads} (torch + onnxruntime intra-op); "
        f"torch {torch.__version__}, onnxruntime {ort.__version__}\n"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            rows.append(bench_model(name, args.classes, (h, w), args.runs, args.warmup, args.threads, Path(tmp)))
    print("| model | params | PyTorch eager (ms) | onnxruntime (ms) | ort / eager | max abs logit diff |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['params']:,} | {r['eager_ms']:.2f} | {r['ort_ms']:.2f} | {r['ratio']:.2f} "
            f"| {r['max_abs_diff']:.1e} |"
        )
    return rows


if __name__ == "__main__":
    main()
