"""Segmentation networks (students and teacher), the model registry, the frozen teacher (and its
logit cache) and profiling.

Built-in models (``list_models()``): ``simple`` (~68k params), ``unet_small`` (~0.45M) and
``unet_teacher`` (~4.0M), plus Hugging Face ``segformer_b0`` ... ``segformer_b5`` (extra ``hf``). A model spec is
a registered name, ``package.module:factory`` (the user's code) or a ``ddsd.models`` entry-point plug-in
(:mod:`ddsd.models.registry`). Outputs may be a ``[B, K, h, w]`` tensor, a dict with ``"out"`` or an object with
``.logits``, at any resolution: :func:`ddsd.models.outputs.to_logits` is the one rule reading them.
"""

from __future__ import annotations

from .build import build_model, build_student
from .outputs import LogitsModule, to_logits
from .profile import count_macs, count_parameters, cpu_latency_ms, profile_models, render_models_table
from .registry import ModelSpecError, create_model, entry_point_models, get_factory, list_models, register_model
from .segformer import MissingExtraError  # registers segformer_b0..b5 (transformers is imported lazily)
from .simple import SimpleStudent
from .teacher import FrozenTeacher, build_teacher, load_teacher
from .teacher_cache import CachedTeacher, file_fingerprint, path_fingerprint
from .unet import UNet
from .weights import WeightsError, load_weights

__all__ = [
    "CachedTeacher",
    "FrozenTeacher",
    "LogitsModule",
    "MissingExtraError",
    "ModelSpecError",
    "SimpleStudent",
    "UNet",
    "WeightsError",
    "build_model",
    "build_student",
    "build_teacher",
    "count_macs",
    "count_parameters",
    "cpu_latency_ms",
    "create_model",
    "entry_point_models",
    "file_fingerprint",
    "get_factory",
    "list_models",
    "load_teacher",
    "load_weights",
    "path_fingerprint",
    "profile_models",
    "register_model",
    "render_models_table",
    "to_logits",
]
