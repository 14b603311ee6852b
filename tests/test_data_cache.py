"""The on-disk cache: reuse, invalidation by file and parameter changes, corrupt entries rebuilt."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import ddsd.data.dataset as dataset_mod
from ddsd.data import DatasetSpec, build_dataset, default_cache_dir
from ddsd.data.cache import array_digest, root_tag
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
    assert len(entries) == 1 and entries[0].name.startswith(f"t-{root_tag(root)}-train-8x8-")
    assert sorted(p.name for p in entries[0].iterdir()) == ["build.lock", "images.npy", "lock", "masks.npy",
                                                             "meta.json"]


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


def _entry(cache: Path) -> Path:
    (entry,) = [p for p in cache.iterdir() if p.is_dir()]
    return entry


@pytest.mark.parametrize("damage", ["random_image_bytes", "zeroed_masks", "mask_out_of_range"])
def test_same_length_corruption_is_detected_and_rebuilt(data: tuple[Path, Path], damage: str) -> None:
    import json

    root, cache = data
    ref = build_dataset(_spec(root), "train", size=(8, 8), cache_dir=cache)
    expected = [(ref[i]["image"].numpy(), ref[i]["mask"].numpy()) for i in range(len(ref))]
    del ref
    entry = _entry(cache)
    name = "images.npy" if damage == "random_image_bytes" else "masks.npy"
    arr = np.load(entry / name, mmap_mode="r+")  # overwrite the data in place: same length, header intact
    if damage == "random_image_bytes":
        arr[:] = np.random.default_rng(0).integers(0, 256, arr.shape, dtype=np.uint8)
    elif damage == "zeroed_masks":
        arr[:] = 0
    else:  # values no class has, with a matching checksum: caught by the range check
        arr[0, 0, 0] = 7
        arr.flush()
        meta = json.loads((entry / "meta.json").read_text())
        meta["checksums"]["masks"] = array_digest(np.load(entry / name))
        (entry / "meta.json").write_text(json.dumps(meta))
    arr.flush()
    del arr
    why = "outside the class ids" if damage == "mask_out_of_range" else f"{name} does not match its checksum"
    with pytest.warns(RuntimeWarning, match=why):
        ds = build_dataset(_spec(root), "train", size=(8, 8), cache_dir=cache)
    for i, (img, mask) in enumerate(expected):
        np.testing.assert_array_equal(ds[i]["image"].numpy(), img)
        np.testing.assert_array_equal(ds[i]["mask"].numpy(), mask)
    assert build_dataset(_spec(root), "train", size=(8, 8), cache_dir=cache) is not None  # intact now: no warning


def test_stale_tmp_files_of_an_interrupted_build_are_removed(data: tuple[Path, Path]) -> None:
    root, cache = data
    build_dataset(_spec(root), "train", size=(8, 8), cache_dir=cache)
    entry = _entry(cache)
    (entry / "meta.json").unlink()  # the build stopped before its last file
    (entry / ".images.npy.x1y2z3.tmp").write_bytes(b"partial")
    ds = build_dataset(_spec(root), "train", size=(8, 8), cache_dir=cache)
    assert len(ds) == 4 and (entry / "meta.json").is_file()
    assert not list(entry.glob(".*.tmp"))


def test_two_folders_with_one_name_are_used_at_the_same_time(tmp_path: Path) -> None:
    import shutil

    photos = make_folder_binary(tmp_path / "photos", seed=1)
    copy = tmp_path / "copy2" / "photos"
    shutil.copytree(photos, copy)
    save(np.full((12, 16), 255, np.uint8), copy / "masks" / "train00.png")  # the copy differs
    cache = tmp_path / "cache"
    spec_a = DatasetSpec(name="photos", root=photos, encoding="binary", class_names=["bg", "obj"])
    spec_b = DatasetSpec(name="photos", root=copy, encoding="binary", class_names=["bg", "obj"])
    a = build_dataset(spec_a, "train", size=(8, 8), cache_dir=cache)
    a_first = a[0]["mask"].numpy().copy()
    b = build_dataset(spec_b, "train", size=(8, 8), cache_dir=cache)  # must not remove a's entry
    entries = sorted(p.name for p in cache.iterdir())
    assert len(entries) == 2 and entries[0] != entries[1] and all(e.startswith("photos-") for e in entries)
    a2 = build_dataset(spec_a, "train", size=(8, 8), cache_dir=cache)  # a fresh reader, as a loader worker
    np.testing.assert_array_equal(a2[0]["mask"].numpy(), a_first)
    np.testing.assert_array_equal(a[0]["mask"].numpy(), a_first)
    assert (b[0]["mask"] == 1).all() and not (a[0]["mask"] == 1).all()


def test_an_entry_in_use_is_not_deleted_when_its_files_change(data: tuple[Path, Path]) -> None:
    root, cache = data
    old = build_dataset(_spec(root), "train", size=(8, 8), cache_dir=cache)  # holds its entry
    old_entry = _entry(cache)
    save(np.full((12, 16), 255, np.uint8), root / "masks" / "train01.png")
    st = (root / "masks" / "train01.png").stat()
    os.utime(root / "masks" / "train01.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    new = build_dataset(_spec(root), "train", size=(8, 8), cache_dir=cache)
    assert old_entry.is_dir() and len([p for p in cache.iterdir() if p.is_dir()]) == 2
    assert not (old[1]["mask"] == 1).all() and (new[1]["mask"] == 1).all()
    del old
    build_dataset(_spec(root, binary_threshold=100), "train", size=(8, 8), cache_dir=cache)  # another build
    assert not old_entry.exists()  # no longer in use: swept
