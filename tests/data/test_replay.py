"""Replaying a run's split from its manifest with one argument; the run's manifest is kept; worker defaults."""

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from anomalib_bgad.data import FewAnomalyBTAD, FewAnomalyFolder, FewAnomalyMVTecAD, SplitManifest
from anomalib_bgad.data.datamodules.options import DEFAULT_PSEUDO_ANOMALY_RATIO, default_num_workers

FAST = {"num_workers": 0, "pseudo_anomaly_count": 0, "repeat_anomalies": 1}


def split_of(datamodule) -> tuple:
    manifest = datamodule.manifest
    return manifest.train_anomalies, manifest.removed_from_test, manifest.train_images, manifest.test_images


def test_replay_manifest_alone_rebuilds_the_split(tmp_path: Path, trees) -> None:
    root = trees.make_mvtec(tmp_path / "mvtec", category="cable")
    original = FewAnomalyMVTecAD(
        root=root, category="cable", n_anomalies=4, seed=7, setting="one_class", pseudo_anomaly_ratio=1.0,
        repeat_anomalies=2, manifest_path=tmp_path / "run" / "split_manifest.json", num_workers=0,
    )  # fmt: skip
    original.setup()
    # Nothing but the manifest: root, category, n_anomalies, seed, setting and the pseudo options come from it.
    replayed = FewAnomalyMVTecAD(replay_manifest=tmp_path / "run" / "split_manifest.json", num_workers=0)
    assert (replayed.root, replayed.category, replayed.n_anomalies, replayed.seed, replayed.setting) == (
        root.resolve(), "cable", 4, 7, "one_class"
    )  # fmt: skip
    assert (replayed.pseudo_anomaly_ratio, replayed.repeat_anomalies) == (1.0, 2)
    replayed.setup()
    assert split_of(replayed) == split_of(original)
    # Values equal to the recorded ones, a moved root and non-split options may be given.
    moved = Path(os.path.relpath(root, Path.cwd()))
    again = FewAnomalyMVTecAD(root=moved, category="cable", seed=7, replay_manifest=original.manifest_path, **FAST)
    again.setup()
    assert split_of(again) == split_of(original) and again.repeat_anomalies == 1


def test_from_manifest_keeps_an_override_that_equals_the_default(tmp_path: Path, trees) -> None:
    """An explicit override wins at its default value too; an unnamed (CLI-passed) default takes the manifest's."""
    root = trees.make_mvtec(tmp_path / "mvtec", category="cable")
    original = FewAnomalyMVTecAD(
        root=root, category="cable", n_anomalies=4, seed=7, num_workers=0, pseudo_anomaly_ratio=1.0,
        pseudo_anomaly_source="perlin",
    )  # fmt: skip
    original.setup()
    manifest = original.write_manifest(tmp_path)
    assert original.pseudo_anomaly_counts["perlin"] == 4
    explicit = FewAnomalyMVTecAD.from_manifest(
        manifest, num_workers=0, pseudo_anomaly_ratio=DEFAULT_PSEUDO_ANOMALY_RATIO
    )
    assert explicit.pseudo_anomaly_ratio == DEFAULT_PSEUDO_ANOMALY_RATIO != 1.0
    explicit.setup()
    assert explicit.pseudo_anomaly_counts["perlin"] == round(DEFAULT_PSEUDO_ANOMALY_RATIO * 4)
    cli_like = FewAnomalyMVTecAD(
        replay_manifest=manifest, num_workers=0, pseudo_anomaly_ratio=DEFAULT_PSEUDO_ANOMALY_RATIO
    )
    assert cli_like.pseudo_anomaly_ratio == 1.0
    # Outside from_manifest the rule is back to the CLI's.
    assert FewAnomalyMVTecAD(replay_manifest=manifest, num_workers=0).pseudo_anomaly_ratio == 1.0


def test_replay_refuses_conflicting_split_arguments_and_another_datamodule(tmp_path: Path, trees) -> None:
    root = trees.make_mvtec(tmp_path / "mvtec", category="cable")
    original = FewAnomalyMVTecAD(root=root, category="cable", n_anomalies=4, seed=7, **FAST)
    original.setup()
    manifest = original.write_manifest(tmp_path)
    with pytest.raises(
        ValueError,
        match=r"was written for another split \(setting: manifest 'multi_class', datamodule 'one_class'; seed: "
        r"manifest 7, datamodule 3\).*remove them .*\(CLI: --data\.setting, --data\.seed\) or set them to the "
        r"manifest's values \(CLI: --data\.setting multi_class --data\.seed 7\)",
    ):
        FewAnomalyMVTecAD(replay_manifest=manifest, seed=3, setting="one_class", **FAST)
    with pytest.raises(ValueError, match=r"written by anomalib_bgad\.data\.FewAnomalyMVTecAD, not by .*FewAnomalyBTAD"):
        FewAnomalyBTAD(replay_manifest=manifest, **FAST)


