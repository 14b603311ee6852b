"""Bad input: a clear error naming the file (and value), every bad file reported, nothing half-written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ddsd.data import DataError, DatasetSpec, build_dataset, check_dataset, load_spec
from tests.data_helpers import make_camvid, make_folder_binary, make_rgb, save, write_split


def _binary(root: Path) -> DatasetSpec:
    return DatasetSpec(name="t", root=root, encoding="binary", class_names=["bg", "obj"])


def _errors(spec: DatasetSpec, split: str = "train", cache: Path | None = None) -> list[str]:
    with pytest.raises(DataError) as exc:
        build_dataset(spec, split, size=(8, 8), cache_dir=cache)
    report = check_dataset(spec, splits=[split])
    assert not report.ok
    assert exc.value.errors == report.errors or set(exc.value.errors) <= set(report.errors)
    return exc.value.errors


def test_missing_mask_and_missing_image(tmp_path: Path) -> None:
    root = make_folder_binary(tmp_path / "ds")
    (root / "masks" / "train01.png").unlink()
    (root / "images" / "train02.jpg").unlink()
    errs = _errors(_binary(root), cache=tmp_path / "c")
    assert any("train01.jpg" in e and "no mask" in e for e in errs)
    assert any("train02.png" in e and "no image" in e for e in errs)
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def test_listed_stem_absent(tmp_path: Path) -> None:
    root = make_folder_binary(tmp_path / "ds")
    write_split(root / "train.txt", ["train00", "ghost"])
    errs = _errors(_binary(root))
    assert any("'ghost'" in e and "absent" in e and "train.txt" in e for e in errs)


def test_size_mismatch(tmp_path: Path) -> None:
    root = make_folder_binary(tmp_path / "ds")
    save(np.zeros((5, 7), np.uint8), root / "masks" / "train03.png")
    errs = _errors(_binary(root))
    assert len(errs) == 1 and "train03.jpg" in errs[0] and "16x12" in errs[0] and "7x5" in errs[0]


def test_unknown_mask_value_names_value_and_file(tmp_path: Path) -> None:
    root = make_camvid(tmp_path / "cv")
    m = np.zeros((10, 14), np.uint8)
    m[0, :3] = 37
    save(m, root / "trainannot" / "seq_train_001.png")
    spec = DatasetSpec(name="cv", root=root, layout="camvid", class_names=list("abcd"), void_value=4)
    errs = _errors(spec)
    assert len(errs) == 1
    assert "seq_train_001.png" in errs[0] and "37 (3 px)" in errs[0] and "void (4)" in errs[0]


def test_truncated_and_non_image_files(tmp_path: Path) -> None:
    root = make_folder_binary(tmp_path / "ds")
    data = (root / "images" / "train00.jpg").read_bytes()
    (root / "images" / "train00.jpg").write_bytes(data[: len(data) // 2])
    (root / "masks" / "train01.png").write_text("not a png")
    errs = _errors(_binary(root))
    assert any("train00.jpg" in e and "not a readable image" in e for e in errs)
    assert any("train01.png" in e and "not a readable image" in e for e in errs)


def test_empty_and_missing_split_list(tmp_path: Path) -> None:
    root = make_folder_binary(tmp_path / "ds")
    write_split(root / "val.txt", [])
    (root / "test.txt").unlink()
    assert any("val.txt" in e and "empty" in e for e in _errors(_binary(root), "val"))
    assert any("test.txt" in e and "missing" in e for e in _errors(_binary(root), "test"))
    report = check_dataset(_binary(root))  # default splits: the absent one is a warning, the empty one an error
    assert any("test" in w for w in report.warnings) and any("empty" in e for e in report.errors)


def test_rgb_colour_not_in_map(tmp_path: Path) -> None:
    root = make_rgb(tmp_path / "rgb", void_color=(9, 9, 9))
    spec = DatasetSpec(name="rgb", root=root, encoding="rgb", class_names=["bg", "red", "green"],
                       colors={0: [0, 0, 0], 1: [255, 0, 0], 2: [0, 255, 0]}, splits=["train", "val"])
    errs = _errors(spec)
    assert len(errs) == 3 and all("(9, 9, 9) (10 px)" in e and "colour map" in e for e in errs)


def test_all_bad_files_reported_first_20_and_count(tmp_path: Path) -> None:
    root = make_folder_binary(tmp_path / "ds", n={"train": 25}, h=4, w=4)
    for p in (root / "masks").iterdir():
        save(np.full((4, 4), 1, np.uint8), p)  # 0/1 instead of 0/255
    with pytest.raises(DataError) as exc:
        build_dataset(_binary(root), "train", size=(4, 4), cache_dir=tmp_path / "c")
    assert len(exc.value.errors) == 25
    text = str(exc.value)
    assert "25 problems" in text and "... and 5 more" in text and "encoding: index" in text
    assert text.count("\n  - ") == 20


def test_binary_strict_inbetween(tmp_path: Path) -> None:
    root = make_folder_binary(tmp_path / "ds")
    m = np.zeros((12, 16), np.uint8)
    m[3:6, 3:6] = 255
    m[2, 3:6] = 90  # anti-aliased edge
    save(m, root / "masks" / "train00.png")
    ok = check_dataset(_binary(root), splits=["train"])
    assert ok.ok and ok.summary["splits"]["train"]["inbetween_files"] == 1
    assert ok.summary["splits"]["train"]["inbetween_pixels"] == 3
    strict = check_dataset(_binary(root), splits=["train"], strict=True)
    assert not strict.ok and "train00.png" in strict.errors[0] and "3 pixel(s)" in strict.errors[0]


def test_yaml_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    cfg = tmp_path / "mine.yaml"
    cfg.write_text("root: .\nclass_names: [a, b]\nencoding: binary\nvoid_vaule: 3\n")
    with pytest.raises(DataError) as exc:
        load_spec(str(cfg))
    assert "void_vaule" in str(exc.value) and "mine.yaml" in str(exc.value)


@pytest.mark.parametrize("body, needle", [
    ("root: .\nclass_names: [a, b, c]\nencoding: binary\n", "exactly 2"),
    ("root: .\nclass_names: [a, b, c]\nvoid_value: 1\n", "void_value 1"),
    ("root: .\nclass_names: [a, b]\nencoding: rgb\n", "colors"),
    ("class_names: [a, b]\n", "needs a root"),
    ("- a\n- b\n", "mapping"),
])
def test_yaml_invalid_values(tmp_path: Path, body: str, needle: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(body)
    with pytest.raises(DataError, match=needle):
        load_spec(str(cfg))


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(DataError) as exc:
        load_spec("no_such_dataset")
    for name in ("procedural", "procedural_binary", "camvid", "sod", "crackforest", "isbi2012_membrane"):
        assert name in str(exc.value)


def test_undetectable_root(tmp_path: Path) -> None:
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DataError, match="cannot detect the dataset layout"):
        load_spec(str(tmp_path))


def test_missing_root_folder(tmp_path: Path) -> None:
    report = check_dataset(DatasetSpec(name="x", root=tmp_path / "nope", class_names=["a", "b"]))
    assert not report.ok and "does not exist" in report.errors[0] and str(tmp_path / "nope") in report.errors[0]


def test_no_partial_cache_on_error(tmp_path: Path) -> None:
    root = make_folder_binary(tmp_path / "ds")
    save(np.full((11, 16), 255, np.uint8), root / "masks" / "train03.png")
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="train03"):
        build_dataset(_binary(root), "train", size=(8, 8), cache_dir=cache)
    files = [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else []
    assert not files


def test_missing_data_path_says_it_does_not_exist(tmp_path: Path) -> None:
    for given in (str(tmp_path / "no_such_folder"), "./photos_typo", str(tmp_path / "mine.yaml")):
        with pytest.raises(DataError) as exc:
            load_spec(given)
        assert f"dataset path '{given}' does not exist" in str(exc.value)


def test_dataset_name_typo_suggests_the_name() -> None:
    with pytest.raises(DataError) as exc:
        load_spec("sdo")
    assert "unknown dataset 'sdo'" in str(exc.value) and "did you mean `sod`?" in str(exc.value)
    with pytest.raises(DataError, match="did you mean `camvid`"):
        load_spec("camvd")


def test_absent_shipped_dataset_names_data_root_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DDSD_DATASETS", str(tmp_path / "elsewhere"))
    spec = load_spec("sod")
    for run in (lambda: build_dataset(spec, "train", cache_dir=tmp_path / "c"),
                lambda: check_dataset(spec).raise_if_failed()):
        with pytest.raises(DataError) as exc:
            run()
        text = str(exc.value)
        assert f"shipped dataset 'sod' is not at {tmp_path / 'elsewhere' / 'sod'}" in text
        assert "--data-root" in text and "DDSD_DATASETS" in text
