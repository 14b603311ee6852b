"""Tests for ddsd.models: students, teacher, registry, profiling and the `models` command."""

from __future__ import annotations

import io

import pytest
import torch
import typer
from torch import nn

from ddsd.models import (
    FrozenTeacher,
    SimpleStudent,
    UNet,
    count_macs,
    count_parameters,
    cpu_latency_ms,
    create_model,
    list_models,
    load_teacher,
    profile_models,
    register_model,
    render_models_table,
)
from ddsd.models.cli import models_command, parse_size

STUDENTS = ("simple", "unet_small")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# --------------------------------------------------------------------------- shapes and sizes


@pytest.mark.parametrize("name", [*STUDENTS, "unet_teacher"])
@pytest.mark.parametrize("num_classes", [2, 11])
@pytest.mark.parametrize("hw", [(32, 32), (37, 53), (64, 48), (9, 17)])
def test_output_shape(name: str, num_classes: int, hw: tuple[int, int]) -> None:
    model = create_model(name, num_classes).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *hw))
    assert out.shape == (2, num_classes, *hw)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", STUDENTS)
@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (5, 7)])
def test_tiny_inputs_eval(name: str, hw: tuple[int, int]) -> None:
    model = create_model(name, 3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *hw)).shape == (1, 3, *hw)


@pytest.mark.parametrize("name", STUDENTS)
def test_train_mode_odd_size(name: str) -> None:
    model = create_model(name, 2).train()
    assert model(torch.randn(2, 3, 37, 53)).shape == (2, 2, 37, 53)


def test_parameter_counts() -> None:
    simple = count_parameters(create_model("simple", 2))
    small = count_parameters(create_model("unet_small", 2))
    teacher = count_parameters(create_model("unet_teacher", 2))
    assert 10_000 <= simple < 100_000
    assert 100_000 <= small < 1_000_000
    assert 1_000_000 <= teacher
    assert simple < small < teacher


def test_custom_construction() -> None:
    s = SimpleStudent(4, in_channels=1, widths=(8, 16, 16, 16), context=False, skip=False)
    assert s(torch.randn(2, 1, 20, 30)).shape == (2, 4, 20, 30)
    u = UNet(5, in_channels=1, base=8, depth=3)
    assert u(torch.randn(2, 1, 21, 19)).shape == (2, 5, 21, 19)
    with pytest.raises(ValueError, match="widths"):
        SimpleStudent(2, widths=(8, 16))
    with pytest.raises(ValueError, match="depth"):
        UNet(2, depth=1)


def test_weight_init() -> None:
    model = create_model("simple", 2)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    conv = model.stage3[0]
    assert isinstance(conv, nn.Conv2d)
    expected_std = (2.0 / (conv.out_channels * 9)) ** 0.5  # kaiming fan_out, relu
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.2)


@pytest.mark.parametrize("name", STUDENTS)
def test_gradients_flow(name: str) -> None:
    model = create_model(name, 3).train()
    x = torch.randn(2, 3, 33, 41)
    target = torch.randint(0, 3, (2, 33, 41))
    loss = nn.functional.cross_entropy(model(x), target)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", STUDENTS)
def test_torchscript(name: str) -> None:
    model = create_model(name, 2).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(1, 3, 29, 35)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))


# --------------------------------------------------------------------------- registry


def test_registry_lists_builtins() -> None:
    names = list_models()
    assert {"simple", "unet_small", "unet_teacher"} <= set(names)
    assert names == sorted(names)


def test_registry_unknown_name_lists_valid() -> None:
    with pytest.raises(ValueError, match="unknown model 'nope'") as exc:
        create_model("nope", 2)
    for name in ("simple", "unet_small", "unet_teacher"):
        assert name in str(exc.value)


def test_registry_bad_num_classes() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        create_model("simple", 0)


def test_register_custom_model_and_duplicate() -> None:
    @register_model("test_models_tiny")
    def tiny(num_classes: int, **kwargs: object) -> nn.Module:
        return nn.Conv2d(3, num_classes, 1)

    assert "test_models_tiny" in list_models()
    assert create_model("Test-Models-Tiny", 4)(torch.randn(1, 3, 5, 5)).shape == (1, 4, 5, 5)
    register_model("test_models_tiny")(tiny)  # same factory again is fine
    with pytest.raises(ValueError, match="already registered"):
        register_model("test_models_tiny")(lambda k: nn.Identity())


