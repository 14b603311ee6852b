"""``check_dataset``, layout/encoding detection from a root folder, and the ``data`` CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ddsd.data import check_dataset, detect_spec, load_spec
from ddsd.data.cli import app
from tests.data_helpers import make_camvid, make_folder_binary, make_rgb, make_voc, save, write_split

runner = CliRunner()


def test_summary_of_binary_folder(tmp_path: Path) -> None:
    root = make_folder_binary(tmp_path / "ds")
    report = check_dataset(load_spec(str(root)))
    assert report.ok and not report.errors
    s = report.summary
    assert s["layout"] == "folder" and s["encoding"] == "binary"
    assert {k: v["count"] for k, v in s["splits"].items()} == {"train": 4, "val": 2, "test": 2}
    train = s["splits"]["train"]
    assert train["sizes"] == {"16x12": 4}
    # rectangles of 3, 4, 5, 3 rows x 7 columns out of 4 x 12 x 16 pixels
    assert train["class_share"]["object"] == pytest.approx((3 + 4 + 5 + 3) * 7 / (4 * 12 * 16))
    assert train["void_share"] == 0 and train["inbetween_files"] == 0


def test_detect_folder_binary(tmp_path: Path) -> None:
    spec = detect_spec(make_folder_binary(tmp_path / "ds"))
    assert (spec.layout, spec.encoding, spec.num_classes, spec.positive_class) == ("folder", "binary", 2, 1)
    assert spec.splits == ["train", "val", "test"] and "auto-detected" in spec.description


def test_detect_antialiased_binary(tmp_path: Path) -> None:
    root = make_folder_binary(tmp_path / "ds")
    for i, stem in enumerate(["train00", "train01"]):
        m = np.zeros((12, 16), np.uint8)
        m[4:8, 4:12] = 255
        m[3, 4:12] = 60 + 100 * i  # soft edges on both sides of 128
        m[8, 4:12] = 200 - 100 * i
        save(m, root / "masks" / f"{stem}.png")
    spec = detect_spec(root)
    assert spec.encoding == "binary" and "in-between" in spec.description
    report = check_dataset(spec, splits=["train"])
    assert report.ok and report.summary["splits"]["train"]["inbetween_files"] == 2


def test_detect_camvid_with_class_dict(tmp_path: Path) -> None:
    root = make_camvid(tmp_path / "cv")
    (root / "class_dict.csv").write_text("id,name,r,g,b,ignore\n0,A,1,1,1,0\n1,B,2,2,2,0\n2,C,3,3,3,0\n"
                                         "3,D,4,4,4,0\n4,Void,0,0,0,1\n")
    spec = detect_spec(root)
    assert (spec.layout, spec.encoding, spec.void_value) == ("camvid", "index", 4)
    assert spec.class_names == ["A", "B", "C", "D"]
    assert check_dataset(spec).ok


def test_detect_camvid_without_class_dict(tmp_path: Path) -> None:
    spec = detect_spec(make_camvid(tmp_path / "cv"))
    assert spec.layout == "camvid" and spec.encoding == "index" and spec.num_classes == 5
    spec = load_spec(str(tmp_path / "cv"), void_value=4)
    assert spec.void_value == 4 and spec.num_classes == 4


def test_detect_voc(tmp_path: Path) -> None:
    spec = detect_spec(make_voc(tmp_path / "voc"))
    assert (spec.layout, spec.encoding, spec.void_value, spec.num_classes) == ("voc", "index", 255, 4)
    assert spec.splits == ["train", "val"]
    report = check_dataset(spec)
    assert report.ok and report.summary["splits"]["val"]["void_share"] > 0
    assert any("in no split list" in w for w in report.warnings)  # the JPEG without a mask


def test_detect_rgb(tmp_path: Path) -> None:
    spec = detect_spec(make_rgb(tmp_path / "rgb"))
    assert spec.encoding == "rgb" and spec.num_classes == 4 and len(spec.colors) == 4
    assert check_dataset(spec).ok


def test_detect_other_folder_names(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(3):
        save(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8), tmp_path / "Imgs" / f"x{i}.jpg")
        save(np.full((6, 6), i, np.uint8), tmp_path / "GT" / f"x{i}.png")
    write_split(tmp_path / "train.txt", ["x0", "x1", "x2"])
    spec = detect_spec(tmp_path)
    assert (spec.image_dir, spec.mask_dir, spec.encoding, spec.num_classes) == ("Imgs", "GT", "index", 3)


def test_detect_without_split_lists(tmp_path: Path) -> None:
    root = make_folder_binary(tmp_path / "ds")
    for s in ("train", "val", "test"):
        (root / f"{s}.txt").unlink()
    with pytest.raises(ValueError, match="no split lists"):
        detect_spec(root)


def test_duplicate_stem_across_splits_warns(tmp_path: Path) -> None:
    root = make_folder_binary(tmp_path / "ds")
    write_split(root / "val.txt", ["val00", "train00"])
    report = check_dataset(load_spec(str(root)))
    assert report.ok and any("'train00' is in both" in w for w in report.warnings)


def test_cli_check_root_ok(tmp_path: Path) -> None:
    root = make_folder_binary(tmp_path / "ds")
    res = runner.invoke(app, ["check", str(root)])
    assert res.exit_code == 0, res.output
    assert "auto-detected" in res.output and "binary" in res.output and "OK" in res.output
    assert "train" in res.output and "object" in res.output


def test_cli_check_errors_exit_1(tmp_path: Path) -> None:
    root = make_folder_binary(tmp_path / "ds")
    (root / "masks" / "val01.png").unlink()
    res = runner.invoke(app, ["check", str(root), "--split", "val"])
    assert res.exit_code == 1
    assert "val01.jpg" in res.output and "no mask" in res.output


def test_cli_strict(tmp_path: Path) -> None:
    root = make_folder_binary(tmp_path / "ds")
    m = np.zeros((12, 16), np.uint8)
    m[5, 5] = 77
    save(m, root / "masks" / "test00.png")
    assert runner.invoke(app, ["check", str(root), "--encoding", "binary"]).exit_code == 0
    res = runner.invoke(app, ["check", str(root), "--encoding", "binary", "--strict"])
    assert res.exit_code == 1 and "test00.png" in res.output


def test_cli_yaml_and_unknown_name(tmp_path: Path) -> None:
    root = make_camvid(tmp_path / "cv")
    cfg = tmp_path / "cv.yaml"
    cfg.write_text("layout: camvid\nroot: cv\nclass_names: [a, b, c, d]\nvoid_value: 4\n")
    res = runner.invoke(app, ["check", str(cfg)])
    assert res.exit_code == 0, res.output
    assert str(root) in res.output.replace("\n", "")
    res = runner.invoke(app, ["check", "nope_not_a_dataset"])
    assert res.exit_code == 1 and "procedural" in res.output


def test_cli_procedural_and_list() -> None:
    res = runner.invoke(app, ["check", "procedural_binary"])
    assert res.exit_code == 0 and "object" in res.output
    res = runner.invoke(app, ["list"])
    assert res.exit_code == 0 and "camvid" in res.output and "procedural" in res.output


def test_files_of_unchecked_split_lists_are_not_unlisted(tmp_path: Path) -> None:
    root = make_folder_binary(tmp_path / "ds")
    (root / "test.txt").rename(root / "holdout.txt")  # a list that is not one of the dataset's splits
    spec = load_spec(str(root), split_files={"holdout": "holdout.txt"}, splits=["train", "val", "holdout"])
    report = check_dataset(spec, splits=["train"])
    assert report.ok and not any("split list" in w for w in report.warnings), report.warnings
    save(np.zeros((12, 16), np.uint8), root / "masks" / "stray.png")
    report = check_dataset(spec, splits=["train"])
    assert any("1 image/mask file(s) listed in no split list" in w and "stray.png" in w for w in report.warnings)


def test_cli_prints_bracketed_paths_whole(tmp_path: Path) -> None:
    root = make_folder_binary(tmp_path / "set[old]")
    (root / "masks" / "val01.png").unlink()
    res = runner.invoke(app, ["check", str(root), "--split", "val"])
    assert res.exit_code == 1
    assert "set[old]" in res.output and str(root / "images" / "val01.jpg") in res.output.replace("\n", "")
