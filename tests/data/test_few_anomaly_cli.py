"""anomalib's CLI with BGAD and the few-anomaly datamodules, end to end on tiny trees (slow)."""

import subprocess
from pathlib import Path

import pytest

from anomalib_bgad.data import SplitManifest

try:
    from anomalib_bgad.models.bgad import Bgad
except ImportError:  # the lead's model is not there yet
    Bgad = None

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(Bgad is None, reason="anomalib_bgad.models.bgad does not import yet (owned by the lead)"),
]

# Speed only: a small flow, few pseudo anomalies, two epochs (phase 1, then phase 2 with anomalies).
FAST = [
    "--model.coupling_blocks", "2", "--model.fiber_batch_size", "2048", "--model.phase1_epochs", "1",
    "--data.pseudo_anomaly_count", "4", "--data.repeat_anomalies", "1", "--data.num_workers", "0",
    "--data.train_batch_size", "8", "--data.eval_batch_size", "8",
    "--trainer.max_epochs", "2", "--seed_everything", "0",
]  # fmt: skip


def check_trained_with_anomalies(result: subprocess.CompletedProcess, results: Path, n_anomalies: int) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "image_AUROC" in result.stdout and "pixel_AUROC" in result.stdout
    manifest = SplitManifest.read(next(results.rglob("split_manifest.json")))
    assert len(manifest.train_anomalies) == n_anomalies
    if not getattr(Bgad, "trains_on_anomalies", False):
        pytest.xfail(
            "Bgad does not declare `trains_on_anomalies = True`, so the datamodule feeds it normal images only"
        )
    assert "does not declare trains_on_anomalies" not in output
    assert "saw no anomalous pixels" not in output


def test_bgad_on_btad_multi_class(tmp_path: Path, trees, run_anomalib) -> None:
    root = trees.make_btad(tmp_path / "btad", n_ko=12)
    results = tmp_path / "results"
    result = run_anomalib(
        "train", "--model", "anomalib_bgad.Bgad",
        "--data", "anomalib_bgad.data.FewAnomalyBTAD", "--data.root", str(root), "--data.category", "01",
        "--data.n_anomalies", "10", *FAST, "--default_root_dir", str(results),
        cwd=tmp_path,
    )  # fmt: skip
    check_trained_with_anomalies(result, results, 10)