def test_create_model_kwargs() -> None:
    model = create_model("unet_small", 2, base=8, depth=3)
    assert isinstance(model, UNet)
    assert count_parameters(model) < count_parameters(create_model("unet_small", 2))


# --------------------------------------------------------------------------- frozen teacher


def _teacher() -> FrozenTeacher:
    return FrozenTeacher(create_model("unet_small", 3, base=4, depth=3))


def test_teacher_frozen_and_eval() -> None:
    teacher = _teacher()
    assert all(not p.requires_grad for p in teacher.parameters())
    assert count_parameters(teacher, trainable_only=True) == 0
    teacher.train()
    assert not teacher.training and not teacher.net.training
    assert all(not m.training for m in teacher.modules())
    parent = nn.ModuleDict({"student": create_model("simple", 3), "teacher": teacher})
    parent.train()
    assert parent["student"].training
    assert all(not m.training for m in teacher.modules())


def test_teacher_eval_uses_running_stats() -> None:
    teacher = _teacher()
    teacher.train()
    x = torch.randn(2, 3, 16, 16)
    a, b = teacher(x), teacher(x[:1])
    torch.testing.assert_close(a[:1], b)  # batch-independent => BN in eval mode
    bn = next(m for m in teacher.modules() if isinstance(m, nn.BatchNorm2d))
    assert int(bn.num_batches_tracked) == 0


def test_teacher_no_grad_but_usable_as_constant() -> None:
    teacher = _teacher()
    student = create_model("simple", 3).train()
    x = torch.randn(2, 3, 24, 24, requires_grad=True)
    t = teacher(x)
    assert not t.requires_grad and t.grad_fn is None
    assert not t.is_inference()
    s = student(x)
    loss = nn.functional.kl_div(s.log_softmax(1), t.softmax(1), reduction="batchmean")
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())


def test_teacher_resize() -> None:
    teacher = _teacher()
    x = torch.randn(1, 3, 16, 20)
    assert teacher(x).shape == (1, 3, 16, 20)
    assert teacher(x, size=(16, 20)).shape == (1, 3, 16, 20)
    assert teacher(x, size=(31, 9)).shape == (1, 3, 31, 9)
    assert teacher(x, size=torch.Size([8, 10])).shape == (1, 3, 8, 10)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_teacher_reduced_precision_and_channels_last(dtype) -> None:
    net = create_model("unet_small", 3, base=4, depth=3).eval()
    x = torch.randn(2, 3, 19, 23)
    with torch.no_grad():
        ref = net(x)
    cl = FrozenTeacher(net, channels_last=True)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in cl.parameters() if p.dim() == 4)
    torch.testing.assert_close(cl(x), ref, rtol=1e-4, atol=1e-5)  # layout: float rounding only
    low = FrozenTeacher(net, autocast_dtype=dtype)
    out = low(x, size=(10, 12))
    assert out.dtype == torch.float32 and out.shape == (2, 3, 10, 12)
    full = FrozenTeacher(net)(x, size=(10, 12))
    assert (out - full).abs().max() < 0.1 * full.abs().max()  # close to float32, but
    assert not torch.equal(out, full)  # really computed at the lower precision
    with pytest.raises(ValueError, match="autocast_dtype"):
        FrozenTeacher(net, autocast_dtype=torch.float64)


def _checkpoint(model: nn.Module, name: str, num_classes: int, **model_cfg: object) -> dict:
    return {
        "model": model.state_dict(),
        "config": {"model": {"name": name, "num_classes": num_classes, **model_cfg}},
        "epoch": 3,
    }


def test_load_teacher_round_trip(tmp_path) -> None:
    net = create_model("unet_small", 3, base=4, depth=3)
    with torch.no_grad():  # make BN running stats non-trivial
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    net.eval()
    path = tmp_path / "teacher.pt"
    torch.save(_checkpoint(net, "unet_small", 3, kwargs={"base": 4, "depth": 3}), path)
    teacher = load_teacher(path)
    assert isinstance(teacher, FrozenTeacher)
    x = torch.randn(2, 3, 19, 23)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), net(x))
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())


