"""Few-anomaly datamodules: the two settings on real trees, batches, and unsupervised models kept on normals."""

from pathlib import Path
from types import SimpleNamespace

import torch
from anomalib.data.utils import read_mask
from anomalib.engine import Engine
from anomalib.models import Padim
from lightning.pytorch import Callback

from anomalib_bgad.data import FewAnomalyBTAD, FewAnomalyFolder, FewAnomalyMVTecAD

FAST = {"num_workers": 0, "pseudo_anomaly_count": 0, "repeat_anomalies": 1}


def paths(dataset) -> set[str]:
    return {Path(path).resolve().as_posix() for path in dataset.samples.image_path}


def anomalies(dataset) -> set[str]:
    samples = dataset.samples
    return {Path(path).resolve().as_posix() for path in samples[samples.label_index == 1].image_path}


def test_mvtec_multi_class_moves_anomalies_from_test_and_validation(mvtec_root: Path) -> None:
    datamodule = FewAnomalyMVTecAD(root=mvtec_root, category="bottle", n_anomalies=6, **FAST)
    datamodule.setup()
    known = anomalies(datamodule.train_data)
    assert len(known) == 6
    assert sorted(Path(path).parent.name for path in known) == ["crack"] * 2 + ["hole"] * 2 + ["scratch"] * 2
    assert not known & paths(datamodule.test_data)
    assert not known & paths(datamodule.val_data)
    # Nothing else is lost: the test set keeps the 3 good and the 4 other anomalous images.
    assert len(datamodule.test_data) == 3 + 10 - 6
    assert len(anomalies(datamodule.test_data)) == 4
    # The known anomalies keep their own masks.
    rows = datamodule.train_data.samples[datamodule.train_data.samples.label_index == 1]
    for image, mask in zip(rows.image_path, rows.mask_path, strict=True):
        assert Path(mask).name == Path(image).stem + "_mask.png" and Path(mask).parent.name == Path(image).parent.name


def test_mvtec_one_class_leaves_only_unseen_types_in_test(mvtec_root: Path) -> None:
    datamodule = FewAnomalyMVTecAD(
        root=mvtec_root, category="bottle", n_anomalies=2, setting="one_class", seen_defect_type="crack", **FAST
    )
    datamodule.setup()
    assert {Path(path).parent.name for path in anomalies(datamodule.train_data)} == {"crack"}
    assert len(anomalies(datamodule.train_data)) == 2
    test_types = {Path(path).parent.name for path in paths(datamodule.test_data)}
    assert test_types == {"good", "hole", "scratch"}
    assert len(datamodule.test_data) == 3 + 3 + 3  # all 4 crack images left the test set
    assert datamodule.manifest.seen_defect_type == "crack"
    assert len(datamodule.manifest.removed_from_test) == 4


def test_training_batches_carry_labels_and_masks(btad_root: Path) -> None:
    datamodule = FewAnomalyBTAD(root=btad_root, category="01", n_anomalies=3, train_batch_size=4, **FAST)
    datamodule.setup()
    batches = list(datamodule.train_dataloader())
    assert sum(len(batch.image) for batch in batches) == 6 + 3
    labels = torch.cat([batch.gt_label for batch in batches])
    assert labels.dtype == torch.bool and int(labels.sum()) == 3
    for batch in batches:
        assert batch.gt_mask.shape == (len(batch.image), 32, 32) and batch.gt_mask.dtype == torch.bool
        for label, mask, image_path in zip(batch.gt_label, batch.gt_mask, batch.image_path, strict=True):
            if label:
                expected = read_mask(Path(btad_root / "01" / "ground_truth" / "ko" / (Path(image_path).stem + ".png")))
                assert torch.equal(mask, torch.as_tensor(expected) > 0) and mask.any()
            else:
                assert not mask.any()


def test_repeats_and_pseudo_anomalies_per_epoch(mvtec_root: Path) -> None:
    datamodule = FewAnomalyMVTecAD(
        root=mvtec_root, category="bottle", n_anomalies=3, pseudo_anomaly_ratio=0.5, repeat_anomalies=2, num_workers=0
    )
    datamodule.setup()
    assert datamodule.num_pseudo_anomalies == 2  # round(0.5 * 3)
    items = [item for batch in datamodule.train_dataloader() for item in batch]
    normal_paths = {str(path) for path in datamodule.train_data.samples.query("label_index == 0").image_path}
    pseudo = [item for item in items if item.gt_label and item.image_path in normal_paths]
    assert len(items) == 6 + 2 * 3 + 2 and len(pseudo) == 2
    assert all(item.gt_mask.any() for item in pseudo)
    datamodule.pseudo_anomaly_count = 4  # a count replaces the ratio
    assert datamodule.num_pseudo_anomalies == 4


