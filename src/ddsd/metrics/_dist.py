"""Tiny helpers around ``torch.distributed`` for the metric ``sync()`` methods."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

__all__ = ["all_gather_objects", "all_reduce_sum_int64", "dist_active"]


def dist_active() -> bool:
    """True when a default process group is up (``is_available() and is_initialized()``)."""
    return dist.is_available() and dist.is_initialized()


def _comm_device() -> torch.device:
    """Device that the default group's collectives need: the current CUDA device for NCCL, else CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum_int64(tensor: torch.Tensor) -> torch.Tensor:
    """Exact integer SUM of ``tensor`` over all ranks; returns a new int64 tensor on ``tensor``'s device."""
    buf = tensor.detach().to(device=_comm_device(), dtype=torch.int64).clone()
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(tensor.device)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``all_gather_object``; NCCL needs ``torch.cuda.set_device``)."""
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
