"""FewAnomalyVisa: anomalib's split preparation on a tiny raw VisA tree, outside the user's root; refusals."""

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data import Visa
from PIL import Image

from anomalib_bgad.data import FewAnomalyDataModule, FewAnomalyVisa
from anomalib_bgad.data.datamodules.visa import ONE_CLASS_MESSAGE

FAST = {"num_workers": 0, "pseudo_anomaly_count": 0, "repeat_anomalies": 1}
# category -> (train normal, test normal, test anomalous)
COUNTS = {"capsules": (6, 3, 5), "pcb1": (3, 2, 2)}


def make_raw_visa(root: Path, seed: int = 0, counts: dict[str, tuple[int, int, int]] | None = None) -> Path:
    """VisA as downloaded: ``<cat>/Data/Images/{Normal,Anomaly}/*.JPG``, ``Data/Masks/Anomaly/*.png``, split csv.

    Masks hold instance indices (1, 2), as VisA's do; anomalib binarises them. Normal images are numbered
    0000..., anomalous ones 000..., like VisA's files, and the csv rows are shuffled.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for category, (n_train, n_test, n_bad) in (counts or COUNTS).items():
        images = root / category / "Data" / "Images"
        for index in range(n_train + n_test):
            relative = f"{category}/Data/Images/Normal/{index:04d}.JPG"
            (images / "Normal").mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(60, 200, size=(40, 48, 3), dtype=np.uint8)).save(root / relative)
            rows.append([category, "train" if index < n_train else "test", "normal", relative, ""])
        for index in range(n_bad):
            relative = f"{category}/Data/Images/Anomaly/{index:03d}.JPG"
            mask_relative = f"{category}/Data/Masks/Anomaly/{index:03d}.png"
            (images / "Anomaly").mkdir(parents=True, exist_ok=True)
            (root / mask_relative).parent.mkdir(parents=True, exist_ok=True)
            image = rng.integers(60, 200, size=(40, 48, 3), dtype=np.uint8)
            mask = np.zeros((40, 48), np.uint8)
            mask[10 : 14 + index, 8:16] = 1
            mask[30:34, 30:36] = 2
            image[mask > 0] = (250, 20, 20)
            Image.fromarray(image).save(root / relative, quality=95)
            Image.fromarray(mask).save(root / mask_relative)
            rows.append([category, "test", "anomaly", relative, mask_relative])
        (root / category / "image_anno.csv").write_text("image,label,mask\n")
    order = rng.permutation(len(rows))
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    with (root / "split_csv" / "1cls.csv").open("w", newline="") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(["object", "split", "label", "image", "mask"])
        writer.writerows(rows[i] for i in order)
    return root


@pytest.fixture
def visa_root(tmp_path: Path) -> Path:
    return make_raw_visa(tmp_path / "visa")


def visa(root: Path, cache: Path, **kwargs) -> FewAnomalyVisa:
    return FewAnomalyVisa(root=root, category="capsules", cache_dir=cache, **{**FAST, **kwargs})


def relative_images(dataset, root: Path) -> list[str]:
    return sorted(Path(path).relative_to(root).as_posix() for path in dataset.samples.image_path)


def test_raw_tree_is_split_by_anomalib_into_the_cache_and_left_untouched(
    visa_root: Path, tmp_path: Path, trees
) -> None:
    before = trees.snapshot(visa_root)
    cache = tmp_path / "cache"
    datamodule = visa(visa_root, cache, n_anomalies=2)
    datamodule.prepare_data()
    datamodule.setup()

    assert trees.snapshot(visa_root) == before  # no visa_pytorch, no changed or added file under root
    processed = datamodule.processed_root
    assert processed.is_relative_to(cache) and processed.name == "visa_pytorch"
    assert sorted(path.name for path in processed.iterdir()) == ["capsules"]  # only the requested category
    category = processed / "capsules"
    assert len(list((category / "train" / "good").iterdir())) == 6
    assert len(list((category / "test" / "good").iterdir())) == 3
    assert len(list((category / "test" / "bad").iterdir())) == 5
    # anomalib's apply_cls1_split ran: it binarises VisA's instance masks to 0/255.
    mask = np.asarray(Image.open(category / "ground_truth" / "bad" / "003.png").convert("L"))
    raw = np.asarray(Image.open(visa_root / "capsules" / "Data" / "Masks" / "Anomaly" / "003.png"))
    assert set(np.unique(raw)) == {0, 1, 2} and set(np.unique(mask)) == {0, 255}
    assert np.array_equal(mask > 0, raw > 0)

    # Multi-class few-anomaly split on top: 2 of the 5 'bad' images move to training, with their masks.
    train = datamodule.train_data.samples
    assert (train.label_index == 0).sum() == 6 and (train.label_index == 1).sum() == 2
    assert len(datamodule.test_data) == 3 + 5 - 2
    assert datamodule.manifest.defect_types == {"bad": 5}
    for entry in datamodule.manifest.train_anomalies:
        assert entry["image"].startswith("capsules/test/bad/") and entry["defect_type"] == "bad"
        assert entry["mask"] == entry["image"].replace("/test/", "/ground_truth/").replace(".JPG", ".png")
        assert entry["image"] not in datamodule.manifest.test_images
    assert datamodule.manifest.root == str(visa_root.resolve())
    assert datamodule.manifest.init_args["pseudo_anomaly_source"] == "rpag"
    batch = next(iter(datamodule.train_dataloader()))
    assert batch.gt_mask.shape[-2:] == (40, 48) and batch.gt_mask.dtype == torch.bool


def test_cache_is_reused_and_rebuilt_when_the_raw_files_change(visa_root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    datamodule = visa(visa_root, cache, n_anomalies=1)
    datamodule.prepare_data()
    marker = datamodule.processed_root / "capsules" / "train" / "good" / "0000.JPG"
    first = marker.stat().st_mtime_ns
    visa(visa_root, cache, n_anomalies=1).prepare_data()
    assert marker.stat().st_mtime_ns == first  # current: not converted again

    # Another image in place of a normal training image: the cache is made again from the new files.
    replacement = np.full((40, 48, 3), 7, np.uint8)
    Image.fromarray(replacement).save(visa_root / "capsules" / "Data" / "Images" / "Normal" / "0000.JPG")
    again = visa(visa_root, cache, n_anomalies=1)
    again.prepare_data()
    np.testing.assert_allclose(np.asarray(Image.open(marker)), replacement, atol=2)
    assert not [path for path in again.cache_entry.parent.iterdir() if path.name.startswith(".")]  # no leftovers


def test_processed_copy_made_by_anomalib_in_root_is_used_read_only_with_the_same_split(
    visa_root: Path, tmp_path: Path, trees
) -> None:
    from_cache = visa(visa_root, tmp_path / "cache_a", n_anomalies=3, seed=4)
    from_cache.setup()

    # anomalib's own Visa writes visa_pytorch into its root (on a copy here): that copy is then used as is.
    anomalib_root = Path(shutil.copytree(visa_root, tmp_path / "anomalib_visa"))
    Visa(root=anomalib_root, category="capsules").prepare_data()
    before = trees.snapshot(anomalib_root)
    cache = tmp_path / "cache_b"
    in_root = visa(anomalib_root, cache, n_anomalies=3, seed=4)
    in_root.setup()
    assert in_root.processed_root == anomalib_root / "visa_pytorch"
    assert trees.snapshot(anomalib_root) == before and not cache.exists()
    assert in_root.manifest.train_anomalies == from_cache.manifest.train_anomalies
    assert in_root.manifest.test_images == from_cache.manifest.test_images
    assert relative_images(in_root.train_data, in_root.dataset_root) == relative_images(
        from_cache.train_data, from_cache.dataset_root
    )

    # root may also be the processed folder itself.
    direct = visa(anomalib_root / "visa_pytorch", cache, n_anomalies=3, seed=4)
    direct.setup()
    assert direct.manifest.train_anomalies == from_cache.manifest.train_anomalies


def test_replay_from_manifest(visa_root: Path, tmp_path: Path) -> None:
    original = visa(visa_root, tmp_path / "cache", n_anomalies=2, seed=9)
    original.setup()
    manifest = original.write_manifest(tmp_path / "run")
    replayed = FewAnomalyDataModule.from_manifest(manifest, num_workers=0, pseudo_anomaly_source="both")
    assert type(replayed) is FewAnomalyVisa and replayed.cache_dir == tmp_path / "cache"
    replayed.setup()
    assert replayed.selection == original.selection
    assert replayed.manifest.pseudo_anomaly_source == "both"


def test_missing_root_fails_clearly_without_download_or_folder(tmp_path: Path, monkeypatch) -> None:
    def no_download(*_args, **_kwargs) -> None:
        pytest.fail("FewAnomalyVisa must never download")

    monkeypatch.setattr("anomalib.data.datamodules.image.visa.download_and_extract", no_download)
    missing = tmp_path / "nowhere" / "visa"
    with pytest.raises(FileNotFoundError, match=r"Dataset root .*nowhere/visa' does not exist.*never downloads"):
        FewAnomalyVisa(root=missing, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "cache").exists()


def test_unknown_category_and_incomplete_raw_tree(visa_root: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"Unknown category 'candle'.*found under .*: capsules, pcb1"):
        FewAnomalyVisa(root=visa_root, category="candle", cache_dir=tmp_path / "cache")

    inside = visa(visa_root, visa_root / "cache", n_anomalies=1)
    with pytest.raises(ValueError, match=r"cache_dir .* is inside the dataset root"):
        inside.setup()
    assert not (visa_root / "cache").exists()

    (visa_root / "capsules" / "Data" / "Masks" / "Anomaly" / "002.png").unlink()
    datamodule = visa(visa_root, tmp_path / "cache", n_anomalies=1)
    with pytest.raises(FileNotFoundError, match=r"002.png' listed in row .* does not exist"):
        datamodule.setup()
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.JPG"))

    (visa_root / "split_csv" / "1cls.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"split file .*1cls.csv' does not"):
        visa(visa_root, tmp_path / "cache")


def test_one_class_is_refused_with_the_reason_and_the_way_out(visa_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"setting='one_class' is not possible with FewAnomalyVisa") as error:
        visa(visa_root, tmp_path / "cache", setting="one_class")
    message = str(error.value)
    assert message == ONE_CLASS_MESSAGE
    # Why: a single anomalous folder; what would make it possible: the defect types of image_anno.csv.
    assert "single folder, 'bad'" in message and "image_anno.csv" in message and "FewAnomalyFolder" in message
    assert not (tmp_path / "cache").exists()
