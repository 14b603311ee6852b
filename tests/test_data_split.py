"""``ddsd data split``: seeded split lists for a folder of images + masks that has none."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ddsd.data import DataError, build_dataset, load_spec
from ddsd.data.cli import app
from ddsd.data.splits import plan_splits, write_splits
from tests.data_helpers import make_camvid, make_voc, rand_image, save

runner = CliRunner()


def make_unsplit(root: Path, n: int = 20, extra_images: int = 0, extra_masks: int = 0,
                 dirs: tuple[str, str] = ("images", "masks")) -> Path:
    """``n`` binary pairs (``p00 ...``), plus images without masks (``u..``) and masks without images (``m..``)."""
    rng = np.random.default_rng(0)
    for i in range(n + extra_images):
        save(rand_image(rng, 8, 10), root / dirs[0] / f"{'p' if i < n else 'u'}{i:02d}.jpg")
    for i in list(range(n)) + [100 + j for j in range(extra_masks)]:
        m = np.zeros((8, 10), np.uint8)
        m[2:5, 3:7] = 255
        save(m, root / dirs[1] / f"{'p' if i < n else 'm'}{i:02d}.png")
    return root


def listed(path: Path) -> list[str]:
    return [x for x in path.read_text().splitlines() if x and not x.startswith("#")]


def test_partition_counts_disjoint_and_complete(tmp_path: Path) -> None:
    root = make_unsplit(tmp_path / "ds", n=20, extra_images=2, extra_masks=1)
    plan = plan_splits(root, val=0.1, test=0.2, seed=0)
    assert {s: len(v) for s, v in plan.lists.items()} == {"train": 14, "val": 2, "test": 4}
    all_stems = [x for v in plan.lists.values() for x in v]
    assert sorted(all_stems) == [f"p{i:02d}" for i in range(20)]  # disjoint and complete
    assert plan.images_without_mask == ["u20", "u21"] and plan.masks_without_image == ["m100"]


def test_order_is_the_documented_hash_and_seeded(tmp_path: Path) -> None:
    root = make_unsplit(tmp_path / "ds", n=20)
    stems = [f"p{i:02d}" for i in range(20)]
    for seed in (0, 7):
        order = sorted(stems, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())
        plan = plan_splits(root, val=0.1, test=0.1, seed=seed)
        assert plan.lists["test"] == sorted(order[:2]) and plan.lists["val"] == sorted(order[2:4])
    assert plan_splits(root, seed=0).lists == plan_splits(root, seed=0).lists
    assert plan_splits(root, seed=0).lists != plan_splits(root, seed=1).lists


def test_small_shares_still_get_one_pair_and_zero_means_none(tmp_path: Path) -> None:
    root = make_unsplit(tmp_path / "ds", n=5)
    assert {s: len(v) for s, v in plan_splits(root, val=0.05, test=0.05).lists.items()} == \
        {"train": 3, "val": 1, "test": 1}
    assert set(plan_splits(root, val=0.2, test=0).lists) == {"train", "val"}


def test_written_lists_train_and_detect(tmp_path: Path) -> None:
    root = make_unsplit(tmp_path / "ds", n=10, extra_images=1)
    with pytest.raises(DataError, match="ddsd data split"):
        load_spec(str(root))  # no lists yet: the error names the command
    files = write_splits(plan_splits(root, val=0.2, test=0.2, seed=3))
    assert [f.name for f in files] == ["train.txt", "val.txt", "test.txt"]
    assert (root / "val.txt").read_text().startswith("# written by `ddsd data split` (seed 3")
    spec = load_spec(str(root))
    assert spec.splits == ["train", "val", "test"] and spec.encoding == "binary"
    ds = build_dataset(spec, "val", size=(8, 10))
    assert sorted(ds[i]["stem"] for i in range(len(ds))) == listed(root / "val.txt")


def test_existing_lists_are_kept_unless_overwrite(tmp_path: Path) -> None:
    root = make_unsplit(tmp_path / "ds", n=10)
    write_splits(plan_splits(root, seed=0))
    before = (root / "train.txt").read_text()
    with pytest.raises(DataError, match=r"already has train.txt, val.txt, test.txt: pass --overwrite"):
        write_splits(plan_splits(root, seed=1))
    assert (root / "train.txt").read_text() == before
    write_splits(plan_splits(root, val=0.3, test=0, seed=1), overwrite=True)
    assert not (root / "test.txt").exists()  # no stale list of the old partition stays behind
    assert len(listed(root / "val.txt")) == 3 and len(listed(root / "train.txt")) == 7


@pytest.mark.parametrize(("kw", "match"), [
    ({"val": 0.5, "test": 0.5}, "leave nothing to train on"),
    ({"val": -0.1}, r"--val -0.1: a share"),
    ({"test": 1.0}, r"--test 1: a share"),
])
def test_bad_shares(tmp_path: Path, kw: dict, match: str) -> None:
    with pytest.raises(DataError, match=match):
        plan_splits(make_unsplit(tmp_path / "ds", n=4), **kw)


def test_too_few_pairs_several_files_and_other_layouts(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"2 image/mask pair\(s\) .* too few for 1 val \+ 1 test"):
        plan_splits(make_unsplit(tmp_path / "few", n=2))
    root = make_unsplit(tmp_path / "dup", n=4)
    save(rand_image(np.random.default_rng(1), 8, 10), root / "images" / "p01.png")
    with pytest.raises(DataError, match=r"several files in one folder \(p01.jpg, p01.png\)"):
        plan_splits(root)
    with pytest.raises(DataError, match="detected as the camvid layout"):
        plan_splits(make_camvid(tmp_path / "cv"))
    with pytest.raises(DataError, match="does not exist"):
        plan_splits(tmp_path / "nowhere")


def test_voc_without_image_sets(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "voc")
    shutil.rmtree(root / "ImageSets")
    with pytest.raises(DataError, match="ddsd data split"):
        load_spec(str(root))
    plan = plan_splits(root, val=0.2, test=0.2)
    assert plan.images_without_mask == ["2009_000001"]  # VOC: detection images have no mask
    files = write_splits(plan)
    assert all(f.parent == root / "ImageSets" / "Segmentation" for f in files)
    spec = load_spec(str(root))
    assert spec.layout == "voc" and spec.splits == ["train", "val", "test"]
    assert sum(len(build_dataset(spec, s, size=(10, 12))) for s in spec.splits) == 5


def test_detected_folder_spellings_and_explicit_dirs(tmp_path: Path) -> None:
    root = make_unsplit(tmp_path / "ds", n=6, dirs=("Imgs", "GT"))
    assert sum(len(v) for v in plan_splits(root).lists.values()) == 6
    other = make_unsplit(tmp_path / "own", n=6, dirs=("photos", "labels_bw"))
    plan = plan_splits(other, image_dir="photos", mask_dir="labels_bw")
    assert sum(len(v) for v in plan.lists.values()) == 6


def test_cli_split_dry_run_write_and_refuse(tmp_path: Path) -> None:
    root = make_unsplit(tmp_path / "ds", n=10, extra_images=1)
    r = runner.invoke(app, ["split", str(root), "--dry-run"])
    out = " ".join(r.output.split())  # rich wraps long lines
    assert r.exit_code == 0, r.output
    assert "dry run: nothing written" in out and "left out 1 image(s) without a mask: u10" in out
    assert not (root / "train.txt").exists()
    r = runner.invoke(app, ["split", str(root), "--val", "0.2", "--seed", "4"])
    assert r.exit_code == 0 and "wrote 3 list(s)" in r.output
    assert len(listed(root / "val.txt")) == 2
    r = runner.invoke(app, ["split", str(root)])
    assert r.exit_code == 1 and "pass --overwrite" in " ".join(r.output.split())
    r = runner.invoke(app, ["split", str(root), "--test", "0", "--overwrite"])
    assert r.exit_code == 0 and "removed test.txt" in r.output and not (root / "test.txt").exists()
    assert runner.invoke(app, ["check", str(root)]).exit_code == 0


def test_stems_with_spaces_or_a_hash_round_trip(tmp_path: Path) -> None:
    root = make_unsplit(tmp_path / "ds", n=6)
    for sub, ext in (("images", ".jpg"), ("masks", ".png")):
        for i in range(2):
            (root / sub / f"p{i:02d}{ext}").rename(root / sub / f"{'my photo' if i else '# x'} {i}{ext}")
    write_splits(plan_splits(root, val=0.2, test=0.2))
    spec = load_spec(str(root))
    stems = sorted(build_dataset(spec, s, size=(8, 10))[i]["stem"] for s in spec.splits
                   for i in range(len(build_dataset(spec, s, size=(8, 10)))))
    assert stems == ["# x 0", "my photo 1", "p02", "p03", "p04", "p05"]  # '#...': written as a tab pair


def test_a_missing_list_names_the_split_command(tmp_path: Path) -> None:
    root = make_unsplit(tmp_path / "ds", n=10)
    write_splits(plan_splits(root))
    (root / "val.txt").unlink()
    with pytest.raises(DataError, match=r"val.txt: split list of split 'val' is missing \(`ddsd data split .* "
                                        r"--overwrite` writes a new train/val/test partition\)"):
        build_dataset(load_spec(str(root)), "val", size=(8, 10))
