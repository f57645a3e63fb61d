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
