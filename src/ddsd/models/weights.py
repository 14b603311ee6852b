"""Pretrained weights from a local path (``--model-weights`` / ``--teacher-weights``): nothing is downloaded.

A path is either

* a folder written by Hugging Face ``save_pretrained`` (``model.safetensors``, a sharded
  ``model.safetensors.index.json``, or ``pytorch_model.bin``), or
* one file: ``.safetensors``, or anything ``torch.load(weights_only=True)`` reads: a ``state_dict``, a dict
  holding one under ``"state_dict"`` / ``"model"`` (a ddsd checkpoint).

The tensors are matched to the model by name (``module.`` / ``_orig_mod.`` prefixes removed; a Hugging Face base
model saved without its task head gets the model's ``base_model_prefix``, e.g. ``segformer.``) and then:

* **classes**: a tensor whose shape differs from the model's only in dim 0 and whose model dim 0 is the class
  count ``K`` is a classifier for another class count: it is left freshly initialised (a new head), said in
  the log (an error for a teacher, ``allow_new_head=False``);
* **channels**: a 4-D input-conv weight that differs only in dim 1 (weights for ``S`` input channels, model for
  ``C``) is adapted as timm does: summed over the channels when ``C = 1``, else repeated to ``C`` channels and
  scaled by ``S / C``; said in the log;
* missing tensors are an error unless they all lie under a prefix the model declares optional
  (``model.ddsd_optional_prefixes``, e.g. SegFormer's ``decode_head.`` for an encoder-only folder); tensors the
  model does not have are listed in the log; any other shape mismatch is an error naming the tensor.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["WeightsError", "load_state_dict_file", "load_weights", "strip_key"]

_PREFIXES = ("module.", "_orig_mod.")
_FOLDER_FILES = ("model.safetensors", "pytorch_model.bin")


class WeightsError(ValueError):
    """Weights cannot be read or do not fit the model (the message names the path and the tensor)."""


def strip_key(key: str) -> str:
    """``key`` without DDP (``module.``) and ``torch.compile`` (``_orig_mod.``) prefixes, however nested."""
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def _read_file(path: Path) -> Mapping[str, Any]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                return obj[key]
    return obj


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file or ``save_pretrained`` folder (see the module docstring), prefixes removed."""
    p = Path(path)
    if not p.exists():
        raise WeightsError(f"weights not found: {p}")
    if p.is_dir():
        index = p / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        else:
            files = [next((n for n in _FOLDER_FILES if (p / n).is_file()), "")]
            if not files[0]:
                raise WeightsError(f"weights folder {p} holds none of {', '.join(_FOLDER_FILES)} "
                                   "(a Hugging Face save_pretrained folder is expected)")
        parts = [p / f for f in files]
    else:
        parts = [p]
    out: dict[str, torch.Tensor] = {}
    for f in parts:
        try:
            sd = _read_file(f)
        except Exception as exc:
            raise WeightsError(f"cannot read weights {f}: {type(exc).__name__}: {exc}") from None
        if not isinstance(sd, Mapping):
            raise WeightsError(f"weights {f} hold a {type(sd).__name__}, not a state_dict")
        out.update({strip_key(str(k)): v for k, v in sd.items() if isinstance(v, torch.Tensor)})
    if not out:
        raise WeightsError(f"weights {p} hold no tensors")
    return out


def _add_base_prefix(model: nn.Module, sd: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor]):
    """A Hugging Face base model (``encoder.*``) saved without the task model's prefix (``segformer.encoder.*``)."""
    prefix = getattr(model, "base_model_prefix", "")
    if not prefix or any(k in own for k in sd) or not any(f"{prefix}.{k}" in own for k in sd):
        return sd
    return {f"{prefix}.{k}": v for k, v in sd.items()}


def _adapt_input_conv(w: torch.Tensor, channels: int) -> torch.Tensor:
    """``[O, S, kh, kw]`` -> ``[O, C, kh, kw]``: sum for ``C = 1``, else repeat and scale by ``S / C`` (timm)."""
    s = w.shape[1]
    if channels == 1:
        return w.sum(dim=1, keepdim=True)
    reps = math.ceil(channels / s)
    return w.repeat(1, reps, 1, 1)[:, :channels] * (s / channels)


def load_weights(model: nn.Module, path: str | Path, num_classes: int, log: Callable[[str], None] = print,
                 allow_new_head: bool = True) -> nn.Module:
    """Copy the weights at ``path`` into ``model`` (in place; returns it) by the rules of the module docstring.

    Raises :class:`WeightsError` naming the path and the tensor when they cannot be used.
    """
    sd = load_state_dict_file(path)
    own = model.state_dict()
    sd = _add_base_prefix(model, sd, own)
    new_state, head, adapted = {}, [], []
    for key, target in own.items():
        if key not in sd:
            continue
        src = sd[key]
        if src.shape == target.shape:
            new_state[key] = src
        elif src.dim() == target.dim() and src.shape[1:] == target.shape[1:] and target.shape[0] == num_classes:
            head.append(f"{key} ({src.shape[0]} -> {num_classes})")
        elif src.dim() == 4 and src.shape[0] == target.shape[0] and src.shape[2:] == target.shape[2:]:
            new_state[key] = _adapt_input_conv(src.to(target.dtype), target.shape[1])
            adapted.append(f"{key} ({src.shape[1]} -> {target.shape[1]} input channels)")
        else:
            raise WeightsError(f"weights {path}: tensor {key!r} has shape {tuple(src.shape)}, the model needs "
                               f"{tuple(target.shape)}: these weights are for another architecture or settings "
                               "(model.kwargs)")
    if not new_state:
        raise WeightsError(f"weights {path}: none of its {len(sd)} tensors matches the model (first names: "
                           f"{', '.join(list(sd)[:3])}; the model's: {', '.join(list(own)[:3])})")
    optional = tuple(getattr(model, "ddsd_optional_prefixes", ()))
    missing = [k for k in own if k not in sd]
    bad = [k for k in missing if not (optional and k.startswith(optional))]
    if bad:
        raise WeightsError(f"weights {path} lack {len(bad)} tensor(s) the model needs: {', '.join(bad[:5])}")
    if head and not allow_new_head:
        raise WeightsError(f"weights {path} are for another class count ({'; '.join(head)}), the data has "
                           f"{num_classes} classes")
    model.load_state_dict(new_state, strict=False)
    unused = [k for k in sd if k not in own]
    log(f"loaded {len(new_state)} of {len(own)} tensors from {path}")
    if head:
        log(f"new head for {num_classes} classes (freshly initialised): {'; '.join(head)}")
    if adapted:
        log(f"input channels adapted: {'; '.join(adapted)}")
    if missing:
        log(f"{len(missing)} tensor(s) not in the weights stay freshly initialised: {', '.join(missing[:4])}"
            + (" ..." if len(missing) > 4 else ""))
    if unused:
        log(f"{len(unused)} tensor(s) of the weights are not used by the model: {', '.join(unused[:4])}"
            + (" ..." if len(unused) > 4 else ""))
    return model
