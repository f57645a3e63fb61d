"""BGAD's pre-processor: its exported graph resizes like eager inference at any input size; anomalib's does not."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.pre_processing import PreProcessor
from torch.export import Dim

from anomalib_bgad.models.bgad.pre_processor import ExportableResize, configure_pre_processor, exportable_transform

SIZES = [(256, 256), (300, 180), (1024, 1024), (40, 30), (255, 257)]


@pytest.mark.parametrize("size", SIZES)
def test_exportable_resize_equals_torch_antialiased_resize(size: tuple[int, int]) -> None:
    images = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(images, (64, 48), mode="bilinear", antialias=True, align_corners=False)
    assert torch.allclose(ExportableResize((64, 48))(images), expected, atol=1e-6)


def test_forward_applies_the_transform_of_the_loops() -> None:
    pre_processor = configure_pre_processor((64, 64))
    for size in SIZES:
        images = torch.rand(1, 3, *size)
        assert torch.allclose(pre_processor(images), pre_processor.transform(images), atol=1e-5)
    # anomalib's forward (its exported transform) resizes without antialiasing: only the training size agrees.
    stock = PreProcessor(transform=pre_processor.transform)
    images = torch.rand(1, 3, 300, 180)
    assert (stock(images) - stock.transform(images)).abs().max() > 0.05
    assert isinstance(exportable_transform(pre_processor.transform)[0], ExportableResize)


def export(module: torch.nn.Module, path: Path) -> Path:
    example = torch.rand(1, 3, 100, 120)
    height, width = Dim("height", min=16, max=4096), Dim("width", min=16, max=4096)
    torch.onnx.export(
        module, (example,), path, dynamo=True, opset_version=14, input_names=["input"],
        dynamic_shapes={"batch": {2: height, 3: width}},
    )  # fmt: skip
    return path


@pytest.mark.slow
def test_exported_graph_agrees_with_eager_at_any_size_in_onnxruntime_and_openvino(tmp_path: Path) -> None:
    import onnxruntime
    import openvino

    pre_processor = configure_pre_processor((64, 64)).eval()
    stock = PreProcessor(transform=pre_processor.transform).eval()
    ours = export(pre_processor, tmp_path / "ours.onnx")
    theirs = export(stock, tmp_path / "anomalib.onnx")
    core = openvino.Core()
    for size in SIZES:
        images = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(1))
        eager = pre_processor.transform(images).numpy()  # what test/predict feed the model
        for path, tolerance in ((ours, 1e-5), (theirs, None)):
            by_ort = onnxruntime.InferenceSession(str(path)).run(None, {"input": images.numpy()})[0]
            compiled = core.compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            by_openvino = compiled(images.numpy())[0]
            for exported in (by_ort, by_openvino):
                difference = float(np.abs(exported - eager).max())
                if tolerance is not None:
                    assert difference < tolerance, (size, path.name, difference)
                elif size != (64, 64) and min(size) > 64:
                    assert difference > 0.05, (size, difference)  # the documented condition of anomalib's graph
