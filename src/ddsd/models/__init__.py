"""Segmentation networks (students and teacher), the model registry, the frozen teacher (and its
logit cache) and profiling.

Built-in models (``list_models()``): ``simple`` (~68k params), ``unet_small`` (~0.45M) and
``unet_teacher`` (~4.0M). Every model maps ``[B, 3, H, W]`` images to ``[B, K, H, W]`` logits for any
H, W; any other ``nn.Module`` with that contract also works through the Python API.
"""

from __future__ import annotations

from .profile import count_macs, count_parameters, cpu_latency_ms, profile_models, render_models_table
from .registry import create_model, list_models, register_model
from .simple import SimpleStudent
from .teacher import FrozenTeacher, load_teacher
from .teacher_cache import CachedTeacher, file_fingerprint
from .unet import UNet

__all__ = [
    "CachedTeacher",
    "FrozenTeacher",
    "SimpleStudent",
    "UNet",
    "count_macs",
    "count_parameters",
    "cpu_latency_ms",
    "create_model",
    "file_fingerprint",
    "list_models",
    "load_teacher",
    "profile_models",
    "register_model",
    "render_models_table",
]
