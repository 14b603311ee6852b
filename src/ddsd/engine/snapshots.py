"""Per-epoch pictures' raw material: for fixed validation images, the student's prediction, the per-pixel
difficulty and the keep mask (which pixels the criterion would distil at the current rate).

``<run>/snapshots/epoch_NNN.npz`` holds ``image`` uint8 [N,H,W,3], ``mask`` uint8 [N,H,W] (void 255),
``pred`` uint8 [N,H,W], ``difficulty`` float16 [N,H,W], ``keep`` bool [N,H,W], ``rate`` float,
``epoch`` int (1-based, as NNN), ``stems`` str [N]. Written only for criteria with ``pixel_maps`` (the KD
family: kd, tfkd, static, ddsd).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ddsd._io import atomic_write_bytes
from ddsd.data import collate_keep, denormalize
from ddsd.models.outputs import to_logits

__all__ = ["load_snapshot", "save_snapshot"]


@torch.no_grad()
def save_snapshot(
    path: Path, model: nn.Module, crit: nn.Module, dataset, count: int, epoch: int, device: torch.device,
    teacher: nn.Module | None = None,
) -> bool:
    """Write one snapshot file; returns False when the criterion has no pixel maps."""
    if not hasattr(crit, "pixel_maps") or count <= 0:
        return False
    batch = collate_keep([dataset[i] for i in range(min(count, len(dataset)))])
    x, y = batch["image"].to(device), batch["mask"].to(device)
    was_training = model.training
    model.eval()
    logits = to_logits(model(x), y.shape[-2:]).float()
    model.train(was_training)
    t_logits = teacher(x, size=tuple(y.shape[-2:])) if teacher is not None else None
    d, keep = crit.pixel_maps(logits, y, t_logits)
    images = denormalize(batch["image"]).permute(0, 2, 3, 1).numpy()
    buf = io.BytesIO()
    np.savez_compressed(
        buf, image=images, mask=y.cpu().numpy().astype(np.uint8), pred=logits.argmax(1).cpu().numpy().astype(np.uint8),
        difficulty=d.cpu().numpy().astype(np.float16), keep=keep.cpu().numpy(), rate=float(crit.rate), epoch=epoch,
        stems=np.array(batch["stem"]),
    )
    atomic_write_bytes(path, buf.getvalue())
    return True


def load_snapshot(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}
