"""FewAnomalyFolder pairs masks by stem in any mask format, whatever ``extensions`` says about the images."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalib_bgad.data import FewAnomalyFolder
from anomalib_bgad.data.datamodules.validation import MASK_EXTENSIONS

FAST = {"num_workers": 0, "pseudo_anomaly_count": 0, "repeat_anomalies": 1}


def convert_images(root: Path, suffix: str, folders: tuple[str, ...] = ("good", "good_test", "crack", "hole")) -> None:
    """Re-save the tree's images (not its masks) in another format."""
    for folder in folders:
        for path in sorted((root / folder).glob("*.png")):
            Image.open(path).convert("RGB").save(path.with_suffix(suffix), quality=95)
            path.unlink()


@pytest.mark.parametrize(("suffix", "extensions"), [(".jpg", [".jpg"]), (".tif", [".tif"]), (".JPG", [".jpg", ".JPG"])])
def test_images_of_one_format_with_png_masks(folder_root: Path, trees, suffix: str, extensions: list[str]) -> None:
    convert_images(folder_root, suffix)
    datamodule = FewAnomalyFolder(**trees.folder_args(folder_root), extensions=extensions, n_anomalies=3, **FAST)
    datamodule.setup()
    rows = datamodule.train_data.samples.query("label_index == 1")
    assert len(rows) == 3
    for image, mask in zip(rows.image_path, rows.mask_path, strict=True):
        assert Path(image).suffix == suffix and Path(mask).suffix == ".png" and Path(mask).stem == Path(image).stem


def test_masks_in_other_formats_and_with_the_mask_suffix(folder_root: Path, trees) -> None:
    crack = folder_root / "mask" / "crack"
    Image.open(crack / "000.png").save(crack / "000_mask.bmp")
    (crack / "000.png").unlink()
    Image.open(crack / "001.png").save(crack / "001.TIFF")
    (crack / "001.png").unlink()
    datamodule = FewAnomalyFolder(**trees.folder_args(folder_root), n_anomalies=6, **FAST)
    datamodule.setup()
    masks = {Path(mask).name for mask in datamodule.train_data.samples.query("label_index == 1").mask_path}
    masks |= {Path(mask).name for mask in datamodule.test_data.samples.query("label_index == 1").mask_path}
    assert {"000_mask.bmp", "001.TIFF"} <= masks


def test_missing_mask_lists_every_place_name_and_extension_tried(folder_root: Path, trees) -> None:
    convert_images(folder_root, ".jpg")
    (folder_root / "mask" / "hole" / "002.png").unlink()
    datamodule = FewAnomalyFolder(**trees.folder_args(folder_root), extensions=[".jpg"], n_anomalies=2, **FAST)
    with pytest.raises(FileNotFoundError) as error:
        datamodule.setup()
    message = str(error.value)
    assert f"Mask missing for anomalous image '{(folder_root / 'hole' / '002.jpg').resolve()}'" in message
    assert f"'{(folder_root / 'mask' / 'hole').resolve()}'" in message  # the same relative place ...
    assert f"'{(folder_root / 'mask' / 'hole' / 'hole').resolve()}'" in message  # ... or under the defect's name
    assert "for '002' or '002_mask'" in message
    assert all(extension in message for extension in MASK_EXTENSIONS)
    assert "the images' extensions do not apply to masks" in message


def test_two_masks_for_one_image_are_refused(folder_root: Path, trees) -> None:
    crack = folder_root / "mask" / "crack"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(crack / "001_mask.jpg")
    datamodule = FewAnomalyFolder(**trees.folder_args(folder_root), n_anomalies=2, **FAST)
    with pytest.raises(ValueError, match=r"crack/001\.png' has 2 masks \('.*001\.png', '.*001_mask\.jpg'\): keep one"):
        datamodule.setup()
