"""Grayscale, RGBA and 16-bit inputs load correctly, alone and through a few-anomaly datamodule."""

from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data.utils import read_image as anomalib_read_image
from PIL import Image

from anomalib_bgad.data import FewAnomalyMVTecAD
from anomalib_bgad.data.image_io import read_image, read_mask


def gradient16(size: int = 32) -> np.ndarray:
    return (np.linspace(0, 65535, size * size).reshape(size, size)).astype(np.uint16)


def test_16bit_grayscale_is_rescaled_not_clipped(tmp_path: Path) -> None:
    array = gradient16()
    path = tmp_path / "g16.png"
    Image.fromarray(array).save(path)
    assert Image.open(path).mode.startswith("I")
    image = read_image(path)
    expected = torch.from_numpy(array / 65535.0).float()
    assert image.shape == (3, 32, 32)
    assert torch.allclose(image, expected.expand(3, -1, -1), atol=1e-6)
    # anomalib's own reader clips to 255: the image comes out almost white (the reason for the override).
    assert anomalib_read_image(path, as_tensor=True).mean() > 0.95
    assert image.mean() == pytest.approx(0.5, abs=0.01)


def test_8bit_grayscale_and_rgba(tmp_path: Path) -> None:
    gray = np.arange(32 * 32, dtype=np.uint32).reshape(32, 32).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    assert torch.allclose(read_image(tmp_path / "gray.png"), torch.from_numpy(gray / 255.0).float().expand(3, -1, -1))

    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 200, 100, 50, 0  # fully transparent
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    image = read_image(tmp_path / "rgba.png")
    assert image.shape == (3, 8, 8)
    assert torch.allclose(image[:, 0, 0], torch.tensor([200, 100, 50]) / 255.0)


def test_masks_16bit_and_colour(tmp_path: Path) -> None:
    mask16 = np.zeros((8, 8), np.uint16)
    mask16[1:3, 1:3] = 65535
    mask16[5, 5] = 1  # the smallest non-zero 16-bit value is still a defect pixel
    Image.fromarray(mask16).save(tmp_path / "m16.png")
    assert torch.equal(read_mask(tmp_path / "m16.png").bool(), torch.from_numpy(mask16 > 0))

    colour = np.zeros((8, 8, 3), np.uint8)
    colour[2:4, 2:4, 2] = 1  # dark blue: a grayscale conversion rounds it to 0
    Image.fromarray(colour).save(tmp_path / "m_rgb.png")
    assert int(read_mask(tmp_path / "m_rgb.png").sum()) == 4


def test_datamodule_loads_grayscale_rgba_and_16bit_files(trees, tmp_path: Path) -> None:
    root = trees.make_mvtec(tmp_path / "mvtec", defects={"crack": 2, "hole": 2}, n_train=3)
    base = root / "bottle"
    # Training images: 16-bit grayscale, 8-bit grayscale, RGBA. Anomalies: RGBA image + 16-bit mask.
    array16 = gradient16()
    Image.fromarray(array16).save(base / "train" / "good" / "000.png")
    gray8 = (array16 >> 8).astype(np.uint8)
    Image.fromarray(gray8).save(base / "train" / "good" / "001.png")
    rgba = np.concatenate([trees.object_image(np.random.default_rng(0)), np.full((32, 32, 1), 255, np.uint8)], -1)
    Image.fromarray(rgba).save(base / "train" / "good" / "002.png")
    for name in ("crack", "hole"):
        for i in range(2):
            Image.fromarray(rgba).save(base / "test" / name / f"{i:03d}.png")
            mask = np.zeros((32, 32), np.uint16)
            mask[4:9, 4:9] = 65535
            Image.fromarray(mask).save(base / "ground_truth" / name / f"{i:03d}_mask.png")

    datamodule = FewAnomalyMVTecAD(
        root=root, category="bottle", n_anomalies=2, pseudo_anomaly_count=0, repeat_anomalies=1, num_workers=0
    )
    datamodule.setup()
    items = {Path(item.image_path).name + Path(item.image_path).parent.name: item for item in datamodule.train_data}
    assert torch.allclose(items["000.pnggood"].image[0], torch.from_numpy(array16 / 65535.0).float(), atol=1e-6)
    assert torch.allclose(items["001.pnggood"].image, torch.from_numpy(gray8 / 255.0).float().expand(3, -1, -1))
    assert torch.allclose(items["002.pnggood"].image, torch.from_numpy(rgba[..., :3] / 255.0).permute(2, 0, 1).float())
    anomalies = [item for item in datamodule.train_data if item.gt_label]
    assert len(anomalies) == 2
    for item in anomalies:
        assert int(item.gt_mask.sum()) == 25 and item.gt_mask[4:9, 4:9].all()