def test_load_teacher_strips_ddp_prefix(tmp_path) -> None:
    net = create_model("simple", 2).eval()
    ckpt = _checkpoint(net, "simple", 2)
    ckpt["model"] = {f"module.{k}": v for k, v in ckpt["model"].items()}
    path = tmp_path / "ddp.pt"
    torch.save(ckpt, path)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(load_teacher(str(path))(x), net(x))


@pytest.mark.parametrize(
    ("mutate", "missing"),
    [
        (lambda c: c.pop("model"), "'model'"),
        (lambda c: c.pop("config"), "'config'"),
        (lambda c: c["config"].pop("model"), "config['model']"),
        (lambda c: c["config"]["model"].pop("name"), "config['model']['name']"),
        (lambda c: c["config"]["model"].pop("num_classes"), "config['model']['num_classes']"),
    ],
)
def test_load_teacher_missing_key(tmp_path, mutate, missing: str) -> None:
    ckpt = _checkpoint(create_model("simple", 2), "simple", 2)
    mutate(ckpt)
    path = tmp_path / "bad.pt"
    torch.save(ckpt, path)
    with pytest.raises(ValueError) as exc:
        load_teacher(path)
    assert missing in str(exc.value)
    assert str(path) in str(exc.value)


def test_load_teacher_wrong_weights(tmp_path) -> None:
    ckpt = _checkpoint(create_model("simple", 2), "unet_small", 2)
    path = tmp_path / "mismatch.pt"
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match=r"mismatch\.pt: weights do not match model 'unet_small'"):
        load_teacher(path)


def test_load_teacher_file_not_found(tmp_path) -> None:
    path = tmp_path / "missing.pt"
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        load_teacher(path)


# --------------------------------------------------------------------------- profiling


def test_count_macs_single_conv() -> None:
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1, bias=True)
    # out elements * (C_in * k * k) multiply-adds; bias not counted
    assert count_macs(conv, size=(16, 20)) == 8 * 16 * 20 * 3 * 3 * 3
    strided = nn.Conv2d(4, 6, kernel_size=3, stride=2, padding=1, bias=False)
    assert count_macs(strided, size=(9, 9), in_channels=4) == 6 * 5 * 5 * 4 * 9


def test_count_macs_restores_mode_and_scales() -> None:
    model = create_model("simple", 2).train()
    small = count_macs(model, (64, 64))
    assert model.training
    assert small > 0
    assert count_macs(model, (128, 128)) == pytest.approx(4 * small, rel=0.05)


def test_cpu_latency() -> None:
    model = create_model("simple", 2).train()
    threads = torch.get_num_threads()
    ms = cpu_latency_ms(model, size=(32, 32), warmup=1, iters=3, threads=1)
    assert ms > 0
    assert model.training
    assert torch.get_num_threads() == threads


def test_profile_models_and_table() -> None:
    rows = profile_models(["simple", "unet_small"], num_classes=2, size=(32, 48), latency=False)
    assert [r["name"] for r in rows] == ["simple", "unet_small"]
    for r in rows:
        assert set(r) == {"name", "source", "params", "macs", "gmacs", "latency_ms"}
        assert r["source"] == "built-in"
        assert r["latency_ms"] is None
        assert r["gmacs"] == pytest.approx(r["macs"] / 1e9)
    rows += profile_models(["simple"], size=(16, 16), latency=True, warmup=0, iters=1)
    assert rows[-1]["latency_ms"] > 0
    from rich.console import Console

    console = Console(file=io.StringIO(), width=120)
    console.print(render_models_table(rows, title="t"))
    text = console.file.getvalue()
    assert "unet_small" in text and "GMACs" in text and "-" in text


def test_profile_models_defaults_cover_builtins() -> None:
    rows = profile_models(size=(16, 16), latency=False)
    assert [r["name"] for r in rows][:3] == ["simple", "unet_small", "unet_teacher"]


# --------------------------------------------------------------------------- CLI helpers


@pytest.mark.parametrize(
    ("text", "hw"), [("360x480", (360, 480)), (" 64X32 ", (64, 32)), ("128", (128, 128))]
)
def test_parse_size(text: str, hw: tuple[int, int]) -> None:
    assert parse_size(text) == hw


