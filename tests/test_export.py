"""Export: torch eager vs ONNX Runtime vs OpenVINO on the same images, and anomalib's export/predict CLI.

The exported graph is anomalib's: pre-processor (resize + ImageNet normalisation) -> BgadModel
(backbone, flows, scoring) -> post-processor (min-max normalisation and thresholds stored from
validation). Tolerance: ``PARITY_ATOL = 1e-3`` absolute on the normalised ``pred_score`` and
``anomaly_map`` (values in [0, 1]); OpenVINO is compiled with ``INFERENCE_PRECISION_HINT=f32``
(its CPU plugin picks bf16 on CPUs that have it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import seed_everything

from anomalib_bgad import Bgad
from anomalib_bgad.models.bgad.image_score import ImageScore

PARITY_ATOL = 1e-3
F32 = {"INFERENCE_PRECISION_HINT": "f32"}


def perturb_flows(module: Bgad, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.model.flows.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))


def make_images(count: int, height: int = 80, width: int = 96, seed: int = 0) -> torch.Tensor:
    """RGB images in 0..1 at a size that the exported pre-processor has to resize."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.avg_pool2d(torch.rand(count, 3, height + 6, width + 6, generator=generator), 7, 1)
    return base.clamp(0, 1)


def outputs_to_dict(names: list[str], values: list[np.ndarray]) -> dict[str, np.ndarray]:
    return dict(zip(names, values, strict=True))


def export_small_model(root: Path, **init_args: object) -> tuple[Bgad, Path, Path]:
    """A small BGAD with trained-like flows, a boundary and post-processing statistics, exported to ONNX and IR."""
    import openvino as ov

    # Seed FrEIA's soft permutations (numpy's global RNG) here: in the module-scoped fixture conftest's per-test
    # numpy seed runs after this, so the model would otherwise depend on which tests ran before.
    seed_everything(0, verbose=False)
    pre_processor = Bgad.configure_pre_processor(image_size=(64, 64))
    module = Bgad(coupling_blocks=2, pre_processor=pre_processor, visualizer=False, **init_args)
    perturb_flows(module)
    module.model.boundary.b_n.copy_(torch.tensor([-0.3, -0.4, -0.5]))
    module.eval()
    with torch.inference_mode():
        raw = module.model(module.pre_processor(make_images(16, seed=1))).pred_score
    # What a validation pass stores: min/max for normalisation and an (image and pixel) threshold.
    post = module.post_processor
    middle = raw.sort().values[7:9].mean()
    post.image_min.fill_(raw.min() - 0.05)
    post.image_max.fill_(raw.max() + 0.05)
    post._image_threshold.fill_(middle)
    post.pixel_min.fill_(raw.min() - 1.0)
    post.pixel_max.fill_(raw.max() + 0.05)
    post._pixel_threshold.fill_(middle)
    onnx_path = module.to_onnx(root)
    # anomalib's to_openvino is exactly this conversion of the exported ONNX file.
    xml_path = root / "weights" / "openvino" / "model.xml"
    xml_path.parent.mkdir(parents=True)
    ov.save_model(ov.convert_model(onnx_path), xml_path, compress_to_fp16=False)
    return module, onnx_path, xml_path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bgad, Path, Path]:
    """:func:`export_small_model` with the default init args."""
    return export_small_model(tmp_path_factory.mktemp("export"))


def run_eager(module: Bgad, images: torch.Tensor) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        return {key: value.numpy() for key, value in module(images)._asdict().items() if value is not None}


def run_onnxruntime(path: Path, images: torch.Tensor) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return outputs_to_dict(names, session.run(None, {session.get_inputs()[0].name: images.numpy()}))


def run_openvino(path: Path, images: torch.Tensor, config: dict | None = None) -> dict[str, np.ndarray]:
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", config or F32)
    return {key.any_name: value for key, value in compiled(images.numpy()).items()}


def assert_parity(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray], what: str) -> None:
    assert set(actual) == {"pred_score", "pred_label", "anomaly_map", "pred_mask"}, what
    for key in ("pred_score", "anomaly_map"):
        assert actual[key].shape == expected[key].shape, (what, key)
        np.testing.assert_allclose(actual[key], expected[key], atol=PARITY_ATOL, rtol=0, err_msg=f"{what}: {key}")
    # Labels and masks agree wherever the score is not within the tolerance of the (normalised) threshold 0.5.
    for label, value in (("pred_label", "pred_score"), ("pred_mask", "anomaly_map")):
        decided = np.abs(expected[value] - 0.5) > PARITY_ATOL
        assert np.array_equal(actual[label].astype(bool)[decided], expected[label].astype(bool)[decided]), (what, label)


def test_eager_onnxruntime_and_openvino_agree(exported: tuple[Bgad, Path, Path]) -> None:
    module, onnx_path, xml_path = exported
    images = make_images(5, seed=2)
    eager = run_eager(module, images)
    # The post-processing is in the graph: scores are normalised around the stored threshold.
    assert 0.0 < eager["pred_score"].min() < 0.5 < eager["pred_score"].max()
    assert eager["pred_label"].any() and not eager["pred_label"].all()
    assert eager["anomaly_map"].shape == (5, 1, 64, 64)
    assert_parity(run_onnxruntime(onnx_path, images), eager, "onnxruntime")
    assert_parity(run_openvino(xml_path, images), eager, "openvino IR (f32)")
    assert_parity(run_openvino(onnx_path, images), eager, "openvino on the .onnx (f32)")


