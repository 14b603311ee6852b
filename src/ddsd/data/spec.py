"""Dataset description (:class:`DatasetSpec`) and :func:`load_spec`.

A dataset is described by a small YAML file (or built from CLI flags, or auto-detected from a root folder):
where it lives (``root``), how it is laid out (``layout``), how its masks encode classes (``encoding``,
``void_value``, ``colors``) and what its classes are called. Unknown YAML keys are errors that name the key
and the file.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from ddsd.data.errors import DataError

IGNORE_INDEX = 255
"""Class id of void / ignored pixels in every decoded mask."""

Layout = Literal["folder", "camvid", "voc", "procedural"]
Encoding = Literal["binary", "index", "rgb"]
Byte = Annotated[int, Field(ge=0, le=255)]
RGB = tuple[Byte, Byte, Byte]
PosInt = Annotated[int, Field(gt=0)]

PROCEDURAL_NAMES = ("procedural", "procedural_binary")
SHIPPED_NAMES = ("camvid", "crackforest", "isbi2012_membrane", "sod")

_LAYOUT_DIRS: dict[str, tuple[str, str, str]] = {
    # layout: (image_dir, mask_dir, split list file); "{split}" is replaced by the split name
    "folder": ("images", "masks", "{split}.txt"),
    "camvid": ("{split}", "{split}annot", "{split}.txt"),
    "voc": ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation/{split}.txt"),
}


class DatasetSpec(BaseModel):
    """Everything needed to read one segmentation dataset.

    Decoded masks are class ids ``0..K-1`` with void pixels set to :data:`IGNORE_INDEX` (255).

    - ``encoding="index"``: the mask value is the class id (grey or palette PNG); ``void_value`` (if any)
      is a value outside ``0..K-1`` that marks void (CamVid: 11, VOC: 255).
    - ``encoding="binary"``: 0 = class 0, 255 = class 1; values in between are thresholded at
      ``binary_threshold`` (object = value > 128, as pysodmetrics) and counted by ``data check``;
      ``void_value`` may name one other value.
    - ``encoding="rgb"``: colour masks; ``colors`` maps class (index or name) to ``[r, g, b]``,
      ``void_colors`` lists colours that mean void.

    ``size`` is the default ``(H, W)`` images and masks are resized to (None: original sizes).
    ``positive_class`` is the "object" class of a binary set used by the binary metrics (default 1).
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    root: Path | None = None
    layout: Layout = "folder"
    encoding: Encoding = "index"
    class_names: list[str] = Field(min_length=2, max_length=255)
    void_value: Byte | None = None
    colors: dict[int, RGB] = Field(default_factory=dict)
    void_colors: list[RGB] = Field(default_factory=list)
    positive_class: int | None = None
    image_dir: str | None = None
    mask_dir: str | None = None
    split_files: dict[str, str] = Field(default_factory=dict)
    splits: list[str] = Field(default_factory=lambda: ["train", "val", "test"], min_length=1)
    size: tuple[PosInt, PosInt] | None = None
    binary_threshold: Annotated[int, Field(ge=0, le=254)] = 128
    counts: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)
    seed: int = 0
    description: str = ""
    _source: str = PrivateAttr(default="")
    _notes: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _colour_keys_by_name(cls, data: Any) -> Any:
        """Allow ``colors`` keys to be class names as well as class indices."""
        if isinstance(data, dict) and isinstance(data.get("colors"), dict):
            names = list(data.get("class_names") or [])
            out = {}
            for key, value in data["colors"].items():
                if isinstance(key, str) and key in names:
                    key = names.index(key)
                out[key] = value
            data = {**data, "colors": out}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> DatasetSpec:
        k = self.num_classes
        if len(set(self.class_names)) != k:
            raise ValueError(f"class_names has duplicates: {self.class_names}")
        if self.layout != "procedural" and self.root is None:
            raise ValueError(f"layout '{self.layout}' needs a root folder")
        if self.encoding == "binary" and k != 2:
            raise ValueError(f"encoding 'binary' needs exactly 2 class_names, got {k}")
        if self.void_value is not None:
            if self.encoding == "index" and self.void_value < k:
                raise ValueError(
                    f"void_value {self.void_value} is also a class id (classes are 0..{k - 1})"
                )
            if self.encoding == "binary" and self.void_value in (0, 255):
                raise ValueError(f"void_value {self.void_value} is a class value of a binary mask (0/255)")
        bad = [c for c in self.colors if not 0 <= c < k]
        if bad:
            raise ValueError(f"colors has keys that are neither class ids 0..{k - 1} nor class names: {bad}")
        if self.encoding == "rgb":
            if not self.colors:
                raise ValueError("encoding 'rgb' needs 'colors': class (index or name) -> [r, g, b]")
            seen: dict[tuple[int, int, int], str] = {}
            for c, rgb in [*self.colors.items(), *(("void", v) for v in self.void_colors)]:
                if tuple(rgb) in seen:
                    raise ValueError(f"colour {list(rgb)} is given to both {seen[tuple(rgb)]} and {c}")
                seen[tuple(rgb)] = str(c)
        if self.positive_class is None and k == 2:
            self.positive_class = 1
        if self.positive_class is not None and not 0 <= self.positive_class < k:
            raise ValueError(f"positive_class {self.positive_class} is not a class id 0..{k - 1}")
        return self

    @property
    def num_classes(self) -> int:
        """K, the number of classes (void excluded)."""
        return len(self.class_names)

    @property
    def source(self) -> str:
        """The YAML file this description was read from ('' otherwise)."""
        return self._source

    @property
    def notes(self) -> list[str]:
        """What auto-detection found worth a warning (e.g. mask files of a kind unlike the others, by name)."""
        return self._notes

    @property
    def is_binary(self) -> bool:
        return self.num_classes == 2

    @property
    def ignore_index(self) -> int:
        return IGNORE_INDEX

    def image_dir_for(self, split: str) -> str:
        """Image folder of ``split``, relative to ``root``."""
        return (self.image_dir or _LAYOUT_DIRS[self.layout][0]).format(split=split)

    def mask_dir_for(self, split: str) -> str:
        """Mask folder of ``split``, relative to ``root``."""
        return (self.mask_dir or _LAYOUT_DIRS[self.layout][1]).format(split=split)

    def split_file_for(self, split: str) -> str:
        """Split list file of ``split``, relative to ``root``."""
        return self.split_files.get(split) or _LAYOUT_DIRS[self.layout][2].format(split=split)


