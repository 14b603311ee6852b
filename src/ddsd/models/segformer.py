"""Hugging Face SegFormer (B0-B5) as ddsd models: ``segformer_b0`` ... ``segformer_b5``.

Built from ``transformers.SegformerConfig`` with random initialisation (nothing is downloaded), as
``SegformerForSemanticSegmentation``: ``[B, 3, H, W]`` -> an output whose ``.logits`` are ``[B, K, H/4, W/4]``
(upsampled to the label size by :func:`ddsd.models.outputs.to_logits`). Needs the optional extra
``pip install 'ddsd[hf]'`` (``transformers``); the names are registered without importing it.

The presets are the official ``nvidia/mit-b*`` / ``nvidia/segformer-b*`` configurations: every variant has
``num_attention_heads [1, 2, 5, 8]``, ``sr_ratios [8, 4, 2, 1]``, ``mlp_ratios [4, 4, 4, 4]``,
``patch_sizes [7, 3, 3, 3]``, ``strides [4, 2, 2, 2]`` and

======  ========================  ==============  =====================
variant ``hidden_sizes``          ``depths``      ``decoder_hidden_size``
======  ========================  ==============  =====================
b0      32, 64, 160, 256          2, 2, 2, 2      256
b1      64, 128, 320, 512         2, 2, 2, 2      256
b2      64, 128, 320, 512         3, 4, 6, 3      768
b3      64, 128, 320, 512         3, 4, 18, 3     768
b4      64, 128, 320, 512         3, 8, 27, 3     768
b5      64, 128, 320, 512         3, 6, 40, 3     768
======  ========================  ==============  =====================

``model.kwargs`` override any ``SegformerConfig`` field (e.g. a tiny test model:
``{hidden_sizes: [8, 16, 24, 32], depths: [1, 1, 1, 1], decoder_hidden_size: 32, num_attention_heads: [1, 1, 1, 1]}``).
With ``--model-weights DIR`` (a ``save_pretrained`` folder) the architecture fields of ``DIR/config.json``
are used (:func:`config_from_weights`), so a fine-tuned folder rebuilds exactly; explicit kwargs still win.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from .registry import register_model

__all__ = ["ARCH_KEYS", "PRESETS", "MissingExtraError", "config_from_weights", "from_folder", "segformer"]

_COMMON: dict[str, Any] = {"num_attention_heads": [1, 2, 5, 8], "sr_ratios": [8, 4, 2, 1],
                           "mlp_ratios": [4, 4, 4, 4], "patch_sizes": [7, 3, 3, 3], "strides": [4, 2, 2, 2]}
_WIDE = [64, 128, 320, 512]
PRESETS: dict[str, dict[str, Any]] = {
    "b0": {"hidden_sizes": [32, 64, 160, 256], "depths": [2, 2, 2, 2], "decoder_hidden_size": 256},
    "b1": {"hidden_sizes": _WIDE, "depths": [2, 2, 2, 2], "decoder_hidden_size": 256},
    "b2": {"hidden_sizes": _WIDE, "depths": [3, 4, 6, 3], "decoder_hidden_size": 768},
    "b3": {"hidden_sizes": _WIDE, "depths": [3, 4, 18, 3], "decoder_hidden_size": 768},
    "b4": {"hidden_sizes": _WIDE, "depths": [3, 8, 27, 3], "decoder_hidden_size": 768},
    "b5": {"hidden_sizes": _WIDE, "depths": [3, 6, 40, 3], "decoder_hidden_size": 768},
}
#: the SegformerConfig fields that define the architecture (read from a weights folder's config.json)
ARCH_KEYS = ("num_encoder_blocks", "depths", "sr_ratios", "hidden_sizes", "patch_sizes", "strides",
             "num_attention_heads", "mlp_ratios", "hidden_act", "decoder_hidden_size", "layer_norm_eps",
             "reshape_last_stage")
_EXTRA_HINT = "pip install 'ddsd[hf]' (or pip install 'transformers>=4.40')"


class MissingExtraError(ImportError, ValueError):
    """An optional dependency is not installed (the message names the extra to install)."""


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise MissingExtraError(f"the SegFormer models need Hugging Face transformers, which is not installed "
                                f"({exc}); install the hf extra: {_EXTRA_HINT}") from None
    return transformers


def config_from_weights(weights: str | Path | None) -> dict[str, Any]:
    """The architecture fields (:data:`ARCH_KEYS`) of ``weights/config.json`` when ``weights`` is a
    ``save_pretrained`` folder of a SegFormer; ``{}`` otherwise."""
    if weights is None or not (Path(weights) / "config.json").is_file():
        return {}
    path = Path(weights) / "config.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    if data.get("model_type") not in (None, "segformer"):
        raise ValueError(f"{path} describes a {data.get('model_type')!r} model, not a SegFormer")
    return {k: data[k] for k in ARCH_KEYS if k in data}


def segformer(variant: str, num_classes: int, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """``SegformerForSemanticSegmentation`` of preset ``variant`` (``b0``..``b5``), ``num_classes`` labels, random
    init; ``kwargs`` override ``SegformerConfig`` fields (unknown fields are a ``ValueError`` naming them)."""
    tf = _transformers()
    known = set(tf.SegformerConfig().to_dict())
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f"unknown SegFormer setting(s) {', '.join(map(repr, unknown))} in model.kwargs; "
                         f"valid: {', '.join(sorted(ARCH_KEYS))}, or any other SegformerConfig field")
    params = {**_COMMON, **PRESETS[variant], **kwargs}
    cfg = tf.SegformerConfig(num_labels=int(num_classes), num_channels=int(in_channels), **params)
    return _mark(tf.SegformerForSemanticSegmentation(cfg), num_classes)


def _mark(model: nn.Module, num_classes: int) -> nn.Module:
    model.num_classes = int(num_classes)
    model.ddsd_optional_prefixes = ("decode_head.",)  # an encoder-only (mit-b*) folder leaves the head random
    return model


def from_folder(folder: str | Path, num_classes: int, in_channels: int = 3,
                **kwargs: Any) -> tuple[nn.Module, dict[str, list[str]]]:
    """``SegformerForSemanticSegmentation.from_pretrained(folder, local_files_only=True)`` for ``num_classes``
    labels (``ignore_mismatched_sizes``: a classifier for another class count is re-initialised); ``kwargs``
    override config fields. Returns ``(model, {"new": [...], "missing": [...], "unused": [...]})`` (tensor names).

    Raises ``ValueError`` when the folder cannot be loaded or a tensor outside the classifier does not fit."""
    tf = _transformers()
    verbosity, bar = tf.logging.get_verbosity(), tf.utils.logging.is_progress_bar_enabled()
    tf.logging.set_verbosity_error()  # ddsd logs what was not loaded itself (build_model)
    tf.utils.logging.disable_progress_bar()
    try:
        model, info = tf.SegformerForSemanticSegmentation.from_pretrained(
            str(folder), local_files_only=True, num_labels=int(num_classes), num_channels=int(in_channels),
            ignore_mismatched_sizes=True, output_loading_info=True, **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"cannot load SegFormer weights from {folder}: {type(exc).__name__}: {exc}") from None
    finally:
        tf.logging.set_verbosity(verbosity)
        if bar:
            tf.utils.logging.enable_progress_bar()
    new = sorted(str(m[0]) for m in info.get("mismatched_keys", ()))
    bad = [k for k in new if not k.startswith("decode_head.classifier.")]
    if bad:
        raise ValueError(f"SegFormer weights in {folder} do not fit model.kwargs {kwargs}: {', '.join(bad[:4])} "
                         "have other shapes")
    report = {"new": new, "missing": sorted(map(str, info.get("missing_keys", ()))),
              "unused": sorted(map(str, info.get("unexpected_keys", ())))}
    return _mark(model, num_classes), report


def _register(variant: str) -> None:
    def factory(num_classes: int, **kwargs: Any) -> nn.Module:
        return segformer(variant, num_classes, **kwargs)

    factory.__name__ = factory.__qualname__ = f"segformer_{variant}"
    factory.__doc__ = f"Hugging Face SegFormer-{variant.upper()} ({PRESETS[variant]}); needs the hf extra."
    factory.config_from_weights = config_from_weights  # type: ignore[attr-defined]
    factory.from_folder = from_folder  # type: ignore[attr-defined]
    factory.source = "hf"  # type: ignore[attr-defined]
    register_model(f"segformer_{variant}")(factory)


for _v in PRESETS:
    _register(_v)
