"""Shared fixtures: tiny MVTec-format trees built from the embedded generator, small BGAD models."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

# Nothing in the tests may reach the network: timm/HF must use local files only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ANOMALIB = str(Path(sys.executable).with_name("anomalib"))

TINY_TREE = {"image_size": 64, "n_train": 6, "n_test_good": 3, "n_test_per_defect": 2}


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


def _run_anomalib(*args: str, cwd: Path, check: bool = True, timeout: float = 1200) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [ANOMALIB, *args],
        cwd=cwd,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check:
        assert result.returncode == 0, (
            f"anomalib {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    return result


@pytest.fixture
def run_anomalib() -> Callable[..., subprocess.CompletedProcess]:
    """Run anomalib's CLI of this environment offline: ``run_anomalib(*args, cwd, check=True, timeout=1200)``.

    With ``check`` a non-zero exit fails the test with the tail of the output.
    """
    return _run_anomalib
