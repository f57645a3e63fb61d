"""A line per training epoch and the checkpoint path, in a log file too (not only in the progress
bar); no warning about the frozen backbone's eval mode."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
from anomalib.engine import Engine

from anomalib_bgad import Bgad
from anomalib_bgad.callbacks import EpochLog
from anomalib_bgad.data import FewAnomalyMVTecAD


def _fit(root: Path, output: Path, kwargs: dict, callbacks: list) -> None:
    datamodule = FewAnomalyMVTecAD(
        root=root, category="brick", n_anomalies=2, train_batch_size=4, eval_batch_size=4, num_workers=0
    )
    engine = Engine(
        max_epochs=2, default_root_dir=output, accelerator="cpu", devices=1, logger=False,
        enable_progress_bar=False, callbacks=callbacks,
    )  # fmt: skip
    engine.fit(Bgad(**kwargs), datamodule=datamodule)


@pytest.mark.slow
def test_bgad_logs_each_epoch_and_the_checkpoint(
    tiny_mvtec_root: Path, small_bgad_kwargs: dict, tmp_path: Path, caplog
):
    filters_before = list(warnings.filters)
    with (
        caplog.at_level(logging.INFO, logger="anomalib_bgad.callbacks.epoch_log"),
        warnings.catch_warnings(record=True) as seen,
    ):
        warnings.simplefilter("always")
        _fit(tiny_mvtec_root, tmp_path / "logged", small_bgad_kwargs, [])
    # The frozen backbone is in eval mode on purpose: Lightning's warning about it is silenced, for the fit only.
    assert not [w for w in seen if "in eval mode at the start of training" in str(w.message)]
    assert list(warnings.filters) == filters_before
    lines = [record.getMessage() for record in caplog.records if record.name == "anomalib_bgad.callbacks.epoch_log"]
    assert lines[0].startswith("BGAD: epoch 1/2 (phase 1), loss ")
    assert lines[1].startswith("BGAD: epoch 2/2 (phase 2), loss ")
    assert lines[2].startswith("BGAD: checkpoint ")
    checkpoint = Path(lines[2].removeprefix("BGAD: checkpoint ").split(" (--ckpt_path")[0])
    assert checkpoint.is_file() and checkpoint.suffix == ".ckpt"
    assert len(lines) == 3

    # A trainer that brings its own EpochLog (the demo prints with a label) keeps it; nothing is logged twice.
    printed: list[str] = []
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="anomalib_bgad.callbacks.epoch_log"):
        _fit(tiny_mvtec_root, tmp_path / "own", small_bgad_kwargs, [EpochLog("[own]", emit=printed.append)])
    assert [line.split(",")[0] for line in printed[:2]] == ["[own]: epoch 1/2 (phase 1)", "[own]: epoch 2/2 (phase 2)"]
    assert not [record for record in caplog.records if record.name == "anomalib_bgad.callbacks.epoch_log"]
