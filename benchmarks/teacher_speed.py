"""Cost of a network teacher per distillation step, measured in one run: precision x layout, and the cache.

    python benchmarks/teacher_speed.py [--model unet_teacher] [--size 256x256] [--batch 4] [--classes 2]
                                       [--repeats 3] [--threads 1] [--device cpu|cuda]

Table 1: median forward time of a frozen teacher (:class:`ddsd.models.FrozenTeacher`, eval mode, no grad) for
each of float32 / bf16 / fp16 autocast x NCHW / channels-last, interleaved across repeats (the order rotates)
so machine noise hits all of them alike; ratios are to float32 NCHW (fp16 is timed on CUDA only).

Table 2: a training step of the ``simple`` student with the teacher running float32 NCHW vs bf16
channels-last vs fully cached (:class:`ddsd.models.CachedTeacher`, every lookup a hit: hashing + loading
only), i.e. what ``train.teacher_amp`` / ``train.teacher_channels_last`` / ``train.teacher_cache`` buy per
step. Untrained weights: the time does not depend on them.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from ddsd.models import CachedTeacher, FrozenTeacher, create_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device: torch.device) -> float:
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def _interleaved_medians(fns: dict, repeats: int, device: torch.device) -> dict:
    """Median seconds of each ``fns[k]()`` over ``repeats`` rounds; the order rotates every round."""
    keys = list(fns)
    times: dict = {k: [] for k in keys}
    for r in range(repeats):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            times[k].append(_time(fns[k], device))
    return {k: statistics.median(ts) for k, ts in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="unet_teacher")
    p.add_argument("--size", default="256x256")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    h, w = (int(v) for v in a.size.lower().split("x"))
    torch.manual_seed(0)
    net = create_model(a.model, a.classes).eval()
    x = torch.randn(a.batch, 3, h, w).to(device)
    dtypes = {"float32": None, "bf16": torch.bfloat16}
    if device.type == "cuda":
        dtypes["fp16"] = torch.float16
    variants = {(d, cl): FrozenTeacher(create_model(a.model, a.classes), autocast_dtype=dt, channels_last=cl).to(device)
                for d, dt in dtypes.items() for cl in (False, True)}
    for t in variants.values():
        t.net.load_state_dict(net.state_dict())
        t(x)  # warm-up (oneDNN primitive creation, cuDNN autotuning)
    fwd = _interleaved_medians({k: (lambda t=t: t(x)) for k, t in variants.items()}, a.repeats, device)
    cpu = platform.processor() or platform.machine()
    print(f"# {a.model} forward, batch {a.batch}, {h}x{w}, K={a.classes}, {a.threads} thread(s), {device}, {cpu}, "
          f"torch {torch.__version__}, median of {a.repeats}")
    print("| precision | layout | forward ms | speed-up vs float32 NCHW |\n|---|---|---:|---:|")
    base = fwd["float32", False]
    for (d, cl), m in fwd.items():
        print(f"| {d} | {'channels-last' if cl else 'NCHW'} | {1000 * m:.0f} | {base / m:.2f}x |")

    student = create_model("simple", a.classes).to(device).train()
    opt = torch.optim.AdamW(student.parameters(), 1e-3)
    y = torch.randint(0, a.classes, (a.batch, h, w), device=device)

    def step(teacher) -> None:
        logits = student(x)
        t = teacher(x, size=(h, w))
        loss = F.cross_entropy(logits, y) + F.kl_div(F.log_softmax(logits, 1), F.log_softmax(t, 1),
                                                     log_target=True, reduction="batchmean") / (h * w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with tempfile.TemporaryDirectory() as d:
        cached = CachedTeacher(variants["bf16", True], d, "benchmark")
        cached(x, size=(h, w))  # fill: every timed lookup is a hit
        rows = {"teacher float32 NCHW": variants["float32", False], "teacher bf16 channels-last":
                variants["bf16", True], "teacher cached (all hits)": cached}
        st = _interleaved_medians({k: (lambda t=t: step(t)) for k, t in rows.items()}, a.repeats, device)
    print(f"\n# simple student training step with the {a.model} teacher (batch {a.batch}, {h}x{w})")
    print("| teacher | step ms | speed-up |\n|---|---:|---:|")
    base = st["teacher float32 NCHW"]
    for k, m in st.items():
        print(f"| {k} | {1000 * m:.0f} | {base / m:.2f}x |")


if __name__ == "__main__":
    main()
