"""Model export (``ddsd.export``): ONNX/TorchScript round trips from a checkpoint, the CLI and failure paths."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

import ddsd.export as ex
from ddsd.export import (
    ExportCheckError,
    ExportError,
    export_checkpoint,
    export_command,
    export_model,
    load_student,
    parse_size,
    verify_export,
)
from ddsd.models import create_model

SIZE = (32, 48)


def _write_checkpoint(path: Path, name: str = "simple", num_classes: int = 2, size=SIZE) -> torch.nn.Module:
    """Save a training-style checkpoint of a fresh ``name`` model (BN statistics perturbed) to ``path``."""
    torch.manual_seed(0)
    model = create_model(name, num_classes)
    for m in model.modules():  # non-trivial running statistics, so eval-mode BN matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    data = {"size": list(size) if size is not None else None}
    torch.save(
        {
            "model": model.state_dict(),
            "config": {"model": {"name": name, "num_classes": num_classes}, "data": data},
            "epoch": 3,
        },
        path,
    )
    return model.eval()


def _run_artefact(path: Path, fmt: str, x: torch.Tensor) -> torch.Tensor:
    """``x [B, 3, H, W]`` -> logits ``[B, K, H, W]`` from the exported file, loaded independently of ddsd."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(["logits"], {"image": x.numpy()})[0])
    with torch.no_grad():
        return torch.jit.load(str(path))(x)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize(("name", "fmt"), [("simple", "onnx"), ("simple", "torchscript"), ("unet_small", "onnx")])
def test_round_trip_dynamic(tmp_path: Path, name: str, fmt: str) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnx")
    ckpt = tmp_path / "ckpt.pt"
    model = _write_checkpoint(ckpt, name, num_classes=3)
    out = tmp_path / "exports" / f"student.{fmt}"

    check = export_checkpoint(ckpt, fmt, out, dynamic=True)  # size from config["data"]["size"]

    assert check.path == out and out.is_file() and check.file_size == out.stat().st_size
    assert check.size == SIZE and check.dynamic
    assert check.shapes == ((1, 3, 32, 48), (2, 3, 40, 64))
    assert check.max_abs_diff <= 1e-3 and check.argmax_agreement >= 0.999
    assert _leftovers(out.parent) == []
    # an independent run at a third batch / odd spatial size exercises the dynamic axes
    x = torch.randn(3, 3, 37, 53)
    with torch.no_grad():
        ref = model(x)
    got = _run_artefact(out, fmt, x)
    assert got.shape == (3, 3, 37, 53)
    torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-4)


