"""``sync()`` across a 2-process gloo group on CPU equals one process seeing the whole split."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ddsd.metrics import BinarySegMetrics, MulticlassSegMetrics

WORLD = 2


def shard_data(rank: int):
    """Deterministic per-rank data: binary maps of different sizes per rank, and multi-class batches."""
    rng = np.random.default_rng(100 + rank)
    binary = []
    for i in range(2 + rank):  # unequal numbers of images per rank
        h, w = 10 + 3 * i + rank, 12 + 2 * i
        prob = rng.random((h, w))
        gt = rng.random((h, w)) > 0.5
        gt[: h // 2] = prob[: h // 2] > 0.4  # partly predictable
        binary.append((prob, gt))
    gen = torch.Generator().manual_seed(200 + rank)
    target = torch.randint(0, 4, (2, 9, 11), generator=gen)
    target[torch.rand(target.shape, generator=gen) < 0.2] = 255
    if rank == 1:
        target[target == 3] = 0  # class 3 only on rank 0: a per-rank mIoU average would be wrong
    pred = torch.where(torch.rand(target.shape, generator=gen) < 0.7, target.clamp(max=3), 1)
    return binary, [(pred, target)]


def fill(rank: int):
    binary, multi = shard_data(rank)
    bm, mm = BinarySegMetrics(), MulticlassSegMetrics(4)
    for prob, gt in binary:
        bm.update(prob, gt)
    for pred, target in multi:
        mm.update(pred, target)
    return bm, mm


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        bm, mm = fill(rank)
        bm.sync()
        mm.sync()
        mm.sync()  # a second call without update is a no-op (no double counting)
        result = {"binary": bm.compute(), "multi": mm.compute(), "confmat": mm.confmat}
        with open(f"{out_dir}/rank{rank}.pkl", "wb") as f:
            pickle.dump(result, f)
    finally:
        dist.destroy_process_group()


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], float) and math.isnan(a[key]):
            assert math.isnan(b[key]), key
        else:
            assert a[key] == pytest.approx(b[key], rel=1e-12, abs=1e-15), key


@pytest.mark.slow
def test_sync_two_gloo_processes_equals_single_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "pg"), str(tmp_path)), nprocs=WORLD, join=True)
    results = [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in range(WORLD)]

    # single-process reference over the concatenated split (rank 0's images first, as in the gather)
    bm, mm = BinarySegMetrics(), MulticlassSegMetrics(4)
    for r in range(WORLD):
        binary, multi = shard_data(r)
        for prob, gt in binary:
            bm.update(prob, gt)
        for pred, target in multi:
            mm.update(pred, target)
    ref_b, ref_m = bm.compute(), mm.compute()

    for res in results:
        assert res["binary"]["num_images"] == 5 and res["multi"]["num_images"] == 4
        assert_same(res["binary"], ref_b)
        assert torch.equal(res["confmat"], mm.confmat)
        assert res["multi"]["per_class_iou"] == ref_m["per_class_iou"]
        assert_same(
            {k: v for k, v in res["multi"].items() if k != "per_class_iou"},
            {k: v for k, v in ref_m.items() if k != "per_class_iou"},
        )
    # the averaged per-rank mIoU is not the split's mIoU (why sums are reduced, not mIoUs)
    per_rank = [fill(r)[1].compute()["miou"] for r in range(WORLD)]
    assert abs(np.mean(per_rank) - ref_m["miou"]) > 1e-3


def test_sync_is_a_noop_without_process_group():
    bm, mm = fill(0)
    before_b, before_m = bm.compute(), mm.compute()
    bm.sync()
    mm.sync()
    assert bm.compute() == before_b and mm.compute() == before_m