def procedural_spec(binary: bool = False) -> DatasetSpec:
    """The built-in procedural dataset (no files): 4 classes, or 2 (``procedural_binary``)."""
    common: dict[str, Any] = {
        "layout": "procedural",
        "size": (64, 64),
        "counts": {"train": 64, "val": 16, "test": 16},
    }
    if binary:
        return DatasetSpec(
            name="procedural_binary", encoding="binary", class_names=["background", "object"],
            positive_class=1,
            description="built-in procedural set, binary: object = large region + thin lines/rings + blobs",
            **common,
        )
    return DatasetSpec(
        name="procedural", encoding="index", class_names=["background", "region", "thin", "blob"],
        description="built-in procedural set: background, large region, thin lines/rings, small blobs",
        **common,
    )


def configs_dir() -> Path | None:
    """The shipped ``configs/data`` folder: under the current directory first, then the repository root."""
    here = Path.cwd() / "configs" / "data"
    if here.is_dir():
        return here
    repo = Path(__file__).resolve().parents[3] / "configs" / "data"  # src/ddsd/data/spec.py -> repo
    return repo if repo.is_dir() else None


def shipped_names() -> list[str]:
    """Names accepted by :func:`load_spec` besides the procedural ones (YAML stems in ``configs/data``)."""
    d = configs_dir()
    found = sorted(p.stem for p in d.glob("*.yaml")) if d else []
    return found or list(SHIPPED_NAMES)