@pytest.mark.parametrize("text", ["abc", "360x", "0x10", "3.5x4", "-1x5", ""])
def test_parse_size_errors(text: str) -> None:
    with pytest.raises(typer.BadParameter) as exc:
        parse_size(text)
    assert repr(text) in str(exc.value)


def test_models_command_prints_table(capsys) -> None:
    models_command(size="16x24", num_classes=3, latency=False)
    out = capsys.readouterr().out
    for name in ("simple", "unet_small", "unet_teacher"):
        assert name in out
    assert "16x24" in out


def test_models_command_via_typer() -> None:
    from typer.testing import CliRunner

    app = typer.Typer()
    app.command("models")(models_command)
    app.command("noop")(lambda: None)
    runner = CliRunner()
    result = runner.invoke(app, ["models", "--size", "16x16", "--no-latency", "--num-classes", "2"])
    assert result.exit_code == 0, result.output
    assert "unet_teacher" in result.output
    bad = runner.invoke(app, ["models", "--size", "huge"])
    assert bad.exit_code != 0
    assert "huge" in bad.output


# --------------------------------------------------------------------------- output conventions and weights


def test_to_logits_conventions() -> None:
    from types import SimpleNamespace

    from ddsd.models.outputs import aux_logits, aux_loss, to_logits

    z = torch.randn(2, 3, 4, 6)
    for out in (z, {"out": z, "aux": z * 2}, SimpleNamespace(logits=z), (z, None), {"logits": z}):
        assert to_logits(out) is z
    up = to_logits({"out": z}, (8, 12))
    assert up.shape == (2, 3, 8, 12)
    assert torch.allclose(up, torch.nn.functional.interpolate(z, size=(8, 12), mode="bilinear", align_corners=False))
    with pytest.raises(TypeError, match="'out'"):
        to_logits({"seg": z})
    with pytest.raises(ValueError, match=r"\[B, K, H, W\]"):
        to_logits(torch.randn(2, 3, 4))
    assert [a.shape for a in aux_logits({"out": z, "aux": z, "meta": 1}, (8, 12))] == [(2, 3, 8, 12)]
    y = torch.randint(0, 3, (2, 8, 12))
    y[0, 0, 0] = 255
    assert aux_loss({"out": z}, y, 0.4) is None and aux_loss({"out": z, "aux": z}, y, 0.0) is None
    expected = 0.4 * torch.nn.functional.cross_entropy(to_logits(z, (8, 12)), y, ignore_index=255)
    assert torch.allclose(aux_loss({"out": z, "aux": z}, y, 0.4), expected)


def test_weights_new_head_channels_and_mismatch(tmp_path) -> None:
    from ddsd.models import WeightsError, build_model

    src = create_model("simple", 5, in_channels=1)
    torch.save({"model": src.state_dict(), "config": {}}, tmp_path / "ckpt.pt")  # a ddsd-style checkpoint
    logs: list[str] = []
    model, _ = build_model("simple", 2, weights=tmp_path / "ckpt.pt", log=logs.append)
    text = "\n".join(logs)
    assert "new head for 2 classes" in text and "1 -> 3 input channels" in text
    first = next(k for k, v in src.state_dict().items() if v.dim() == 4)
    assert torch.allclose(model.state_dict()[first], src.state_dict()[first].repeat(1, 3, 1, 1) / 3)
    with pytest.raises(WeightsError, match="another class count"):
        build_model("simple", 2, weights=tmp_path / "ckpt.pt", allow_new_head=False)
    with pytest.raises(WeightsError, match="none of its"):
        build_model("unet_small", 5, weights=tmp_path / "ckpt.pt")
    with pytest.raises(WeightsError, match="has shape"):
        build_model("simple", 5, {"widths": (8, 16, 16, 16)}, weights=tmp_path / "ckpt.pt")
    with pytest.raises(WeightsError, match="not found"):
        build_model("simple", 5, weights=tmp_path / "nope.pt")
    grey, kw = build_model("simple", 5, in_channels=1)
    assert kw == {} and grey.eval()(torch.randn(1, 1, 8, 8)).shape == (1, 5, 8, 8)
