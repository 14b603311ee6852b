"""ONNX export (opset 17, dynamic batch/H/W) of the students, checked with onnxruntime."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch

from ddsd.models import create_model

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


def _export(model: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.randn(1, 3, 64, 64),),
            buf,
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": axes, "logits": axes},
        )
    return buf.getvalue()


@pytest.mark.parametrize("name", ["simple", "unet_small"])
def test_onnx_dynamic_axes(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, 11).eval()
    session = ort.InferenceSession(_export(model), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 37, 53), (2, 3, 64, 96)]:
        x = torch.randn(*shape)
        (out,) = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            ref = model(x).numpy()
        assert out.shape == (shape[0], 11, shape[2], shape[3])
        np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-4)