def test_onnx_graph_names_and_axes(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    model = create_model("simple", 2).eval()
    dims = {}
    for dynamic in (True, False):
        path = export_model(model, "onnx", tmp_path / f"m{dynamic}.onnx", size=SIZE, dynamic=dynamic)
        graph = onnx.load(str(path)).graph
        assert [i.name for i in graph.input] == ["image"] and [o.name for o in graph.output] == ["logits"]
        dims[dynamic] = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims[True] == ["batch", 3, "height", "width"]
    assert dims[False] == [1, 3, 32, 48]


def test_default_size_and_restores_train_mode(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt.pt"
    _write_checkpoint(ckpt, size=None)
    check = export_checkpoint(ckpt, "torchscript", tmp_path / "m.pt")
    assert check.size == (360, 480) and check.shapes == ((1, 3, 360, 480),)

    model = create_model("simple", 2).train()
    export_model(model, "torchscript", tmp_path / "m2.pt", size=SIZE)
    assert all(m.training for m in model.modules())


def test_load_student(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt.pt"
    ref = _write_checkpoint(ckpt, "unet_small", num_classes=4)
    model, config = load_student(ckpt)
    assert not model.training and config["model"]["name"] == "unet_small"
    x = torch.randn(1, 3, 16, 24)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))


def test_load_student_strips_prefixes(tmp_path: Path) -> None:
    model = create_model("simple", 2)
    sd = {f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}
    torch.save({"model": sd, "config": {"model": {"name": "simple", "num_classes": 2}}}, tmp_path / "c.pt")
    loaded, _ = load_student(tmp_path / "c.pt")
    assert set(loaded.state_dict()) == set(model.state_dict())


def test_missing_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        export_checkpoint(path, "torchscript", tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize(
    ("payload", "key"),
    [
        ({"config": {"model": {"name": "simple", "num_classes": 2}}}, "'model'"),
        ({"model": {}, "config": {"model": {"num_classes": 2}}}, "config['model']['name']"),
        ({"model": {}, "config": {}}, "config['model']"),
        ({"model": {}, "config": {"model": {"name": "simple", "num_classes": None}}}, "num_classes"),
        ({"model": {}, "config": {"model": {"name": "resnet_huge", "num_classes": 2}}}, "unknown model"),
        ([1, 2], "not a dict"),
    ],
)
def test_bad_checkpoint(tmp_path: Path, payload, key: str) -> None:
    path = tmp_path / "bad.pt"
    torch.save(payload, path)
    with pytest.raises(ValueError) as info:
        load_student(path)
    assert str(path) in str(info.value) and key in str(info.value)


def test_wrong_weights(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    sd = create_model("simple", 3).state_dict()
    torch.save({"model": sd, "config": {"model": {"name": "simple", "num_classes": 2}}}, path)
    with pytest.raises(ValueError, match="do not match"):
        load_student(path)


def test_failed_check_leaves_no_file(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt.pt"
    _write_checkpoint(ckpt)
    out = tmp_path / "m.pt"
    with pytest.raises(ExportCheckError, match="max abs logit difference"):
        export_checkpoint(ckpt, "torchscript", out, atol=-1.0)
    assert not out.exists() and _leftovers(tmp_path) == []
    # a previous good export at `out` is not clobbered by a failed one
    out.write_bytes(b"previous export")
    with pytest.raises(ExportCheckError):
        export_checkpoint(ckpt, "torchscript", out, atol=-1.0)
    assert out.read_bytes() == b"previous export" and _leftovers(tmp_path) == []


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_mismatching_artefact_is_deleted(tmp_path: Path, fmt: str) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnx")
    torch.manual_seed(0)
    exported = create_model("simple", 2).eval()
    other = create_model("simple", 2).eval()  # different random weights
    path = export_model(exported, fmt, tmp_path / "m.bin", size=SIZE, dynamic=True)
    assert verify_export(exported, path, fmt, size=SIZE, dynamic=True).max_abs_diff <= 1e-3
    with pytest.raises(ExportCheckError):
        verify_export(other, path, fmt, size=SIZE, dynamic=True)
    assert not path.exists()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_tampered_file_is_deleted(tmp_path: Path, fmt: str) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    path = tmp_path / "m.bin"
    path.write_bytes(b"definitely not a model")
    with pytest.raises(ExportCheckError, match="cannot load"):
        verify_export(create_model("simple", 2), path, fmt, size=SIZE)
    assert not path.exists()


class _Broken(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_failed_export_writes_nothing(tmp_path: Path, fmt: str) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
    out = tmp_path / "m.bin"
    with pytest.raises(ExportError, match="boom"):
        export_model(_Broken(), fmt, out, size=SIZE)
    assert list(tmp_path.iterdir()) == []


class _ShapeSpecialised(torch.nn.Module):
    """``[B, 3, H, W] -> [B, 2, H, W]``; ``int(...)`` on the input size makes a trace shape-specialised."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (int(x.shape[2]), int(x.shape[3]))
        return torch.nn.functional.interpolate(self.conv(x), size=size, mode="bilinear", align_corners=False)


def test_torchscript_falls_back_to_script_for_dynamic(tmp_path: Path) -> None:
    model = _ShapeSpecialised().eval()
    path = export_model(model, "torchscript", tmp_path / "m.pt", size=SIZE, dynamic=True)
    check = verify_export(model, path, "torchscript", size=SIZE, dynamic=True)
    assert check.max_abs_diff <= 1e-5 and check.shapes[1] == (2, 3, 40, 64)
    # without --dynamic the (cheaper, specialised) trace is kept: it fails at another size
    path = export_model(model, "torchscript", tmp_path / "fixed.pt", size=SIZE, dynamic=False)
    verify_export(model, path, "torchscript", size=SIZE)
    with pytest.raises(ExportCheckError):
        verify_export(model, path, "torchscript", size=SIZE, dynamic=True)
    assert not path.exists()


def test_missing_onnx_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(ImportError, match=r"ddsd\[export\]"):
        export_model(create_model("simple", 2), "onnx", tmp_path / "m.onnx", size=SIZE)
    assert list(tmp_path.iterdir()) == []


def test_bad_format_and_size_api(tmp_path: Path) -> None:
    model = create_model("simple", 2)
    with pytest.raises(ValueError, match="unknown export format"):
        export_model(model, "tflite", tmp_path / "m", size=SIZE)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="size"):
        export_model(model, "torchscript", tmp_path / "m", size=(0, 4))


def test_parse_size() -> None:
    assert parse_size("360x480") == (360, 480)
    assert parse_size(" 64X96 ") == (64, 96)
    assert parse_size(None) is None
    assert parse_size("360") == (360, 360)  # the same rules as every other --size
    for bad in ["axb", "0x5", "3x4x5", "-2x4", ""]:
        with pytest.raises(typer.BadParameter, match="HxW"):
            parse_size(bad)


# ------------------------------------------------------------------------------------------------- CLI


def _app() -> typer.Typer:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @app.callback()
    def _root() -> None:
        """test app"""

    app.command("export")(export_command)
    return app


def _invoke(*args: str):
    return CliRunner().invoke(_app(), ["export", *args], env={"COLUMNS": "300"})


def test_cli_success(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt.pt"
    _write_checkpoint(ckpt)
    out = tmp_path / "m.pt"
    result = _invoke(
        "--checkpoint", str(ckpt), "--format", "torchscript", "--out", str(out), "--size", "24x40", "--dynamic"
    )
    assert result.exit_code == 0, result.output
    assert out.is_file()
    for text in ["max abs logit difference", "argmax agreement", "file size", "24x40", "1x3x24x40", "2x3x32x56"]:
        assert text in result.output


def test_cli_onnx_default_format(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    ckpt = tmp_path / "ckpt.pt"
    _write_checkpoint(ckpt)
    out = tmp_path / "m.onnx"
    result = _invoke("--checkpoint", str(ckpt), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert out.is_file() and "onnx" in result.output and "32x48" in result.output


def test_cli_failed_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ex, "DEFAULT_ATOL", -1.0)
    ckpt = tmp_path / "ckpt.pt"
    _write_checkpoint(ckpt)
    out = tmp_path / "m.pt"
    result = _invoke("--checkpoint", str(ckpt), "--format", "torchscript", "--out", str(out))
    assert result.exit_code == 1
    assert "export failed" in result.output and "max abs logit difference" in result.output
    assert not out.exists() and _leftovers(tmp_path) == []


def test_cli_missing_checkpoint(tmp_path: Path) -> None:
    result = _invoke("--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "m.onnx"))
    assert result.exit_code == 1
    assert "checkpoint not found" in result.output and "nope.pt" in result.output


@pytest.mark.parametrize(("args", "needle"), [(["--size", "big"], "HxW"), (["--format", "tflite"], "torchscript")])
def test_cli_bad_options(tmp_path: Path, args: list[str], needle: str) -> None:
    ckpt = tmp_path / "ckpt.pt"
    _write_checkpoint(ckpt)
    result = _invoke("--checkpoint", str(ckpt), "--out", str(tmp_path / "m.onnx"), *args)
    assert result.exit_code == 2
    assert needle in result.output
    assert not (tmp_path / "m.onnx").exists()