def spec_from_yaml(path: str | Path, datasets_root: str | Path | None = None) -> DatasetSpec:
    """Read a dataset description from YAML; a relative ``root`` is relative to the YAML file's folder.

    For a file in the shipped configs folder, ``datasets_root`` (else env ``DDSD_DATASETS``), a folder holding
    the dataset folders, replaces the root by ``<datasets_root>/<name>``.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise DataError(f"{path}: cannot read dataset description", [str(e)]) from e
    if not isinstance(data, dict):
        raise DataError(f"{path}: a dataset description must be a YAML mapping, got {type(data).__name__}")
    data.setdefault("name", path.stem)
    override = str(datasets_root) if datasets_root else os.environ.get("DDSD_DATASETS")
    shipped = configs_dir()
    if override and shipped is not None and path.resolve().parent == shipped.resolve():
        data["root"] = str(Path(override).expanduser() / str(data["name"]))
    if data.get("root") is not None:
        root = Path(str(data["root"])).expanduser()
        data["root"] = root if root.is_absolute() else (path.resolve().parent / root).resolve()
    spec = _validate(data, str(path))
    spec._source = str(path)
    return spec


def spec_from_dict(data: dict[str, Any], source: str = "dataset description") -> DatasetSpec:
    """Validate a mapping (e.g. from CLI flags) into a :class:`DatasetSpec`; errors name ``source``."""
    return _validate(dict(data), source)


def _validate(data: dict[str, Any], source: str) -> DatasetSpec:
    try:
        return DatasetSpec.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
            if err["type"] == "extra_forbidden":
                lines.append(f"unknown key '{loc}' in {source}")
            else:
                msg = err["msg"].removeprefix("Value error, ")
                lines.append(f"{loc}: {msg} (in {source})" if err["loc"] else f"{msg} (in {source})")
        raise DataError(f"{source}: invalid dataset description", lines) from None


def load_spec(
    name_or_path: str | Path = "procedural", datasets_root: str | Path | None = None, **overrides: Any
) -> DatasetSpec:
    """Resolve a dataset by name, YAML path or root folder.

    - ``"builtin"`` (= ``"procedural"``, 4 classes) / ``"procedural_binary"``: the built-in sets (no files);
    - a shipped name (``camvid``, ``crackforest``, ``isbi2012_membrane``, ``sod``):
      ``configs/data/<name>.yaml``;
    - a path to a ``.yaml``/``.yml`` file;
    - a root folder: the layout (folder / CamVid / VOC) and mask encoding are detected.

    ``overrides`` replace fields of the result (e.g. ``size=(128, 128)``; for a root folder also
    ``layout``, ``encoding``, ``void_value`` steer the detection).
    """
    key = "procedural" if str(name_or_path) == "builtin" else str(name_or_path)
    if key in PROCEDURAL_NAMES:
        spec = procedural_spec(binary=key == "procedural_binary")
    else:
        shipped = configs_dir()
        path = Path(key).expanduser()
        if shipped is not None and "/" not in key and (shipped / f"{key}.yaml").is_file():
            spec = spec_from_yaml(shipped / f"{key}.yaml", datasets_root)
        elif path.is_file():
            spec = spec_from_yaml(path)
        elif path.is_dir():
            from ddsd.data.detect import detect_spec

            return detect_spec(path, **overrides)
        else:
            raise DataError(_unknown_dataset_message(key, path))
    if overrides:
        source = spec._source
        spec = _validate({**spec.model_dump(), **overrides}, f"dataset '{spec.name}' with overrides")
        spec._source = source
    return spec


def _looks_like_path(key: str) -> bool:
    return any(c in key for c in "/\\") or key.startswith((".", "~")) or key.endswith((".yaml", ".yml"))


def _unknown_dataset_message(key: str, path: Path) -> str:
    """Why ``key`` names no dataset: a path that does not exist, or a name (with the closest valid names)."""
    names = ["builtin", *PROCEDURAL_NAMES, *shipped_names()]
    if _looks_like_path(key):
        parent = path.parent
        where = "" if parent.is_dir() else f" (nor does its folder {parent})"
        return (f"dataset path '{key}' does not exist{where}: give a dataset root folder, a YAML description "
                f"or a name ({', '.join(names)})")
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(f'`{c}`' for c in close)}? " if close else ""
    return (f"unknown dataset '{key}': {hint}not a built-in or shipped name ({', '.join(names)}), "
            "an existing YAML file or a dataset folder")


def is_shipped(spec: DatasetSpec) -> bool:
    """Whether ``spec`` was read from the shipped ``configs/data`` folder."""
    shipped = configs_dir()
    return bool(spec.source) and shipped is not None and Path(spec.source).resolve().parent == shipped.resolve()


def require_root(spec: DatasetSpec) -> None:
    """Raise :class:`DataError` when the dataset's root folder is missing (shipped sets: say how to point at it)."""
    if spec.layout == "procedural" or spec.root is None or spec.root.is_dir():
        return
    if is_shipped(spec):
        raise DataError(
            f"shipped dataset '{spec.name}' is not at {spec.root}: put it there, or pass --data-root DIR "
            f"(or set DDSD_DATASETS=DIR) to a folder that holds {spec.name}/ (see configs/data/{spec.name}.yaml)")
    where = f" (from {spec.source})" if spec.source else ""
    raise DataError(f"dataset '{spec.name}': root folder {spec.root} does not exist{where}")
