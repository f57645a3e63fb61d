"""Bad input fails fast, before training, with a message naming the path/argument and the fix; nothing is written."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalib_bgad.data import FewAnomalyBTAD, FewAnomalyFolder, FewAnomalyMVTecAD

FAST = {"num_workers": 0, "pseudo_anomaly_count": 0, "repeat_anomalies": 1}


def mvtec(root: Path, **kwargs) -> FewAnomalyMVTecAD:
    return FewAnomalyMVTecAD(root=root, category=kwargs.pop("category", "bottle"), **{**FAST, **kwargs})


def setup_error(datamodule, error: type[Exception], match: str) -> str:
    with pytest.raises(error, match=match) as info:
        datamodule.setup()
    return str(info.value)


@pytest.mark.parametrize("cls", [FewAnomalyMVTecAD, FewAnomalyBTAD])
def test_missing_root_fails_at_init_and_creates_nothing(cls, tmp_path: Path) -> None:
    root = tmp_path / "datasets" / "missing"
    with pytest.raises(
        FileNotFoundError, match=r"Dataset root '.*missing' does not exist.*--data\.root.*never downloads"
    ):
        cls(root=root, **FAST)
    assert not root.exists() and not root.parent.exists()


def test_root_removed_after_init_prepare_data_does_not_download_or_create(mvtec_root: Path) -> None:
    datamodule = mvtec(mvtec_root)
    shutil.rmtree(mvtec_root)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        datamodule.prepare_data()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        datamodule.setup()
    assert not mvtec_root.exists()


def test_missing_folder_root_and_dirs(folder_root: Path, trees, tmp_path: Path) -> None:
    args = trees.folder_args(folder_root)
    with pytest.raises(FileNotFoundError, match=r"Dataset root '.*nowhere' does not exist"):
        FewAnomalyFolder(**{**args, "root": tmp_path / "nowhere"}, **FAST)
    with pytest.raises(FileNotFoundError, match=r"abnormal_dir '.*dent' of tiny does not exist.*--data\.abnormal_dir"):
        FewAnomalyFolder(**{**args, "abnormal_dir": ["crack", "dent"]}, **FAST)
    with pytest.raises(ValueError, match=r"needs mask_dir .*--data\.mask_dir"):
        FewAnomalyFolder(**{**args, "mask_dir": None}, **FAST)


def test_unknown_category_lists_the_available_ones(mvtec_root: Path, btad_root: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"Unknown category 'botle'.*Categories found under .*: bottle\."):
        mvtec(mvtec_root, category="botle")
    with pytest.raises(
        FileNotFoundError, match=r"Unknown category '04'.*: 01\. Set category \(CLI: --data\.category\)"
    ):
        FewAnomalyBTAD(root=btad_root, category="04", **FAST)


def test_category_without_ground_truth(mvtec_root: Path, btad_root: Path) -> None:
    shutil.rmtree(mvtec_root / "bottle" / "ground_truth")
    setup_error(mvtec(mvtec_root), FileNotFoundError, r"Category 'bottle' has no ground-truth masks: '.*ground_truth'")
    shutil.rmtree(btad_root / "01" / "ground_truth")
    datamodule = FewAnomalyBTAD(root=btad_root, category="01", **FAST)
    setup_error(datamodule, FileNotFoundError, r"Category '01' has no ground-truth masks")


def test_too_many_anomalies_says_how_many_exist(mvtec_root: Path, btad_root: Path) -> None:
    message = setup_error(mvtec(mvtec_root, n_anomalies=10), ValueError, r"n_anomalies=10 is too large")
    assert "only 10 anomalous images (crack: 4, hole: 3, scratch: 3)" in message
    assert "Use n_anomalies <= 9" in message
    datamodule = FewAnomalyBTAD(root=btad_root, category="01", n_anomalies=20, **FAST)
    setup_error(datamodule, ValueError, r"only 6 anomalous images \(ko: 6\)")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_anomalies": -1}, r"n_anomalies must be >= 0, got -1"),
        ({"setting": "two_class"}, r"setting must be one of \['multi_class', 'one_class'\], got 'two_class'"),
        ({"pseudo_anomaly_ratio": -2.0}, r"pseudo_anomaly_ratio must be a number >= 0 .* got -2\.0"),
        ({"pseudo_anomaly_count": -1}, r"pseudo_anomaly_count must be an integer >= 0 .* got -1"),
        ({"num_workers": -1}, r"num_workers must be an integer >= 0 .* got -1"),
        ({"repeat_anomalies": -1}, r"repeat_anomalies must be an integer >= 0, got -1"),
        ({"seed": None}, r"seed must be an integer >= 0 \(it fixes the anomaly selection\), got None"),
    ],
)
def test_invalid_arguments_fail_at_init(mvtec_root: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mvtec(mvtec_root, **kwargs)


def test_unknown_seen_defect_type_lists_valid_ones(mvtec_root: Path) -> None:
    datamodule = mvtec(mvtec_root, setting="one_class", seen_defect_type="dent", n_anomalies=2)
    setup_error(datamodule, ValueError, r"seen_defect_type='dent' .* Valid defect types: crack, hole, scratch\.")


def test_one_class_on_btad_would_leave_no_test_anomalies(btad_root: Path) -> None:
    datamodule = FewAnomalyBTAD(root=btad_root, category="01", setting="one_class", n_anomalies=2, **FAST)
    setup_error(datamodule, ValueError, r"setting='one_class' would leave no anomalous images in the test set")


def test_missing_mask(mvtec_root: Path, btad_root: Path, folder_root: Path, trees) -> None:
    (mvtec_root / "bottle" / "ground_truth" / "hole" / "001_mask.png").unlink()
    message = setup_error(mvtec(mvtec_root), FileNotFoundError, r"Mask missing for anomalous image '.*hole/001\.png'")
    assert "ground_truth/hole/001_mask.png" in message

    (btad_root / "01" / "ground_truth" / "ko" / "0003.png").unlink()
    datamodule = FewAnomalyBTAD(root=btad_root, category="01", n_anomalies=2, **FAST)
    setup_error(datamodule, FileNotFoundError, r"Mask missing for anomalous image '.*ko/0003\.bmp'.*ko/0003\.png")

    (folder_root / "mask" / "crack" / "002.png").unlink()
    datamodule = FewAnomalyFolder(**trees.folder_args(folder_root), n_anomalies=2, **FAST)
    setup_error(datamodule, FileNotFoundError, r"Mask missing for anomalous image '.*crack/002\.png'")


def test_mask_without_image(mvtec_root: Path) -> None:
    extra = mvtec_root / "bottle" / "ground_truth" / "crack" / "017_mask.png"
    shutil.copy(mvtec_root / "bottle" / "ground_truth" / "crack" / "000_mask.png", extra)
    setup_error(mvtec(mvtec_root), ValueError, r"Mask '.*017_mask\.png' has no anomalous image in '.*test/crack'")


def test_mask_of_another_size(mvtec_root: Path, folder_root: Path, trees) -> None:
    Image.fromarray(np.full((16, 20), 255, np.uint8)).save(
        mvtec_root / "bottle" / "ground_truth" / "crack" / "002_mask.png"
    )
    setup_error(
        mvtec(mvtec_root), ValueError, r"Mask '.*crack/002_mask\.png' is 20x16 pixels but its image '.*' is 32x32"
    )

    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(folder_root / "mask" / "hole" / "000.png")
    datamodule = FewAnomalyFolder(**trees.folder_args(folder_root), n_anomalies=2, **FAST)
    setup_error(datamodule, ValueError, r"is 8x8 pixels but its image")


@pytest.mark.parametrize(
    "target", ["bottle/train/good/003.png", "bottle/test/hole/000.png", "bottle/test/good/001.png"]
)
def test_truncated_image(mvtec_root: Path, target: str) -> None:
    path = mvtec_root / target
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    setup_error(mvtec(mvtec_root), ValueError, rf"Cannot read image '.*{target}' .*truncated or not a valid image")


def test_not_an_image(btad_root: Path) -> None:
    (btad_root / "01" / "train" / "ok" / "0002.bmp").write_text("not an image")
    datamodule = FewAnomalyBTAD(root=btad_root, category="01", n_anomalies=2, **FAST)
    setup_error(datamodule, ValueError, r"Cannot read image '.*0002\.bmp' \(UnidentifiedImageError")


def test_empty_normal_training_folder(mvtec_root: Path, btad_root: Path, folder_root: Path, trees) -> None:
    for path in (mvtec_root / "bottle" / "train" / "good").iterdir():
        path.unlink()
    setup_error(mvtec(mvtec_root), ValueError, r"Normal training folder '.*train/good' holds no images")
    shutil.rmtree(btad_root / "01" / "train" / "ok")
    datamodule = FewAnomalyBTAD(root=btad_root, category="01", **FAST)
    setup_error(datamodule, FileNotFoundError, r"Normal training folder '.*train/ok' does not exist")
    for path in (folder_root / "good").iterdir():
        path.unlink()
    datamodule = FewAnomalyFolder(**trees.folder_args(folder_root), n_anomalies=2, **FAST)
    setup_error(datamodule, ValueError, r"Normal training folder '.*good' holds no images")


def test_dataset_folder_is_never_modified(mvtec_root: Path, tmp_path: Path, trees) -> None:
    before = trees.snapshot(mvtec_root)
    datamodule = mvtec(mvtec_root, n_anomalies=3, pseudo_anomaly_count=4, manifest_path=tmp_path / "out" / "split.json")
    datamodule.prepare_data()
    datamodule.setup()
    for _ in datamodule.train_dataloader():
        pass
    for _ in datamodule.test_dataloader():
        pass
    datamodule.write_manifest(tmp_path / "out")
    with pytest.raises(ValueError, match="too large"):
        mvtec(mvtec_root, n_anomalies=50).setup()
    assert trees.snapshot(mvtec_root) == before


def test_names_that_anomalib_cannot_pair(tmp_path: Path, trees) -> None:
    root = trees.make_mvtec(tmp_path / "mvtec", defects={"crack": 3})
    crack, masks = root / "bottle" / "test" / "crack", root / "bottle" / "ground_truth" / "crack"
    (crack / "000.png").rename(crack / "1.png")
    (masks / "000_mask.png").rename(masks / "1_mask.png")
    (crack / "001.png").rename(crack / "10.png")
    (masks / "001_mask.png").rename(masks / "10_mask.png")
    setup_error(mvtec(root, n_anomalies=1), ValueError, r"could not pair the images and masks .* Use zero-padded names")
