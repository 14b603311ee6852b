"""``DatasetSpec`` validation and ``load_spec`` name / path / root resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

import ddsd.data.spec as spec_mod
from ddsd.data import DataError, DatasetSpec, load_spec, shipped_names

REPO = Path(__file__).resolve().parents[1]


def test_shipped_configs_parse(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # found relative to the package, not the current directory
    assert set(shipped_names()) >= {"camvid", "crackforest", "isbi2012_membrane", "sod"}
    shared = (REPO.parent / "shared" / "datasets").resolve()
    expected = {
        "camvid": ("camvid", "index", 11, 11, None),
        "crackforest": ("folder", "binary", 2, None, 1),
        "isbi2012_membrane": ("folder", "binary", 2, None, 0),
        "sod": ("folder", "binary", 2, None, 1),
    }
    for name, (layout, encoding, k, void, positive) in expected.items():
        spec = load_spec(name)
        assert (spec.layout, spec.encoding, spec.num_classes, spec.void_value, spec.positive_class) == (
            layout, encoding, k, void, positive)
        assert spec.root == shared / name and spec.size is not None
        assert spec.source.endswith(f"{name}.yaml")


def test_datasets_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DDSD_DATASETS", str(tmp_path))
    assert load_spec("sod").root == tmp_path / "sod"
    assert load_spec(str(REPO / "configs" / "data" / "camvid.yaml")).root == tmp_path / "camvid"


def test_relative_root_is_relative_to_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cfg").mkdir()
    cfg = tmp_path / "cfg" / "mine.yml"
    cfg.write_text("root: ../data/mine\nclass_names: [bg, fg]\nencoding: binary\nsize: [32, 48]\n")
    monkeypatch.chdir(REPO)
    spec = load_spec(str(cfg))
    assert spec.root == (tmp_path / "data" / "mine").resolve()
    assert spec.name == "mine" and spec.size == (32, 48) and spec.positive_class == 1


def test_overrides() -> None:
    spec = load_spec("procedural", size=(32, 32), counts={"train": 4, "val": 2})
    assert spec.size == (32, 32) and spec.counts == {"train": 4, "val": 2}
    with pytest.raises(DataError, match="unknown key 'bogus'"):
        load_spec("procedural", bogus=1)


def test_spec_validation() -> None:
    ok = DatasetSpec(name="x", root=Path("."), class_names=["a", "b", "c"], void_value=255)
    assert ok.num_classes == 3 and not ok.is_binary and ok.positive_class is None and ok.ignore_index == 255
    assert ok.image_dir_for("train") == "images" and ok.split_file_for("val") == "val.txt"
    cv = DatasetSpec(name="c", root=Path("."), layout="camvid", class_names=["a", "b"])
    assert (cv.image_dir_for("val"), cv.mask_dir_for("val")) == ("val", "valannot")
    voc = DatasetSpec(name="v", root=Path("."), layout="voc", class_names=["a", "b"])
    assert voc.split_file_for("train") == "ImageSets/Segmentation/train.txt"
    with pytest.raises(ValueError, match="duplicates"):
        DatasetSpec(name="x", root=Path("."), class_names=["a", "a"])
    with pytest.raises(ValueError, match="positive_class"):
        DatasetSpec(name="x", root=Path("."), class_names=["a", "b"], positive_class=2)
    with pytest.raises(ValueError, match="both"):
        DatasetSpec(name="x", root=Path("."), class_names=["a", "b"], encoding="rgb",
                    colors={0: [1, 2, 3], 1: [1, 2, 3]})
    with pytest.raises(ValueError):
        DatasetSpec(name="x", root=Path("."), class_names=["a", "b"], size=(0, 4))


def test_configs_dir_prefers_cwd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "configs" / "data").mkdir(parents=True)
    (tmp_path / "configs" / "data" / "local.yaml").write_text("root: x\nclass_names: [a, b]\n")
    monkeypatch.chdir(tmp_path)
    assert spec_mod.configs_dir() == tmp_path / "configs" / "data"
    assert load_spec("local").root == (tmp_path / "configs" / "data" / "x").resolve()