def test_zero_repeats_train_on_pseudo_anomalies_alone_with_the_same_test_set(mvtec_root: Path) -> None:
    args = {"root": mvtec_root, "category": "bottle", "n_anomalies": 3, "num_workers": 0}
    reference = FewAnomalyMVTecAD(**args, pseudo_anomaly_count=0, repeat_anomalies=1)
    datamodule = FewAnomalyMVTecAD(
        **args, pseudo_anomaly_count=4, pseudo_anomaly_source="smoothblend", repeat_anomalies=0
    )
    reference.setup()
    datamodule.setup()
    assert paths(datamodule.test_data) == paths(reference.test_data)
    known = anomalies(datamodule.train_data)
    assert len(known) == 3 and not known & paths(datamodule.test_data)
    items = [item for batch in datamodule.train_dataloader() for item in batch]
    assert not {Path(item.image_path).resolve().as_posix() for item in items} & known
    assert len(items) == 6 + 4
    assert sum(int(item.gt_label) for item in items) == 4 and all(item.gt_mask.any() for item in items if item.gt_label)


def test_folder_with_normal_test_images_taken_from_training(folder_root: Path, trees) -> None:
    args = {**trees.folder_args(folder_root), "normal_test_dir": None, "test_split_ratio": 0.25}
    datamodule = FewAnomalyFolder(**args, n_anomalies=3, val_split_mode="same_as_test", **FAST)
    datamodule.setup()
    train, test = datamodule.train_data.samples, datamodule.test_data.samples
    assert len(anomalies(datamodule.train_data)) == 3
    # Normal test images were split off the 8 normal training images before the anomalies were added.
    assert len(test[test.label_index == 0]) == 2 and len(train[train.label_index == 0]) == 6
    assert all("/good/" in path for path in test[test.label_index == 0].image_path)
    assert len(anomalies(datamodule.test_data)) == 7 - 3
    assert not anomalies(datamodule.train_data) & paths(datamodule.test_data)


def test_validation_from_train_holds_no_known_anomaly(mvtec_root: Path) -> None:
    datamodule = FewAnomalyMVTecAD(
        root=mvtec_root, category="bottle", n_anomalies=3, val_split_mode="from_train", val_split_ratio=0.5, **FAST
    )
    datamodule.setup()
    assert len(anomalies(datamodule.train_data)) == 3
    assert not anomalies(datamodule.val_data)


def test_folder_single_mask_dir_and_nested_defect_dirs(tmp_path: Path, trees) -> None:
    root = trees.make_folder(tmp_path / "f", defects={"crack": 3, "hole": 3})
    datamodule = FewAnomalyFolder(
        name="tiny", root=root, normal_dir="good", normal_test_dir="good_test", abnormal_dir=["crack", "hole"],
        mask_dir="mask", n_anomalies=2, **FAST,
    )  # fmt: skip
    datamodule.setup()
    rows = datamodule.train_data.samples.query("label_index == 1")
    for image, mask in zip(rows.image_path, rows.mask_path, strict=True):
        assert Path(mask).relative_to(root / "mask").as_posix() == Path(image).relative_to(root).as_posix()


def record_labels() -> tuple[Callback, list[torch.Tensor]]:
    seen: list[torch.Tensor] = []

    class Recorder(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            seen.append(batch.gt_label.clone())

    return Recorder(), seen


def test_unsupervised_anomalib_model_trains_on_normal_images_only(mvtec_root: Path, tmp_path: Path) -> None:
    datamodule = FewAnomalyMVTecAD(
        root=mvtec_root, category="bottle", n_anomalies=3, train_batch_size=4, eval_batch_size=4, **FAST
    )
    recorder, seen = record_labels()
    model = Padim(backbone="resnet18", layers=["layer1"], pre_trained=False, n_features=16, visualizer=False)
    engine = Engine(max_epochs=1, callbacks=[recorder], default_root_dir=tmp_path / "results", logger=False)
    engine.fit(model=model, datamodule=datamodule)
    labels = torch.cat(seen)
    assert len(labels) == 6 and not labels.any()
    # The known anomalies are still held out of the test set, and the run wrote the split next to its results.
    assert len(datamodule.test_data) == 3 + 10 - 3
    assert (Path(engine.trainer.default_root_dir) / "split_manifest.json").is_file()
    results = engine.test(model=model, datamodule=datamodule)
    assert 0.0 <= results[0]["image_AUROC"] <= 1.0


def test_model_declares_it_trains_on_anomalies(mvtec_root: Path) -> None:
    datamodule = FewAnomalyMVTecAD(root=mvtec_root, category="bottle", n_anomalies=3, **FAST)
    assert datamodule.anomalies_in_training()  # no trainer: the batches carry the anomalies
    for model, expected in [
        (SimpleNamespace(), False),
        (SimpleNamespace(trains_on_anomalies=True), True),
        (SimpleNamespace(supervised=True), True),  # anomalib's SuperSimpleNet in supervised mode
        (SimpleNamespace(trains_on_anomalies=False, supervised=True), False),
    ]:
        datamodule.trainer = SimpleNamespace(lightning_module=model)
        assert datamodule.anomalies_in_training() is expected
    datamodule.train_on_anomalies = True
    assert datamodule.anomalies_in_training()
