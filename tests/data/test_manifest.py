"""Split manifest: written at setup, replayed exactly, identical across processes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import anomalib_bgad
from anomalib_bgad.data import FewAnomalyBTAD, FewAnomalyDataModule, FewAnomalyFolder, FewAnomalyMVTecAD, SplitManifest

FAST = {"num_workers": 0, "pseudo_anomaly_count": 0, "repeat_anomalies": 1}


def split_of(datamodule) -> dict[str, list[tuple[str, str, int]]]:
    """Train/val/test sample lists relative to the dataset root (image, mask, label)."""
    root = datamodule.dataset_root

    def rows(dataset) -> list[tuple[str, str, int]]:
        out = []
        for row in dataset.samples.itertuples():
            mask = Path(row.mask_path).relative_to(root).as_posix() if row.label_index == 1 else ""
            out.append((Path(row.image_path).relative_to(root).as_posix(), mask, int(row.label_index)))
        return sorted(out)

    return {name: rows(getattr(datamodule, f"{name}_data")) for name in ("train", "val", "test")}


def test_manifest_content(mvtec_root: Path, tmp_path: Path) -> None:
    target = tmp_path / "run" / "split_manifest.json"
    datamodule = FewAnomalyMVTecAD(
        root=mvtec_root, category="bottle", n_anomalies=4, seed=7, manifest_path=target, **FAST
    )
    datamodule.setup()
    data = json.loads(target.read_text())
    assert data["datamodule"] == "anomalib_bgad.data.FewAnomalyMVTecAD"
    assert (data["dataset"], data["category"], data["setting"], data["seed"], data["n_anomalies"]) == (
        "MVTecAD",
        "bottle",
        "multi_class",
        7,
        4,
    )
    assert data["seen_defect_type"] is None and data["package_version"] == anomalib_bgad.__version__
    assert data["defect_types"] == {"crack": 4, "hole": 3, "scratch": 3}
    assert len(data["train_anomalies"]) == 4
    for entry in data["train_anomalies"]:
        assert (mvtec_root / entry["image"]).is_file() and (mvtec_root / entry["mask"]).is_file()
        assert entry["image"].startswith(f"bottle/test/{entry['defect_type']}/")
        assert entry["mask"] == entry["image"].replace("/test/", "/ground_truth/").replace(".png", "_mask.png")
    assert sorted(data["removed_from_test"]) == sorted(entry["image"] for entry in data["train_anomalies"])
    assert len(data["train_images"]) == 6 and len(data["test_images"]) == 3 + 10 - 4
    assert not set(data["removed_from_test"]) & set(data["test_images"])
    assert data["init_args"]["category"] == "bottle" and data["init_args"]["seed"] == 7


@pytest.mark.parametrize("setting", ["multi_class", "one_class"])
def test_replay_gives_identical_splits(mvtec_root: Path, tmp_path: Path, setting: str) -> None:
    original = FewAnomalyMVTecAD(root=mvtec_root, category="bottle", n_anomalies=3, setting=setting, seed=5, **FAST)
    original.setup()
    manifest = original.write_manifest(tmp_path)
    assert manifest == tmp_path / "split_manifest.json"
    replayed = FewAnomalyDataModule.from_manifest(manifest, num_workers=0)
    assert type(replayed) is FewAnomalyMVTecAD
    replayed.setup()
    assert split_of(replayed) == split_of(original)
    assert replayed.selection == original.selection

    # A moved dataset replays the same split with only `root` changed.
    moved = shutil.copytree(mvtec_root, tmp_path / "moved")
    relocated = FewAnomalyMVTecAD.from_manifest(manifest, root=moved, num_workers=0)
    relocated.setup()
    assert split_of(relocated) == split_of(original)


def test_replay_folder_without_root(folder_root: Path, tmp_path: Path, trees) -> None:
    args = trees.folder_args(folder_root)
    absolute = {
        "name": "tiny",
        "normal_dir": folder_root / "good",
        "normal_test_dir": folder_root / "good_test",
        "abnormal_dir": [folder_root / "crack", folder_root / "hole"],
        "mask_dir": [folder_root / "mask" / "crack", folder_root / "mask" / "hole"],
    }
    original = FewAnomalyFolder(**absolute, n_anomalies=3, **FAST)
    original.setup()
    assert original.dataset_root == folder_root.resolve()
    replayed = FewAnomalyFolder.from_manifest(original.write_manifest(tmp_path), num_workers=0)
    replayed.setup()
    assert split_of(replayed) == split_of(original)
    # The same tree described relative to root gives the same split too.
    relative = FewAnomalyFolder(**args, n_anomalies=3, **FAST)
    relative.setup()
    assert split_of(relative) == split_of(original)


def test_replay_refuses_a_changed_dataset_or_split_argument(btad_root: Path, tmp_path: Path) -> None:
    original = FewAnomalyBTAD(root=btad_root, category="01", n_anomalies=2, **FAST)
    original.setup()
    manifest = original.write_manifest(tmp_path / "m.json")
    with pytest.raises(ValueError, match=r"Cannot override n_anomalies, seed when replaying"):
        FewAnomalyBTAD.from_manifest(manifest, n_anomalies=3, seed=1)
    with pytest.raises(
        ValueError, match=r"was written by anomalib_bgad\.data\.FewAnomalyBTAD, not by a FewAnomalyMVTecAD"
    ):
        FewAnomalyMVTecAD.from_manifest(manifest)

    # The user passes replay_manifest with other split args: refused with the differences, before any setup.
    other_split = r"was written for another split \(n_anomalies: manifest 2, datamodule 3\)"
    with pytest.raises(ValueError, match=other_split) as error:
        FewAnomalyBTAD(root=btad_root, category="01", n_anomalies=3, replay_manifest=manifest, **FAST)
    # ... and both ways out: remove the argument (also from a --config file), or give it the manifest's value.
    assert "from the command line and the --config file (CLI: --data.n_anomalies)" in str(error.value)
    assert "set them to the manifest's values (CLI: --data.n_anomalies 2)" in str(error.value)

    # A test image removed from disk: the replay no longer reproduces the recorded lists.
    kept_test = [path for path in original.manifest.test_images if "/ok/" in path]
    (btad_root / kept_test[0]).unlink()
    with pytest.raises(ValueError, match=r"does not reproduce its test_images: 1 recorded file\(s\) missing"):
        FewAnomalyBTAD.from_manifest(manifest, num_workers=0).setup()
    # A known anomaly removed from disk.
    (btad_root / original.manifest.train_anomalies[0]["image"]).unlink()
    (btad_root / original.manifest.train_anomalies[0]["mask"]).unlink()
    with pytest.raises(ValueError, match=r"lists 1 anomalous image\(s\) that are not anomalous test images under root"):
        FewAnomalyBTAD.from_manifest(manifest, num_workers=0).setup()


def test_manifest_read_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"Split manifest '.*nope\.json' does not exist"):
        SplitManifest.read(tmp_path / "nope.json")
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="is not an anomalib_bgad split manifest"):
        SplitManifest.read(tmp_path / "other.json")


def test_selection_does_not_depend_on_other_categories(tmp_path: Path, trees) -> None:
    root = trees.make_mvtec(tmp_path / "mvtec", category="bottle")
    trees.make_mvtec(root, category="cable", seed=1)
    alone = FewAnomalyMVTecAD(root=root, category="bottle", n_anomalies=5, **FAST)
    alone.setup()
    for category in ("cable", "bottle"):
        datamodule = FewAnomalyMVTecAD(root=root, category=category, n_anomalies=5, **FAST)
        datamodule.setup()
    assert datamodule.manifest.train_anomalies == alone.manifest.train_anomalies


SCRIPT = """
import sys
from anomalib_bgad.data import FewAnomalyMVTecAD
root, out = sys.argv[1:]
for setting in ("multi_class", "one_class"):
    datamodule = FewAnomalyMVTecAD(root=root, category="bottle", n_anomalies=3, setting=setting, seed=11,
                                   num_workers=0, manifest_path=f"{out}_{setting}.json")
    datamodule.setup()
"""


def test_same_split_in_another_process(mvtec_root: Path, tmp_path: Path) -> None:
    # Another interpreter, with its own string-hash seed, gives the split of this process.
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run(
        [sys.executable, "-c", SCRIPT, str(mvtec_root), str(tmp_path / "run")], env=env, check=True, timeout=300
    )
    for setting in ("multi_class", "one_class"):
        in_process = FewAnomalyMVTecAD(
            root=mvtec_root, category="bottle", n_anomalies=3, setting=setting, seed=11, **FAST
        )
        in_process.setup()
        other = SplitManifest.read(tmp_path / f"run_{setting}.json")
        assert other.train_anomalies == in_process.manifest.train_anomalies
        assert other.removed_from_test == in_process.manifest.removed_from_test
        assert other.test_images == in_process.manifest.test_images
        assert other.seen_defect_type == in_process.manifest.seen_defect_type
    assert other.seen_defect_type is not None  # one-class: the seed chose the same seen type in both processes
