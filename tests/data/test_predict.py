"""Training and deployment read a file the same way: the same score in test and in predict, 16-bit TIFFs included."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from anomalib.data import PredictDataset as AnomalibPredictDataset
from PIL import Image
from torch.utils.data import DataLoader

from anomalib_bgad.data import FewAnomalyFolder, PredictDataset, ProjectReaderCallback, read_image, use_project_reader


def make_16bit_tree(root: Path, size: int = 64) -> Path:
    """Issue 14's reproduction: 16-bit grayscale TIFFs with values over 0..65535; 6 normal for training, 2 normal and
    2+2 defective for test, with PNG masks."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]

    def image() -> np.ndarray:
        base = (yy + xx) / (2 * size - 2) * 50000 + rng.integers(0, 15000, (size, size))
        return np.clip(base, 0, 65535).astype(np.uint16)

    def save(path: Path, array: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path)

    for i in range(6):
        save(root / "good" / f"{i:03d}.tif", image())
    for i in range(2):
        save(root / "good_test" / f"{i:03d}.tif", image())
    for defect in ("dark", "bright"):
        for i in range(2):
            array, mask = image(), np.zeros((size, size), np.uint8)
            y, x = rng.integers(8, size - 24, 2)
            mask[y : y + 12, x : x + 12] = 255
            array[mask > 0] = 0 if defect == "dark" else 65535
            save(root / defect / f"{i:03d}.tif", array)
            save(root / "mask" / defect / f"{i:03d}.png", mask)
    return root


def test_predict_dataset_reads_like_training_and_anomalib_loaders_are_switched(tmp_path: Path) -> None:
    root = make_16bit_tree(tmp_path / "tree")
    path = root / "good_test" / "000.tif"
    item = PredictDataset(path)[0]
    assert torch.equal(item.image, read_image(path)) and item.image_path == str(path)
    assert 0.2 < float(item.image.mean()) < 0.8  # anomalib's reader clips this file to white
    assert float(AnomalibPredictDataset(path)[0].image.mean()) > 0.99

    loaders = [DataLoader(AnomalibPredictDataset(root / "good_test")), DataLoader(PredictDataset(path))]
    assert use_project_reader(SimpleNamespace(predict_dataloaders=loaders)) == 1
    assert type(loaders[0].dataset) is PredictDataset and len(loaders[0].dataset) == 2
    assert torch.equal(loaders[0].dataset[0].image, read_image(root / "good_test" / "000.tif"))


@pytest.mark.slow
def test_same_file_same_score_in_test_and_predict(
    tmp_path: Path, small_bgad_kwargs: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    from anomalib_bgad import Bgad

    root = make_16bit_tree(tmp_path / "tree")
    datamodule = FewAnomalyFolder(
        name="tiff16", root=root, normal_dir="good", normal_test_dir="good_test", abnormal_dir=["dark", "bright"],
        mask_dir=["mask/dark", "mask/bright"], extensions=[".tif"], n_anomalies=2, pseudo_anomaly_count=2,
        train_batch_size=4, eval_batch_size=4, num_workers=0, seed=0,
    )  # fmt: skip
    seed_everything(0)
    # Raw scores and maps (no min-max normalisation, which clips a normal image's score to 0).
    model = Bgad(phase1_epochs=0, **{**small_bgad_kwargs, "post_processor": False, "evaluator": False})
    args = {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False}
    engine = Engine(default_root_dir=tmp_path / "run", callbacks=[ProjectReaderCallback()], **args)
    engine.fit(model, datamodule=datamodule)

    def scores(predictions) -> dict[str, tuple[float, torch.Tensor]]:
        return {
            Path(path).name + Path(path).parent.name: (float(score), anomaly_map)
            for batch in predictions
            for path, score, anomaly_map in zip(batch.image_path, batch.pred_score, batch.anomaly_map, strict=True)
        }

    through_datamodule = scores(engine.predict(model, datamodule=datamodule))  # the test split, as `anomalib test`
    normal = root / "good_test" / "000.tif"
    key = "000.tifgood_test"
    assert len(through_datamodule) == len(datamodule.test_data) and key in through_datamodule
    by_path = scores(engine.predict(model, data_path=normal))  # anomalib's PredictDataset, switched by the callback
    by_dataset = scores(engine.predict(model, dataset=PredictDataset(normal)))  # the documented entry point
    reference_score, reference_map = through_datamodule[key]
    for score, anomaly_map in (by_path[key], by_dataset[key]):
        assert score == pytest.approx(reference_score, abs=1e-6)
        assert torch.allclose(anomaly_map, reference_map, atol=1e-5)

    # BGAD switches every prediction to the project's reader itself (Bgad.on_predict_start): plain anomalib
    # gives the same score. Without that switch anomalib reads the file as a white frame: another score (the
    # issue's reproduction).
    plain = Engine(default_root_dir=tmp_path / "plain", **args)
    assert scores(plain.predict(model, data_path=normal))[key][0] == pytest.approx(reference_score, abs=1e-6)
    monkeypatch.setattr(Bgad, "on_predict_start", lambda self: None)
    clipped_score, _ = scores(plain.predict(model, data_path=normal))[key]
    assert abs(clipped_score - reference_score) > 1e-2 * max(abs(reference_score), 1.0)
