"""Frozen teacher wrapper and checkpoint loader.

:class:`FrozenTeacher` wraps any segmentation network ``[B, 3, H, W] -> [B, K, h, w]`` and guarantees:

* every parameter has ``requires_grad=False``;
* the wrapped network is always in eval mode (BatchNorm uses running statistics, dropout is off), even
  after ``teacher.train()`` or ``parent.train()`` is called on a module containing it;
* ``forward`` runs under ``torch.no_grad()`` (not ``inference_mode``: the returned logits are ordinary
  tensors that can be used as constants inside the student's autograd graph, e.g. in a KD loss);
* optionally, logits are bilinearly resized to the student's resolution;
* optionally, the teacher alone runs in reduced precision and/or channels-last layout, whatever the student
  does: a frozen teacher is inference only, and on CPU its forward is most of a distillation step
  (``unet_teacher`` at batch 4, 256 x 256 on one core with avx512_bf16: 3.66 s float32 -> 1.41 s bf16 +
  channels-last). Its logits are returned in float32 (with bf16 / fp16 rounding).

**Never wrap the teacher in DistributedDataParallel** (nor put it inside a module that is wrapped):
it has no trainable parameters and nothing to synchronise, and DDP would broadcast its BatchNorm buffers
and reject a module without parameters requiring grad. Move it to the device with ``.to(device)`` and
call it directly on each rank.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .build import build_model
from .loading import load_model
from .outputs import resize_logits, to_logits
from .teacher_cache import file_fingerprint, path_fingerprint

__all__ = ["FrozenTeacher", "build_teacher", "load_teacher"]


class FrozenTeacher(nn.Module):
    """Frozen, always-eval, no-grad wrapper around a segmentation network.

    Args:
        net: network mapping ``[B, C, H, W]`` to logits ``[B, K, h, w]``.
        autocast_dtype: run the forward under ``torch.autocast(x.device.type, dtype=autocast_dtype)``
            (``torch.bfloat16`` / ``torch.float16``) and return float32 logits; ``None`` = the caller's
            precision (an enclosing autocast applies as usual).
        channels_last: convert the weights once and every input to ``torch.channels_last``.

    ``forward(x, size=None)``: ``x [B, C, H, W]`` -> logits ``[B, K, h, w]`` detached from autograd
    (``requires_grad=False``); when ``size=(H', W')`` is given and differs from ``(h, w)``, the logits are
    bilinearly resized (``align_corners=False``) to ``[B, K, H', W']``.
    """

    def __init__(
        self, net: nn.Module, autocast_dtype: torch.dtype | None = None, channels_last: bool = False
    ) -> None:
        super().__init__()
        if autocast_dtype not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"autocast_dtype must be None, torch.bfloat16 or torch.float16, got {autocast_dtype}")
        self.net = net.to(memory_format=torch.channels_last) if channels_last else net
        self.autocast_dtype = autocast_dtype
        self.channels_last = bool(channels_last)
        #: the wrapped network's class count when it declares one (``None`` otherwise)
        self.num_classes: int | None = getattr(net, "num_classes", None)
        for p in self.net.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenTeacher:
        """Ignore ``mode``: the teacher (and everything inside it) stays in eval mode."""
        return super().train(False)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """``x [B, C, H, W]`` -> teacher logits ``[B, K, h, w]``, or ``[B, K, *size]`` when ``size`` given."""
        if self.net.training:  # e.g. someone called self.net.train() directly
            self.net.eval()
        with torch.no_grad():
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            if self.autocast_dtype is not None:
                with torch.autocast(x.device.type, dtype=self.autocast_dtype):
                    logits = to_logits(self.net(x))
                logits = logits.float()
            else:
                logits = to_logits(self.net(x))
            logits = resize_logits(logits, size)
        return logits


def load_teacher(
    checkpoint_path: str | Path, map_location: str | torch.device = "cpu", weights_only: bool = True,
    autocast_dtype: torch.dtype | None = None, channels_last: bool = False,
) -> FrozenTeacher:
    """Build a :class:`FrozenTeacher` from a checkpoint file written by the training loop.

    The checkpoint is a dict with keys ``model`` (a ``state_dict``) and ``config`` (a dict with at least
    ``config["model"]["name"]`` (a registered model name) and ``config["model"]["num_classes"]``; an
    optional ``config["model"]["kwargs"]`` dict is passed to :func:`create_model`). Weights are loaded
    strictly; ``module.``/``_orig_mod.`` key prefixes (DDP, torch.compile) are removed first.

    Args:
        checkpoint_path: path of the ``.pt`` file.
        map_location: passed to ``torch.load``.
        weights_only: passed to ``torch.load``; set ``False`` only for trusted files whose config holds
            objects other than plain containers/strings/numbers.
        autocast_dtype, channels_last: how the teacher runs (see :class:`FrozenTeacher`).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file is not such a checkpoint dict, or a required key is missing (the message
            names the file and the key).
    """
    model, config = load_model(checkpoint_path, map_location=map_location, weights_only=weights_only)
    teacher = FrozenTeacher(model, autocast_dtype=autocast_dtype, channels_last=channels_last).to(map_location)
    teacher.num_classes = int(config["model"]["num_classes"])
    return teacher


def build_teacher(
    teacher: str, weights: str | Path | None, num_classes: int, autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False, log: Callable[[str], None] = print,
) -> tuple[FrozenTeacher, str]:
    """``(frozen teacher, fingerprint of its weights)`` from what ``--teacher`` / ``--teacher-weights`` name.

    * ``weights is None``: ``teacher`` is a ddsd checkpoint of any registered or user model (rebuilt from its
      recorded spec); the fingerprint is the file's sha256.
    * ``weights`` given: ``teacher`` is a model spec (``segformer_b2``, ``pkg.module:factory``, a plug-in) built
      for ``num_classes`` with those local weights (a file or ``save_pretrained`` folder; a Hugging Face folder
      also gives the architecture); the weights must predict ``num_classes`` classes. The fingerprint hashes
      the spec and the weights' bytes.

    Raises ``FileNotFoundError`` / ``ValueError`` naming what is missing or wrong.
    """
    if weights is None:
        if not Path(teacher).is_file():
            hint = (f"; {teacher!r} looks like a model spec: give its weights with --teacher-weights PATH"
                    if not Path(teacher).suffix else "")
            raise FileNotFoundError(f"teacher checkpoint not found: {teacher}{hint}")
        return (load_teacher(teacher, autocast_dtype=autocast_dtype, channels_last=channels_last),
                file_fingerprint(teacher))
    model, _ = build_model(teacher, num_classes, weights=weights, log=log, allow_new_head=False)
    frozen = FrozenTeacher(model.eval(), autocast_dtype=autocast_dtype, channels_last=channels_last)
    frozen.num_classes = num_classes
    return frozen, path_fingerprint(weights, extra=teacher)