def test_border_padding_exports_with_the_same_scores(tmp_path: Path) -> None:
    """The reflection padding and the feature crop are in the graph: eager, ONNX Runtime and OpenVINO agree."""
    module, onnx_path, xml_path = export_small_model(tmp_path, border_padding=16)
    images = make_images(3, seed=4)
    eager = run_eager(module, images)
    assert_parity(run_onnxruntime(onnx_path, images), eager, "onnxruntime, border_padding 16")
    assert_parity(run_openvino(xml_path, images), eager, "openvino IR (f32), border_padding 16")


def test_top_share_image_score_exports_with_the_same_scores(tmp_path: Path) -> None:
    """The mean of the map's highest pixels (``TopK``) is in the graph: eager, ONNX Runtime and OpenVINO agree."""
    module, onnx_path, xml_path = export_small_model(tmp_path, image_score_top_share=0.05)
    images = make_images(3, seed=5)
    eager = run_eager(module, images)
    top_share = module.model.image_score
    module.model.image_score = ImageScore()  # the maximum, to show that the exported score is not it
    eager_max = run_eager(module, images)
    module.model.image_score = top_share
    assert np.abs(eager["pred_score"] - eager_max["pred_score"]).max() > 10 * PARITY_ATOL
    assert_parity(run_onnxruntime(onnx_path, images), eager, "onnxruntime, image_score_top_share 0.05")
    assert_parity(run_openvino(xml_path, images), eager, "openvino IR (f32), image_score_top_share 0.05")


def test_exported_graph_has_dynamic_batch_and_no_batch_dependence(exported: tuple[Bgad, Path, Path]) -> None:
    _, onnx_path, xml_path = exported
    images = make_images(6, seed=3)
    garbage = torch.stack([torch.zeros(3, 80, 96), torch.ones(3, 80, 96)])
    for run in (lambda x: run_onnxruntime(onnx_path, x), lambda x: run_openvino(xml_path, x)):
        batch = run(torch.cat([garbage, images]))
        for index, image in enumerate(images.split(1)):
            alone = run(image)
            np.testing.assert_allclose(batch["pred_score"][2 + index], alone["pred_score"][0], atol=1e-5, rtol=0)
            np.testing.assert_allclose(batch["anomaly_map"][2 + index], alone["anomaly_map"][0], atol=1e-5, rtol=0)


def test_openvino_inferencer_runs_the_exported_models(
    exported: tuple[Bgad, Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from anomalib.deploy import OpenVINOInferencer

    monkeypatch.chdir(tmp_path)  # the inferencer writes an ``openvino_cache`` folder into the working directory
    module, onnx_path, xml_path = exported
    image = make_images(1, seed=4)[0]
    eager = run_eager(module, image[None])
    for path in (xml_path, onnx_path):
        prediction = OpenVINOInferencer(path=path, device="CPU", config=F32).predict(image.permute(1, 2, 0).numpy())
        np.testing.assert_allclose(prediction.pred_score.reshape(-1), eager["pred_score"], atol=PARITY_ATOL, rtol=0)
        np.testing.assert_allclose(
            prediction.anomaly_map.reshape(-1),
            eager["anomaly_map"].reshape(-1),
            atol=PARITY_ATOL,
            rtol=0,
        )


@pytest.mark.slow
def test_cli_train_export_openvino_and_onnx_then_predict(
    cli_trained_and_exported,
    tiny_mvtec_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    run_anomalib,
) -> None:
    """``anomalib train/export/predict`` on a 1-epoch checkpoint; the exports score like the checkpoint."""
    from anomalib.data.utils import read_image
    from anomalib.deploy import OpenVINOInferencer
    from anomalib.deploy.export import ExportType

    checkpoint = cli_trained_and_exported.checkpoint
    model = cli_trained_and_exported.model_args
    exports = {ExportType.OPENVINO: cli_trained_and_exported.xml}
    root = tmp_path / "export_onnx"
    run_anomalib(
        "export", "--model", "anomalib_bgad.Bgad", "--ckpt_path", str(checkpoint),
        "--export_type", "onnx", "--export_root", str(root), cwd=tmp_path,
    )  # fmt: skip
    exports[ExportType.ONNX] = root / "weights" / "onnx" / "model.onnx"
    for path in exports.values():
        assert path.is_file()

    images = sorted((tiny_mvtec_root / "brick" / "test").rglob("*.png"))
    predict_root = tmp_path / "predicted"
    run_anomalib(
        "predict", *model, "--ckpt_path", str(checkpoint),
        "--data", str(images[0].parent), "--default_root_dir", str(predict_root), cwd=tmp_path,
    )  # fmt: skip
    assert any(predict_root.rglob("*.png")), "anomalib predict wrote no visualisation"

    module = Bgad.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    # The threshold learned on validation data is stored in the checkpoint ...
    threshold = module.post_processor.image_threshold
    assert torch.isfinite(threshold) and torch.isfinite(module.post_processor.image_max)
    selected = images[:: max(1, len(images) // 6)]
    monkeypatch.chdir(tmp_path)  # OpenVINOInferencer writes ``openvino_cache`` into the working directory
    for path in selected:
        image = read_image(path, as_tensor=True)
        with torch.inference_mode():
            eager = module(image[None])
        for export_path in exports.values():
            prediction = OpenVINOInferencer(path=export_path, device="CPU", config=F32).predict(path)
            # ... and exported: the normalised scores and labels agree with the checkpoint's.
            np.testing.assert_allclose(prediction.pred_score.reshape(-1), eager.pred_score.numpy(), atol=PARITY_ATOL)
            np.testing.assert_allclose(
                prediction.anomaly_map.reshape(-1), eager.anomaly_map.numpy().reshape(-1), atol=PARITY_ATOL
            )
            if abs(float(eager.pred_score) - 0.5) > PARITY_ATOL:
                assert bool(prediction.pred_label.reshape(-1)[0]) == bool(eager.pred_label)
