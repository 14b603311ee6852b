"""Data pipeline benchmark: one epoch decoded from files vs read from the cache, and the data loader's share
of a training step.

    python benchmarks/data_pipeline.py                     # CamVid train at its default size (192x256)
    python benchmarks/data_pipeline.py --dataset procedural --steps 10

Targets (issue "Data"): cached / decoded epoch time <= 0.10; loader share of a training step < 5 %.
The student is ``ddsd.models.create_model("simple", K)`` when that package exists, else a 3-layer conv net.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ddsd.data import build_dataset, collate_keep, load_spec, resolve_split
from ddsd.data.errors import ErrorCollector
from ddsd.data.reader import load_pair
from ddsd.data.transforms import mask_to_tensor, to_tensor


def _student(k: int) -> tuple[nn.Module, str]:
    try:
        from ddsd.models import create_model

        return create_model("simple", k), "ddsd.models simple"
    except ImportError:
        net = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                            nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
                            nn.Conv2d(32, k, 1), nn.Upsample(scale_factor=4, mode="bilinear"))
        return net, "stand-in 3-layer conv net"


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="camvid")
    ap.add_argument("--split", default="train")
    ap.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per loader setting")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader num_workers to try")
    ap.add_argument("--repeats", type=int, default=2, help="epochs timed per mode (best is reported)")
    args = ap.parse_args()

    spec = load_spec(args.dataset)
    size = tuple(args.size) if args.size else spec.size
    rows: list[tuple[str, str]] = []
    print(f"# data pipeline: {spec.name} {args.split} at {size}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, {platform.processor() or '?'}")

    with tempfile.TemporaryDirectory() as cache_dir:
        t = time.perf_counter()
        ds = build_dataset(spec, args.split, size=size, cache_dir=Path(cache_dir))
        build_s = time.perf_counter() - t
        n = len(ds)

        if spec.layout != "procedural":
            samples = resolve_split(spec, args.split, ErrorCollector())

            def decoded_epoch() -> None:
                for s in samples:
                    pair = load_pair(s, spec, size)
                    to_tensor(pair.image), mask_to_tensor(pair.ids)

            decoded = _best(decoded_epoch, args.repeats)
        else:
            decoded = float("nan")

        def cached_epoch() -> None:
            for i in range(n):
                ds[i]

        cached = _best(cached_epoch, args.repeats + 1)
        ds.augment = True
        cached_aug = _best(cached_epoch, args.repeats)
        rows += [
            ("images in split", f"{n}"),
            ("cache build (validate + decode + resize + write, threads)", f"{build_s:.2f} s"),
            ("epoch decoded from files (1 thread)", f"{decoded:.2f} s ({decoded / n * 1e3:.2f} ms/image)"),
            ("epoch from cache", f"{cached:.3f} s ({cached / n * 1e3:.2f} ms/image)"),
            ("epoch from cache + augmentation", f"{cached_aug:.3f} s ({cached_aug / n * 1e3:.2f} ms/image)"),
            ("**cached / decoded** (target <= 0.10)", f"**{cached / decoded:.3f}**"),
            ("cached+augmented / decoded", f"{cached_aug / decoded:.3f}"),
        ]

        model, model_name = _student(spec.num_classes)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        params = sum(p.numel() for p in model.parameters())
        rows.append(("student", f"{model_name}, {params:,} parameters, batch {args.batch_size}"))
        for workers in args.workers:
            ds.set_epoch(0)
            loader = DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=workers,
                                collate_fn=collate_keep, drop_last=True,
                                generator=torch.Generator().manual_seed(0))
            it = iter(loader)
            data_t = step_t = 0.0
            for step in range(args.steps + 2):
                t0 = time.perf_counter()
                try:
                    batch = next(it)
                except StopIteration:
                    it = iter(loader)
                    batch = next(it)
                t1 = time.perf_counter()
                logits = model(batch["image"])
                loss = F.cross_entropy(logits, batch["mask"], ignore_index=255)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                t2 = time.perf_counter()
                if step >= 2:  # warm-up (worker start, allocator)
                    data_t += t1 - t0
                    step_t += t2 - t1
            share = data_t / (data_t + step_t)
            rows.append((f"loader share, num_workers={workers} (target < 5 %)",
                         f"**{share:.1%}** (data {data_t / args.steps * 1e3:.1f} ms, "
                         f"compute {step_t / args.steps * 1e3:.1f} ms per step)"))
            del it

    print()
    print("| measure | value |")
    print("|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()
