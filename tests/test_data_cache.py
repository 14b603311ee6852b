"""The on-disk cache: reuse, invalidation by file and parameter changes, corrupt entries rebuilt."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import ddsd.data.dataset as dataset_mod
from ddsd.data import DatasetSpec, build_dataset, default_cache_dir
from tests.data_helpers import make_folder_binary, save


def _spec(root: Path, **kw) -> DatasetSpec:
    return DatasetSpec(name="t", root=root, encoding="binary", class_names=["bg", "obj"], **kw)


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, Path]:
    return make_folder_binary(tmp_path / "ds"), tmp_path / "cache"


def _count_builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = dataset_mod._build_cache

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(dataset_mod, "_build_cache", counting)
    return calls


def test_cache_is_reused(data: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    root, cache = data
    builds = _count_builds(monkeypatch)
    a = build_dataset(_spec(root), "train", size=(8, 8), cache_dir=cache)
    b = build_dataset(_spec(root), "train", size=(8, 8), cache_dir=cache)
    assert len(builds) == 1
    np.testing.assert_array_equal(a[2]["image"].numpy(), b[2]["image"].numpy())
    entries = list(cache.iterdir())
    assert len(entries) == 1 and entries[0].name.startswith("t-train-8x8-")
    assert sorted(p.name for p in entries[0].iterdir()) == ["images.npy", "masks.npy", "meta.json"]


def test_changed_file_invalidates(data: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    root, cache = data
    builds = _count_builds(monkeypatch)
    build_dataset(_spec(root), "train", size=(8, 8), cache_dir=cache)
    m = np.full((12, 16), 255, np.uint8)
    save(m, root / "masks" / "train00.png")
    st = (root / "masks" / "train00.png").stat()
    os.utime(root / "masks" / "train00.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    ds = build_dataset(_spec(root), "train", size=(8, 8), cache_dir=cache)
    assert len(builds) == 2 and (ds[0]["mask"] == 1).all()
    assert len(list(cache.iterdir())) == 1  # the stale entry was dropped


@pytest.mark.parametrize("change", [{"size": (6, 6)}, {"void_value": 7}, {"threshold": 200}])
def test_changed_parameter_invalidates(data: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
                                       change: dict) -> None:
    root, cache = data
    builds = _count_builds(monkeypatch)
    build_dataset(_spec(root), "train", size=(8, 8), cache_dir=cache)
    size = change.get("size", (8, 8))
    kw = {"void_value": change["void_value"]} if "void_value" in change else {}
    if "threshold" in change:
        kw["binary_threshold"] = change["threshold"]
    build_dataset(_spec(root, **kw), "train", size=size, cache_dir=cache)
    assert len(builds) == 2


def test_changed_split_list_invalidates(data: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    root, cache = data
    builds = _count_builds(monkeypatch)
    build_dataset(_spec(root), "train", size=(8, 8), cache_dir=cache)
    (root / "train.txt").write_text("train01\ntrain02\n")
    ds = build_dataset(_spec(root), "train", size=(8, 8), cache_dir=cache)
    assert len(builds) == 2 and ds.stems == ["train01", "train02"] and len(ds) == 2


@pytest.mark.parametrize("damage", ["truncate_images", "garbage_meta", "delete_masks"])
def test_corrupt_cache_is_rebuilt(data: tuple[Path, Path], damage: str) -> None:
    root, cache = data
    ref = build_dataset(_spec(root), "train", size=(8, 8), cache_dir=cache)
    expected = ref[3]["mask"].numpy()
    entry = next(cache.iterdir())
    if damage == "truncate_images":
        p = entry / "images.npy"
        p.write_bytes(p.read_bytes()[:100])
    elif damage == "garbage_meta":
        (entry / "meta.json").write_text("{not json")
    else:
        (entry / "masks.npy").unlink()
    with pytest.warns(RuntimeWarning, match="unreadable data cache"):
        ds = build_dataset(_spec(root), "train", size=(8, 8), cache_dir=cache)
    np.testing.assert_array_equal(ds[3]["mask"].numpy(), expected)
    assert not [p for p in entry.iterdir() if ".tmp-" in p.name]


def test_default_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DDSD_CACHE", str(tmp_path / "cc"))
    assert default_cache_dir() == tmp_path / "cc"
    monkeypatch.delenv("DDSD_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "ddsd"


def test_cached_dataset_pickles_without_arrays(data: tuple[Path, Path]) -> None:
    import pickle

    root, cache = data
    ds = build_dataset(_spec(root), "train", size=(8, 8), cache_dir=cache)
    ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._arrays is None
    np.testing.assert_array_equal(clone[1]["image"].numpy(), ds[1]["image"].numpy())
