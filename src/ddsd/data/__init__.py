"""Datasets for ddsd: layouts, mask encodings, validation, cache, procedural set, transforms.

Typical use::

    from ddsd.data import load_spec, build_dataset
    spec = load_spec("camvid")            # or "procedural", a YAML path, or a root folder
    train = build_dataset(spec, "train", augment=True, seed=0)
    batch = train[0]                       # image [3, H, W] float32, mask [H, W] int64 (void 255)
"""

from ddsd.data.cache import default_cache_dir
from ddsd.data.check import CheckReport, check_dataset
from ddsd.data.dataset import SegDataset, build_dataset, collate_keep
from ddsd.data.detect import detect_spec
from ddsd.data.errors import DataError
from ddsd.data.layouts import Sample, resolve_split
from ddsd.data.procedural import generate_split
from ddsd.data.spec import (
    IGNORE_INDEX,
    PROCEDURAL_NAMES,
    DatasetSpec,
    load_spec,
    procedural_spec,
    shipped_names,
    spec_from_dict,
    spec_from_yaml,
)
from ddsd.data.transforms import IMAGENET_MEAN, IMAGENET_STD, augment, denormalize, to_tensor

__all__ = [
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PROCEDURAL_NAMES",
    "CheckReport",
    "DataError",
    "DatasetSpec",
    "Sample",
    "SegDataset",
    "augment",
    "build_dataset",
    "check_dataset",
    "collate_keep",
    "default_cache_dir",
    "denormalize",
    "detect_spec",
    "generate_split",
    "load_spec",
    "procedural_spec",
    "resolve_split",
    "shipped_names",
    "spec_from_dict",
    "spec_from_yaml",
    "to_tensor",
]