def test_folder_replays_without_its_required_arguments(folder_root: Path, tmp_path: Path, trees) -> None:
    original = FewAnomalyFolder(**trees.folder_args(folder_root), n_anomalies=3, seed=2, **FAST)
    original.setup()
    manifest = original.write_manifest(tmp_path)
    replayed = FewAnomalyFolder(replay_manifest=manifest, num_workers=0)
    replayed.setup()
    assert split_of(replayed) == split_of(original) and replayed.name == "tiny"
    with pytest.raises(ValueError, match=r"FewAnomalyFolder needs name \(CLI: --data\.name\), or a replay_manifest"):
        FewAnomalyFolder(normal_dir="good")


def test_test_run_keeps_the_training_manifest_and_warns_on_another_split(
    mvtec_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "run"
    trained = FewAnomalyMVTecAD(root=mvtec_root, n_anomalies=3, seed=1, **FAST)
    trained.trainer = SimpleNamespace(default_root_dir=str(run))
    trained.setup("fit")
    written = (run / "split_manifest.json").read_text()

    other = FewAnomalyMVTecAD(root=mvtec_root, n_anomalies=5, seed=1, **FAST)
    other.trainer = SimpleNamespace(default_root_dir=str(run))
    with caplog.at_level("WARNING"):
        other.setup("test")
    assert (run / "split_manifest.json").read_text() == written  # the training record stays
    assert "split differs from the one the model was trained on" in caplog.text
    assert f"--data.replay_manifest {run / 'split_manifest.json'}" in caplog.text

    caplog.clear()
    same = FewAnomalyMVTecAD(replay_manifest=run / "split_manifest.json", num_workers=0)
    same.trainer = SimpleNamespace(default_root_dir=str(run))
    with caplog.at_level("WARNING"):
        same.setup("test")
    assert "differs" not in caplog.text and SplitManifest.read(run / "split_manifest.json").n_anomalies == 3


def test_default_num_workers_fits_the_usable_cpus(mvtec_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert 1 <= FewAnomalyMVTecAD(root=mvtec_root).num_workers == default_num_workers() <= 8
    if hasattr(os, "sched_getaffinity"):
        assert default_num_workers() <= len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    assert FewAnomalyMVTecAD(root=mvtec_root).num_workers == 2  # a 2-core machine: 2, not anomalib's 8
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(32)), raising=False)
    assert FewAnomalyMVTecAD(root=mvtec_root).num_workers == 8
    assert FewAnomalyMVTecAD(root=mvtec_root, num_workers=0).num_workers == 0


def test_a_checkpoint_of_another_category_or_split_warns_when_restored(
    tmp_path: Path, trees, caplog: pytest.LogCaptureFixture
) -> None:
    # Lightning saves state_dict() in every checkpoint and hands it to load_state_dict() when test/predict restore it.
    root = trees.make_mvtec(tmp_path / "mvtec", category="cable")
    trees.make_mvtec(root, category="bottle", seed=1)
    run = tmp_path / "run"
    trained = FewAnomalyMVTecAD(root=root, category="cable", n_anomalies=3, seed=1, **FAST)
    trained.trainer = SimpleNamespace(default_root_dir=str(run))
    trained.setup("fit")
    state = trained.state_dict()
    assert FewAnomalyMVTecAD(root=root, category="cable", **FAST).state_dict() == {}  # no split before setup
    checkpoint = run / "weights" / "lightning" / "model.ckpt"

    def restored_into(**kwargs) -> str:
        caplog.clear()
        datamodule = FewAnomalyMVTecAD(root=root, **FAST, **kwargs)
        elsewhere = tmp_path / f"test_run_{len(list(tmp_path.glob('test_run_*')))}"  # no training manifest there
        datamodule.trainer = SimpleNamespace(default_root_dir=str(elsewhere), ckpt_path=str(checkpoint))
        with caplog.at_level("WARNING"):
            datamodule.setup("test")
            datamodule.load_state_dict(state)
        return " ".join(caplog.text.split())

    assert restored_into(category="cable", n_anomalies=3, seed=1) == ""
    other_category = restored_into(category="bottle", n_anomalies=3, seed=1)
    assert "trained on anomalib_bgad.data.FewAnomalyMVTecAD category 'cable'" in other_category
    assert "this run uses anomalib_bgad.data.FewAnomalyMVTecAD category 'bottle'" in other_category
    assert "--data.category cable" in other_category and f"checkpoint {checkpoint}" in other_category
    assert f"--data.replay_manifest {run / 'split_manifest.json'}" in other_category  # found next to the checkpoint
    assert "The metrics of this run are not the model's on its test split" in other_category
    other_seed = restored_into(category="cable", n_anomalies=3, seed=2)
    assert "other known anomalies or test files, so known anomalies may be scored as test images" in other_seed
    assert restored_into(category="cable", n_anomalies=3, seed=1) == ""
