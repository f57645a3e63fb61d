"""One reader: every input kind (bit depth, palette, alpha, float) has a defined reading; masks follow one rule."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data.utils import read_image as anomalib_read_image
from PIL import Image

from anomalib_bgad.data import MASK_RULE, FewAnomalyMVTecAD, ImageReadError
from anomalib_bgad.data.image_io import image_size, read_image, read_mask
from anomalib_bgad.data.pseudo_anomalies import FewAnomalyTrainSet


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


# ------------------------------------------------------------------------------------------------------------------
# Every input kind has one defined reading
# ------------------------------------------------------------------------------------------------------------------
RNG = np.random.default_rng(0)
GRAY8 = RNG.integers(0, 256, (6, 7), dtype=np.uint8)
RGB8 = RNG.integers(0, 256, (6, 7, 3), dtype=np.uint8)


def gray3(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(array, dtype=np.float64)).float().expand(3, -1, -1)


def rgb3(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array / 255.0).float().permute(2, 0, 1)


def write_palette(path: Path, transparent: bool) -> tuple[np.ndarray, Path]:
    image = Image.fromarray(RGB8).convert("P", palette=Image.Palette.ADAPTIVE, colors=5)
    expected = np.asarray(image.convert("RGB"))
    if transparent:
        image.info["transparency"] = 0
    image.save(path)
    return expected, path


@pytest.mark.parametrize(
    ("name", "array", "mode", "expected"),
    [
        ("gray8.png", GRAY8, "L", gray3(GRAY8 / 255.0)),
        ("gray16.tif", (GRAY8.astype(np.uint16) * 257), "I;16", gray3(GRAY8.astype(np.float64) * 257 / 65535.0)),
        ("int32.tif", (GRAY8.astype(np.int32) * 200), "I", gray3(GRAY8.astype(np.float64) * 200 / 65535.0)),
        ("float.tif", (GRAY8 / 255.0).astype(np.float32), "F", gray3((GRAY8 / 255.0).astype(np.float32))),
        ("rgb.png", RGB8, "RGB", rgb3(RGB8)),
        ("rgba.png", np.dstack([RGB8, GRAY8]), "RGBA", rgb3(RGB8)),  # colour as stored, alpha dropped
        ("gray_alpha.png", np.dstack([GRAY8, GRAY8[::-1]]), "LA", gray3(GRAY8 / 255.0)),
        ("bilevel.png", GRAY8 > 127, "1", gray3(GRAY8 > 127)),
    ],
)
def test_each_pil_mode_reads_by_its_rule(tmp_path: Path, name: str, array: np.ndarray, mode: str, expected) -> None:
    path = tmp_path / name
    Image.fromarray(array).save(path)
    assert Image.open(path).mode == mode
    image = read_image(path)
    assert image.dtype == torch.float32 and image.shape == (3, 6, 7)
    assert torch.allclose(image, expected, atol=1e-6)


@pytest.mark.parametrize("transparent", [False, True])
def test_palette_images_read_their_palette_colours(tmp_path: Path, transparent: bool) -> None:
    expected, path = write_palette(tmp_path / "palette.png", transparent)
    assert Image.open(path).mode == "P"
    assert torch.allclose(read_image(path), rgb3(expected), atol=1e-6)


def test_colour_16_bit_and_cmyk_are_read_through_pil(tmp_path: Path) -> None:
    import cv2

    rgb16 = (RNG.random((6, 7, 3)) * 65535).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb16[..., ::-1])  # OpenCV writes BGR
    assert torch.allclose(read_image(tmp_path / "rgb16.png"), rgb3(rgb16 >> 8), atol=1e-6)  # PIL keeps the high byte
    Image.fromarray(RGB8).convert("CMYK").save(tmp_path / "cmyk.jpg")
    with Image.open(tmp_path / "cmyk.jpg") as image:
        assert image.mode == "CMYK"
        expected = rgb3(np.asarray(image.convert("RGB")))
    assert torch.allclose(read_image(tmp_path / "cmyk.jpg"), expected, atol=1e-6)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.full((6, 7), 70000, np.int32), r"32-bit integer pixels \(values 70000\.\.70000\) outside 0\.\.65535"),
        (np.full((6, 7), -3, np.int32), r"values -3\.\.-3"),
        (
            np.linspace(0, 4095, 42, dtype=np.float32).reshape(6, 7),
            r"float pixels must lie in \[0, 1\] \(values 0\.\.4095",
        ),
        (np.full((6, 7), np.nan, np.float32), r"no finite value.*Divide by the sensor's full-scale value"),
    ],
)
def test_values_without_a_reading_are_refused_naming_the_file_and_the_fix(
    tmp_path: Path, array: np.ndarray, message: str
) -> None:
    path = tmp_path / "sensor.tif"
    Image.fromarray(array).save(path)
    with pytest.raises(ImageReadError, match=rf"Cannot read image '{path}': .*{message}"):
        read_image(path)
    with pytest.raises(ImageReadError, match=r"Save the image as 16-bit|save as 16-bit integers"):
        image_size(path, decode=True)


def test_float_image_is_refused_at_setup_before_training(trees, tmp_path: Path) -> None:
    root = trees.make_mvtec(tmp_path / "mvtec")
    raw = (np.random.default_rng(1).random((32, 32)) * 4095).astype(np.float32)
    target = root / "bottle" / "train" / "good" / "003.png"
    Image.fromarray(raw).save(target, format="TIFF")  # a float TIFF under MVTec's .png name
    datamodule = FewAnomalyMVTecAD(root=root, n_anomalies=2, num_workers=0)
    with pytest.raises(ImageReadError, match=r"Cannot read image '.*good/003\.png': float pixels must lie in \[0, 1\]"):
        datamodule.setup()


# ------------------------------------------------------------------------------------------------------------------
# Masks: one rule
# ------------------------------------------------------------------------------------------------------------------
def square_mask(size: int = 32) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[8:20, 10:22] = True
    return mask


def test_mask_alpha_decides_where_it_varies(tmp_path: Path) -> None:
    defect = square_mask()
    layer = np.full((32, 32, 4), 255, np.uint8)  # a white paint layer ...
    layer[..., 3] = np.where(defect, 255, 0)  # ... transparent outside the defect
    Image.fromarray(layer).save(tmp_path / "layer.png")
    assert torch.equal(read_mask(tmp_path / "layer.png").bool(), torch.from_numpy(defect))
    opaque = np.dstack([np.where(defect, 255, 0).astype(np.uint8)] * 3 + [np.full((32, 32), 255, np.uint8)])
    Image.fromarray(opaque).save(tmp_path / "opaque.png")  # constant alpha: the colours decide
    assert torch.equal(read_mask(tmp_path / "opaque.png").bool(), torch.from_numpy(defect))


def test_lossy_mask_is_thresholded_at_half_its_range(tmp_path: Path) -> None:
    defect = square_mask()
    Image.fromarray(np.where(defect, 255, 0).astype(np.uint8)).save(tmp_path / "mask.jpg", quality=60)
    noisy = np.asarray(Image.open(tmp_path / "mask.jpg"))
    assert (noisy[~defect] > 0).sum() > 10  # JPEG noise around the defect: "non-zero" would inflate it
    mask = read_mask(tmp_path / "mask.jpg").bool().numpy()
    assert (mask & defect).sum() / (mask | defect).sum() > 0.95


def manifest_rule(datamodule) -> str:
    return datamodule.manifest.mask_rule


def test_empty_known_anomaly_mask_fails_at_setup_naming_the_file(trees, tmp_path: Path) -> None:
    root = trees.make_mvtec(tmp_path / "mvtec")
    for mask in (root / "bottle" / "ground_truth" / "crack").iterdir():
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(mask)
    for pseudo in (0, 4):  # with pseudo_anomaly_count=0 it was trained as a normal image; now refused
        datamodule = FewAnomalyMVTecAD(
            root=root, n_anomalies=9, pseudo_anomaly_count=pseudo, setting="multi_class", num_workers=0
        )
        with pytest.raises(ValueError, match=r"known anomaly mask\(s\) mark no defect pixel: '.*ground_truth/crack/"):
            datamodule.setup()


def test_empty_test_mask_and_implausible_share_are_reported(
    trees, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = trees.make_mvtec(tmp_path / "mvtec")
    crack = root / "bottle" / "ground_truth" / "crack"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(crack / "000_mask.png")
    inverted = 255 - np.asarray(Image.open(crack / "001_mask.png"))
    Image.fromarray(inverted).save(crack / "001_mask.png")
    datamodule = FewAnomalyMVTecAD(
        root=root, n_anomalies=2, setting="one_class", seen_defect_type="hole", pseudo_anomaly_count=0, num_workers=0
    )
    with caplog.at_level("WARNING"):
        datamodule.setup()
    assert re.search(r"Mask '.*crack/000_mask\.png' of anomalous test image .* marks no defect pixel", caplog.text)
    share = 100 * (inverted > 0).mean()
    assert re.search(rf"Mask '.*crack/001_mask\.png' marks {share:.0f}% of its image as defect", caplog.text)
    assert manifest_rule(datamodule) == MASK_RULE


def test_rpag_refuses_an_empty_source_mask_naming_it(trees, tmp_path: Path) -> None:
    root = trees.make_mvtec(tmp_path / "mvtec")
    datamodule = FewAnomalyMVTecAD(root=root, n_anomalies=2, num_workers=0)
    datamodule.setup()
    known = datamodule.train_data.samples.query("label_index == 1")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(known.mask_path.iloc[0])  # emptied after setup
    with pytest.raises(ValueError, match=rf"The mask '{known.mask_path.iloc[0]}' of known anomaly .* marks no defect"):
        FewAnomalyTrainSet(datamodule.train_data, seed=0, num_rpag=3)
    FewAnomalyTrainSet(datamodule.train_data, seed=0, num_smoothblend=3)  # SmoothBlend does not paste it