def test_bgad_on_btad_one_class_fails_before_training(tmp_path: Path, trees, run_anomalib) -> None:
    root = trees.make_btad(tmp_path / "btad", n_ko=12)
    before = trees.snapshot(root)
    result = run_anomalib(
        "train", "--model", "anomalib_bgad.Bgad",
        "--data", "anomalib_bgad.data.FewAnomalyBTAD", "--data.root", str(root), "--data.category", "01",
        "--data.n_anomalies", "10", "--data.setting", "one_class", *FAST,
        "--default_root_dir", str(tmp_path / "results"),
        cwd=tmp_path, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "setting='one_class' would leave no anomalous images in the test set" in result.stdout + result.stderr
    assert "Training took" not in result.stdout + result.stderr
    assert not list((tmp_path / "results").rglob("*.ckpt"))
    assert trees.snapshot(root) == before


def test_bgad_on_mvtec_one_class(tmp_path: Path, trees, run_anomalib) -> None:
    root = trees.make_mvtec(tmp_path / "mvtec", defects={"crack": 4, "hole": 3, "scratch": 3})
    results = tmp_path / "results"
    result = run_anomalib(
        "train", "--model", "anomalib_bgad.Bgad",
        "--data", "anomalib_bgad.data.FewAnomalyMVTecAD", "--data.root", str(root), "--data.category", "bottle",
        "--data.n_anomalies", "3", "--data.setting", "one_class", *FAST, "--default_root_dir", str(results),
        cwd=tmp_path,
    )  # fmt: skip
    check_trained_with_anomalies(result, results, 3)
    manifest = SplitManifest.read(next(results.rglob("split_manifest.json")))
    seen = manifest.seen_defect_type
    assert seen in {"crack", "hole", "scratch"}
    assert not [path for path in manifest.test_images if f"/{seen}/" in path]


def test_test_and_predict_replay_the_training_split_from_its_manifest(tmp_path: Path, trees, run_anomalib) -> None:
    root = trees.make_mvtec(tmp_path / "mvtec", category="cable")
    results = tmp_path / "results"
    run_anomalib(
        "train", "--model", "anomalib_bgad.Bgad",
        "--data", "anomalib_bgad.data.FewAnomalyMVTecAD", "--data.root", str(root), "--data.category", "cable",
        "--data.n_anomalies", "3", "--data.seed", "4", *FAST, "--default_root_dir", str(results),
        cwd=tmp_path,
    )  # fmt: skip
    (manifest_path,) = results.rglob("split_manifest.json")
    assert manifest_path.parent.name.startswith("v") and (manifest_path.parent / "weights").is_dir()
    trained = SplitManifest.read(manifest_path)
    (checkpoint,) = results.rglob("*.ckpt")
    replay = ["--data", "anomalib_bgad.data.FewAnomalyMVTecAD", "--data.replay_manifest", str(manifest_path)]
    model = ["--model", "anomalib_bgad.Bgad", "--model.coupling_blocks", "2", "--ckpt_path", str(checkpoint)]

    # One argument gives root, category, n_anomalies and seed; the test run records the split it used.
    tested = run_anomalib(
        "test", *model, *replay, "--data.num_workers", "0", "--default_root_dir", str(tmp_path / "tested"), cwd=tmp_path
    )
    assert "image_AUROC" in tested.stdout
    (tested_manifest,) = (tmp_path / "tested").rglob("split_manifest.json")
    again = SplitManifest.read(tested_manifest)
    assert (again.train_anomalies, again.test_images) == (trained.train_anomalies, trained.test_images)
    assert (again.category, again.n_anomalies, again.seed) == ("cable", 3, 4)

    predicted = run_anomalib(
        "predict", *model, *replay, "--data.num_workers", "0", "--default_root_dir", str(tmp_path / "predicted"),
        cwd=tmp_path,
    )  # fmt: skip
    images = {path.name for path in (tmp_path / "predicted").rglob("*.png")}
    assert {Path(path).name for path in trained.test_images} <= images, predicted.stdout[-2000:]

    # The documented prediction entry point: files read by the project's reader, through anomalib's CLI.
    image = root / trained.test_images[0]
    run_anomalib(
        "predict", *model, "--data", "anomalib_bgad.data.PredictDataset", "--data.path", str(image),
        "--default_root_dir", str(tmp_path / "files"), cwd=tmp_path,
    )  # fmt: skip
    assert image.name in {path.name for path in (tmp_path / "files").rglob("*.png")}

    # Testing the checkpoint on another category (the training command with another --data.category) is named.
    trees.make_mvtec(root, category="bottle", seed=1)
    other = run_anomalib(
        "test", *model, "--data", "anomalib_bgad.data.FewAnomalyMVTecAD", "--data.root", str(root),
        "--data.category", "bottle", "--data.n_anomalies", "3", "--data.seed", "4", "--data.num_workers", "0",
        "--default_root_dir", str(tmp_path / "other"),
        cwd=tmp_path,
    )  # fmt: skip
    warning = " ".join((other.stdout + other.stderr).split())
    assert "trained on anomalib_bgad.data.FewAnomalyMVTecAD category 'cable'" in warning, warning[-3000:]
    assert "--data.category cable" in warning and f"--data.replay_manifest {manifest_path}" in warning

    # An explicit value that contradicts the manifest is refused before anything runs.
    refused = run_anomalib(
        "test", *model, *replay, "--data.n_anomalies", "5", "--default_root_dir", str(tmp_path / "refused"),
        cwd=tmp_path, check=False,
    )  # fmt: skip
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0
    assert "was written for another split (n_anomalies: manifest 3, datamodule 5)" in " ".join(output.split())
    assert not (tmp_path / "refused").exists() or not list((tmp_path / "refused").rglob("*.png"))
