"""Shared fixtures: tiny MVTec-format trees built from the embedded generator, small BGAD models."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

# Nothing in the tests may reach the network: timm/HF must use local files only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ANOMALIB = str(Path(sys.executable).with_name("anomalib"))

TINY_TREE = {"image_size": 64, "n_train": 6, "n_test_good": 3, "n_test_per_defect": 2}


@pytest.fixture(autouse=True)
def _seed_numpy() -> None:
    """FrEIA draws the flows' soft permutations from numpy's global RNG, which ``torch.manual_seed`` leaves alone:
    seed it for every test, so that a test's models are the same in every run."""
    import numpy as np

    np.random.seed(0)


@pytest.fixture(scope="session")
def tiny_mvtec_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MVTec-format tree with one category ``brick`` (64 px, 6 train, 3 good + 10 defective test images)."""
    from anomalib_bgad.embedded import generate_embedded_dataset

    return generate_embedded_dataset(tmp_path_factory.mktemp("tiny_mvtec"), categories=["brick"], **TINY_TREE)


@pytest.fixture
def small_bgad_kwargs() -> dict:
    """Init args for a BGAD small enough to train in seconds on 64 px images."""
    from anomalib_bgad import Bgad

    return {
        "coupling_blocks": 2,
        "fiber_batch_size": 1024,
        "pre_processor": Bgad.configure_pre_processor(image_size=(64, 64)),
        "visualizer": False,
    }


def _run_offline(command: list[str], cwd: Path | None = None, timeout: float = 1200) -> subprocess.CompletedProcess:
    return subprocess.run(
        command,
        cwd=cwd,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _run_anomalib(*args: str, cwd: Path, check: bool = True, timeout: float = 1200) -> subprocess.CompletedProcess:
    result = _run_offline([ANOMALIB, *args], cwd=cwd, timeout=timeout)
    if check:
        assert result.returncode == 0, (
            f"anomalib {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    return result


@pytest.fixture
def run_offline() -> Callable[..., subprocess.CompletedProcess]:
    """Run a command offline (``HF_HUB_OFFLINE=1``), output captured: ``run_offline(command, cwd=None,
    timeout=1200)``. The exit code is the test's to check."""
    return _run_offline


@pytest.fixture
def run_anomalib() -> Callable[..., subprocess.CompletedProcess]:
    """Run anomalib's CLI of this environment offline: ``run_anomalib(*args, cwd, check=True, timeout=1200)``.

    With ``check`` a non-zero exit fails the test with the tail of the output.
    """
    return _run_anomalib


def _train_and_export(data_root: Path, cwd: Path) -> SimpleNamespace:
    model_args = ["--model", "anomalib_bgad.Bgad", "--model.coupling_blocks", "2"]
    data = ["--data", "anomalib.data.MVTecAD", "--data.root", str(data_root), "--data.category", "brick"]
    data += ["--data.train_batch_size", "4", "--data.eval_batch_size", "4", "--data.num_workers", "0"]
    results = cwd / "results"
    _run_anomalib(
        "train", *model_args, *data, "--trainer.max_epochs", "1", "--seed_everything", "0",
        "--default_root_dir", str(results), cwd=cwd,
    )  # fmt: skip
    checkpoint = next(results.rglob("*.ckpt"))
    export_root = cwd / "export"
    export = _run_anomalib(
        "export", "--model", "anomalib_bgad.Bgad", "--ckpt_path", str(checkpoint),
        "--export_type", "openvino", "--export_root", str(export_root), cwd=cwd,
    )  # fmt: skip
    xml = export_root / "weights" / "openvino" / "model.xml"
    return SimpleNamespace(
        checkpoint=checkpoint, model_args=model_args, export_root=export_root, xml=xml, export=export, cwd=cwd
    )


@pytest.fixture(scope="session")
def cli_trained_and_exported(tiny_mvtec_root: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """``anomalib train`` (1 epoch, 2 coupling blocks) then ``anomalib export --export_type openvino``, once per
    test run: under pytest-xdist the first worker that needs it trains and exports, the others wait for it and read
    its result, or its failure (pytest-xdist's documented file-lock pattern).

    Returns ``checkpoint``, ``model_args`` (what test/predict need to rebuild the model), ``export_root``,
    ``xml`` and ``export`` (the export's ``CompletedProcess``, output captured), ``cwd``. Tests must not write
    into these folders: another worker may be reading them.
    """
    if "PYTEST_XDIST_WORKER" not in os.environ:  # one pytest process (no xdist, -n 0 or -p no:xdist)
        return _train_and_export(tiny_mvtec_root, tmp_path_factory.mktemp("cli_run"))
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent  # the run's temp root, common to every worker
    result, failure = shared / "cli_run.pickle", shared / "cli_run.failed"
    with FileLock(shared / "cli_run.lock"):
        if failure.is_file():
            pytest.fail(f"another worker's train + export failed:\n{failure.read_text()}")
        if result.is_file():
            return pickle.loads(result.read_bytes())
        try:
            run = _train_and_export(tiny_mvtec_root, tmp_path_factory.mktemp("cli_run"))
        except BaseException:
            failure.write_text(traceback.format_exc())
            raise
        result.write_bytes(pickle.dumps(run))
    return run
