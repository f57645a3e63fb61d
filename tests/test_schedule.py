"""BGAD's learning-rate schedules and the default epoch count of a fit without an epoch limit."""

from __future__ import annotations

import logging
import math
from itertools import pairwise
from types import SimpleNamespace

import pytest
import torch
from anomalib.data import ImageBatch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from anomalib_bgad import Bgad
from anomalib_bgad.models.bgad import schedule
from anomalib_bgad.models.bgad.schedule import (
    FINAL_LR_FRACTION,
    INITIAL_LR_FRACTION,
    one_cycle_factor,
    warn_if_phase2_never_starts,
)


def test_one_cycle_warms_up_to_the_peak_then_decays_to_a_thousandth() -> None:
    total = 100
    factors = [one_cycle_factor(step, total) for step in range(total + 1)]
    assert factors[0] == pytest.approx(INITIAL_LR_FRACTION)
    peak = factors.index(max(factors))
    assert peak == 10  # 10 % warm-up
    assert max(factors) == pytest.approx(1.0)
    assert all(a < b for a, b in pairwise(factors[: peak + 1]))  # rising
    assert all(a >= b for a, b in pairwise(factors[peak:]))  # then falling
    assert factors[-1] == pytest.approx(FINAL_LR_FRACTION)
    # A run of a single batch still has a valid schedule (torch's OneCycleLR refuses it).
    assert math.isfinite(one_cycle_factor(0, 1)) and math.isfinite(one_cycle_factor(1, 1))


def test_invalid_schedule_is_rejected_naming_the_choices() -> None:
    with pytest.raises(ValueError, match="one_cycle, cosine"):
        Bgad(lr_schedule="linear", coupling_blocks=1)


def _loader() -> DataLoader:
    batch = ImageBatch(image=torch.rand(2, 3, 64, 64), gt_label=torch.zeros(2, dtype=torch.long))
    return DataLoader([batch], batch_size=None)


@pytest.mark.parametrize(("max_epochs", "expected"), [(None, 2), (3, 3)])
def test_a_fit_without_an_epoch_limit_trains_the_default_epochs(
    small_bgad_kwargs: dict, monkeypatch: pytest.MonkeyPatch, max_epochs: int | None, expected: int
) -> None:
    monkeypatch.setattr(schedule, "DEFAULT_MAX_EPOCHS", 2)
    model = Bgad(**small_bgad_kwargs)
    trainer = Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(model, train_dataloaders=_loader())
    assert trainer.current_epoch == expected
    # The one-cycle schedule spans exactly the run: it ends at its final learning rate.
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert lr == pytest.approx(model.learning_rate * FINAL_LR_FRACTION, rel=1e-6)


@pytest.mark.parametrize(
    ("max_epochs", "phase1_epochs", "trains_on_anomalies", "warns"),
    [(1, 1, True, True), (0, 1, True, True), (2, 1, True, False), (1, 1, False, False), (None, 1, True, False)],
)
def test_an_epoch_limit_inside_phase_1_warns_that_the_anomalies_are_never_used(
    caplog: pytest.LogCaptureFixture, max_epochs: int | None, phase1_epochs: int, trains_on_anomalies: bool, warns: bool
) -> None:
    with caplog.at_level(logging.WARNING, logger="anomalib_bgad.models.bgad.schedule"):
        warn_if_phase2_never_starts(SimpleNamespace(max_epochs=max_epochs), phase1_epochs, trains_on_anomalies)
    assert ("never trained on" in caplog.text) is warns
    if warns:
        assert "--trainer.max_epochs" in caplog.text
