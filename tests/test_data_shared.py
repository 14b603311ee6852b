"""The four real datasets in ../shared/datasets (skipped when that folder is absent). Kept fast: counts,
a few decoded files, and full checks only of the small splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ddsd.data import build_dataset, check_dataset, load_spec, resolve_split
from ddsd.data.cli import app
from ddsd.data.errors import ErrorCollector
from ddsd.data.reader import load_pair
from tests.data_helpers import SHARED_DATASETS

pytestmark = [
    pytest.mark.shared,
    pytest.mark.skipif(not SHARED_DATASETS.is_dir(), reason=f"{SHARED_DATASETS} is absent"),
]

COUNTS = {  # from each dataset's README
    "sod": (180, 20, 100),
    "crackforest": (82, 18, 18),
    "isbi2012_membrane": (20, 5, 5),
    "camvid": (367, 101, 233),
}


@pytest.fixture(autouse=True)
def _datasets_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DDSD_DATASETS", str(SHARED_DATASETS))


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_split_counts(name: str) -> None:
    spec = load_spec(name)
    errors = ErrorCollector()
    counts = tuple(len(resolve_split(spec, s, errors)) for s in ("train", "val", "test"))
    assert not errors.errors and counts == COUNTS[name]


def test_camvid_first_files() -> None:
    spec = load_spec("camvid")
    errors = ErrorCollector()
    for split in ("train", "val", "test"):
        for sample in resolve_split(spec, split, errors)[:2]:
            pair = load_pair(sample, spec, spec.size)
            assert not pair.errors and pair.original_size == (360, 480)
            assert pair.ids.shape == (192, 256) and pair.image.shape == (192, 256, 3)
            assert set(np.unique(pair.ids).tolist()) <= set(range(11)) | {255}
    assert not errors.errors


def test_isbi_full_check_matches_readme() -> None:
    report = check_dataset(load_spec("isbi2012_membrane"))
    assert report.ok, report.errors
    shares = {s: v["class_share"]["membrane"] for s, v in report.summary["splits"].items()}
    assert shares == pytest.approx({"train": 0.2289, "val": 0.2032, "test": 0.1990}, abs=1e-4)
    assert report.summary["splits"]["train"]["sizes"] == {"512x512": 20}


def test_sod_val_sizes_and_binary() -> None:
    report = check_dataset(load_spec("sod"), splits=["val"])
    assert report.ok and report.summary["splits"]["val"]["sizes"] == {"320x214": 12, "214x320": 8}
    assert report.summary["splits"]["val"]["inbetween_files"] == 0


def test_crackforest_cached_dataset(tmp_path: Path) -> None:
    spec = load_spec("crackforest")
    ds = build_dataset(spec, "val", cache_dir=tmp_path)
    assert len(ds) == 18 and ds[0]["image"].shape == (3, 320, 480)
    orig = ds.original_mask(0)
    assert orig.shape == (320, 480) and set(np.unique(orig).tolist()) == {0, 1}
    share = ds.class_pixel_counts()[1] / (18 * 320 * 480)
    assert share == pytest.approx(0.0123, abs=1e-4)


def test_isbi_membrane_is_class_zero(tmp_path: Path) -> None:
    spec = load_spec("isbi2012_membrane")
    assert spec.positive_class == 0 and spec.class_names[0] == "membrane"
    ds = build_dataset(spec, "test", size=(64, 64), cache_dir=tmp_path)
    m = ds.original_mask(0)
    assert m.shape == (512, 512) and 0.1 < (m == 0).mean() < 0.35  # membrane: ~20 % of the pixels


def test_detect_and_cli_on_real_root() -> None:
    spec = load_spec(str(SHARED_DATASETS / "crackforest"))
    assert (spec.layout, spec.encoding, spec.splits) == ("folder", "binary", ["train", "val", "test"])
    res = CliRunner().invoke(app, ["check", str(SHARED_DATASETS / "isbi2012_membrane")])
    assert res.exit_code == 0, res.output
    assert "auto-detected" in res.output and "22.89%" in res.output
