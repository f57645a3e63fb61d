"""Reliability of BGAD training (issue #7): numerics, resume, determinism, memory bounds.

Each test injects one fault and checks the observed behaviour; ``docs/reliability.md`` lists them as the
fault report. The DDP boundary tests are in ``tests/test_ddp.py``.

Most tests train on in-memory synthetic batches (64 px, no validation) with a plain Lightning ``Trainer``;
the resume and determinism tests run the real pipeline (``FewAnomalyMVTecAD`` on the tiny tree, anomalib's
``Engine``, with validation and test metrics).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from anomalib.data import ImageBatch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from anomalib_bgad import Bgad
from anomalib_bgad.models.bgad import training_loop
from anomalib_bgad.models.bgad.fibers import fiber_generator
from anomalib_bgad.models.bgad.lightning_model import NonFiniteTrainingError
from anomalib_bgad.models.bgad.schedule import build_optimizer

# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------


def synthetic_batches(n_batches: int = 2, batch_size: int = 4, size: int = 64, seed: int = 0) -> list[ImageBatch]:
    """Random training batches; the last image of each batch is anomalous with a square mask."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for index in range(n_batches):
        label = torch.zeros(batch_size, dtype=torch.long)
        mask = torch.zeros(batch_size, size, size, dtype=torch.bool)
        label[-1] = 1
        mask[-1, size // 4 : size // 2, size // 4 : size // 2] = True
        batches.append(
            ImageBatch(
                image=torch.rand(batch_size, 3, size, size, generator=generator),
                gt_label=label,
                gt_mask=mask,
                image_path=[f"synthetic/{index}_{item}.png" for item in range(batch_size)],
            )
        )
    return batches


def loader(batches: list[ImageBatch]) -> DataLoader:
    """A dataloader that yields the prepared batches as they are."""
    return DataLoader(batches, batch_size=None)


def small_model(small_bgad_kwargs: dict, **overrides: Any) -> Bgad:
    """A small BGAD (2 coupling blocks, 1024-fiber chunks, 64 px); phase 2 from epoch 1."""
    return Bgad(**{"phase1_epochs": 1, **small_bgad_kwargs, **overrides})


def make_trainer(root: Path, max_epochs: int = 2, callbacks: list[Callback] | None = None, **kwargs: Any) -> Trainer:
    """A quiet CPU trainer without validation; checkpoints (if enabled) go below ``root``."""
    return Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=root,
        callbacks=callbacks or [],
        **kwargs,
    )


class EpochRecorder(Callback):
    """Record the logged epoch metrics and the boundary at every epoch end."""

    def __init__(self) -> None:
        self.metrics: list[dict[str, float]] = []
        self.boundaries: list[torch.Tensor] = []

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Bgad) -> None:
        self.metrics.append({k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1})
        self.boundaries.append(pl_module.model.boundary.b_n.clone())


class ChunkCounter:
    """Wrap the training path's ``position_group_log_likelihood``: count calls (one per level and optimiser step),
    optionally poison some with NaN."""

    def __init__(self, model: Bgad, poisoned: set[int] | None = None, every: tuple[int, ...] | None = None) -> None:
        self.calls = 0
        self.poisoned = poisoned or set()
        self.every = every  # (period, first, second, ...): poison these residues of the call index
        self._original = model.model.position_group_log_likelihood
        self._model = model
        model.model.position_group_log_likelihood = self

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        log_likelihood = self._original(*args, **kwargs)
        if not torch.is_grad_enabled():
            return log_likelihood
        call, self.calls = self.calls, self.calls + 1
        poison = call in self.poisoned or (self.every is not None and call % self.every[0] in self.every[1:])
        return log_likelihood * float("nan") if poison else log_likelihood


def all_finite(state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether the model's floating tensors (weights, boundary) are finite; post-processor stats are inf/NaN
    until a validation run fills them, so they are not checked."""
    return all(
        bool(torch.isfinite(value).all())
        for key, value in state_dict.items()
        if key.startswith("model.") and torch.is_tensor(value) and value.is_floating_point()
    )


# ---------------------------------------------------------------------------------------------------------------
# 1. Numerics
# ---------------------------------------------------------------------------------------------------------------


def adam_steps(model: Bgad) -> list[int]:
    """Adam's step count per flow parameter: a skipped (non-finite) step leaves it, and the weights, alone."""
    optimizer = model.optimizers().optimizer
    return sorted({int(optimizer.state[p]["step"]) for p in model.model.flows.parameters() if p in optimizer.state})


def test_absurd_learning_rate_stops_with_a_clear_error_and_no_checkpoint(
    small_bgad_kwargs: dict, tmp_path: Path
) -> None:
    """Fault: learning rate 1e30. The first step blows the flows up; every later step is NaN and skipped."""
    model = small_model(small_bgad_kwargs, learning_rate=1e30, nonfinite_patience=2)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = make_trainer(tmp_path, max_epochs=3, callbacks=[checkpoints])
    with pytest.raises(NonFiniteTrainingError) as error:
        trainer.fit(model, train_dataloaders=loader(synthetic_batches(3)))
    message = str(error.value)
    assert "2 optimiser steps in a row had a non-finite log-likelihood" in message
    assert "learning rate is too high" in message
    assert "learning_rate=1e+30" in message
    for knob in ("--model.learning_rate", "--model.gradient_clip_norm", "--model.clamp_alpha"):
        assert knob in message
    # One step per batch (all levels): the first is finite and steps; the next two are NaN and skipped, and the
    # check at the end of the third batch stops training.
    assert trainer.global_step == 3  # steps attempted
    assert adam_steps(model) == [1]  # steps taken
    assert not list(tmp_path.rglob("*.ckpt"))  # stopped inside epoch 0: no checkpoint, certainly no NaN one
    assert torch.isfinite(model.model.boundary.b_n).all()


@pytest.mark.parametrize("fused", [True, False], ids=["fused-adam", "plain-adam"])
@pytest.mark.parametrize("where", ["log_likelihood", "gradient"])
def test_a_transient_nonfinite_step_is_skipped_counted_and_kept_out_of_the_boundary(
    small_bgad_kwargs: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
    fused: bool,
) -> None:
    """Fault: one NaN log-likelihood (or one NaN gradient) in epoch 1. That step is skipped, training goes on.

    With the fused Adam (CPU, CUDA) the skip happens on the device; with the plain Adam (devices without a fused
    kernel) on the host.
    """
    monkeypatch.setattr(training_loop, "build_optimizer", functools.partial(build_optimizer, fused=fused))
    model = small_model(small_bgad_kwargs)
    # Call 6 is epoch 1 (phase 2), batch 0, level 0 (2 batches x 1 step x 3 levels per epoch).
    counter = ChunkCounter(model, poisoned={6} if where == "log_likelihood" else set())
    if where == "gradient":  # finite loss, NaN gradient of a level-0 flow weight in the backward of that step
        parameter = next(model.model.flows[0].parameters())
        parameter.register_hook(lambda grad: grad * float("nan") if counter.calls == 9 else grad)
    collected: list[list[float]] = []
    boundary = model.model.boundary
    finish = boundary.finish_epoch

    def spy() -> None:
        collected.append(boundary.epoch_count.tolist())  # accepted step estimates per level
        finish()

    boundary.finish_epoch = spy
    before: dict[str, torch.Tensor] = {}

    class Snapshot(Callback):  # the weights before and after the poisoned step (epoch 1, batch 0)
        def on_train_batch_start(self, trainer: Trainer, pl_module: Bgad, batch: Any, batch_idx: int) -> None:
            if (trainer.current_epoch, batch_idx) == (1, 0):
                before.update({k: v.clone() for k, v in pl_module.model.flows.state_dict().items()})

        def on_train_batch_end(self, trainer: Trainer, pl_module: Bgad, *args: Any) -> None:
            if (trainer.current_epoch, args[-1]) == (1, 0):
                for key, value in pl_module.model.flows.state_dict().items():
                    torch.testing.assert_close(value, before[key], rtol=0, atol=0, msg=key)

    recorder = EpochRecorder()
    trainer = make_trainer(tmp_path, max_epochs=2, callbacks=[recorder, Snapshot()])
    trainer.fit(model, train_dataloaders=loader(synthetic_batches(2)))

    assert counter.calls == 12  # 2 epochs x 2 batches x 1 step x 3 levels
    # Lightning counts the optimiser steps called: the fused Adam is called and skips on the device, the plain
    # Adam is not called for the skipped step.
    assert trainer.global_step == (4 if fused else 3)
    assert adam_steps(model) == [3]  # ... of which one skipped: no optimiser update for it
    assert [m["train_nonfinite_steps"] for m in recorder.metrics] == [0.0, 1.0]
    # Step estimates accepted per level: the skipped step's boundary is not among them.
    assert collected == [[2.0, 2.0, 2.0], [1.0, 1.0, 1.0]]
    assert torch.isfinite(model.model.boundary.b_n).all()
    assert all_finite(model.state_dict())
    assert bool(model.optimizers().optimizer.defaults["fused"]) is fused


def test_nan_backbone_features_are_dropped_counted_and_the_image_named(
    small_bgad_kwargs: dict,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Fault: a NaN feature (one fiber of one image, every training batch). It is dropped before the flows."""
    model = small_model(small_bgad_kwargs, cache_features=False)  # the backbone runs on every batch
    extractor = model.model.feature_extractor
    original = extractor.forward

    def poisoned(images: torch.Tensor) -> list[torch.Tensor]:
        features = original(images)
        if model.training:  # training batches only
            features[0][0, :, 3, 5] = float("nan")  # image 0 of the batch, level 0, position (3, 5)
        return features

    extractor.forward = poisoned
    recorder = EpochRecorder()
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt")
    trainer = make_trainer(tmp_path, max_epochs=2, callbacks=[recorder, checkpoints])
    with caplog.at_level(logging.WARNING, logger="anomalib_bgad.models.bgad.numerics"):
        trainer.fit(model, train_dataloaders=loader(synthetic_batches(2)))

    assert [m["train_nonfinite_fibers"] for m in recorder.metrics] == [2.0, 2.0]  # one fiber per batch
    assert [m["train_nonfinite_steps"] for m in recorder.metrics] == [0.0, 0.0]  # nothing reached the flows
    warnings = "\n".join(r.getMessage() for r in caplog.records if "contain NaN/Inf" in r.getMessage())
    # Each bad image is named once (not once per epoch), the clean ones never.
    assert warnings.count("synthetic/0_0.png") == 1
    assert warnings.count("synthetic/1_0.png") == 1
    assert "synthetic/0_1.png" not in warnings
    assert adam_steps(model) == [4]
    assert torch.isfinite(model.model.boundary.b_n).all()
    checkpoint = torch.load(checkpoints.best_model_path, map_location="cpu", weights_only=True)
    assert all_finite(checkpoint["state_dict"])


def test_frequent_nonfinite_steps_stop_training_at_the_epoch_end(small_bgad_kwargs: dict, tmp_path: Path) -> None:
    """Fault: 2 of every 3 steps NaN (never 10 in a row). Stop rule part 2 (> 50 % of an epoch) ends training."""
    model = small_model(small_bgad_kwargs)
    ChunkCounter(model, every=(9, 3, 4, 5, 6, 7, 8))  # 3 calls (levels) per step: steps 1 and 2 of every 3
    trainer = make_trainer(tmp_path, max_epochs=2, callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt")])
    with pytest.raises(NonFiniteTrainingError, match="more than 50% of epoch 0's optimiser steps"):
        trainer.fit(model, train_dataloaders=loader(synthetic_batches(3)))
    assert model.current_epoch == 0
    assert trainer.global_step == 3
    assert adam_steps(model) == [1]
    assert (model.model.boundary.b_n == 0).all()  # the boundary was never updated
    assert not list(tmp_path.rglob("*.ckpt"))


def test_scoring_a_nan_image_raises_naming_it_instead_of_nan_scores(small_bgad_kwargs: dict) -> None:
    """Fault: NaN pixels in an evaluation image, and NaN features of an evaluation image."""
    model = small_model(small_bgad_kwargs).eval()
    batch = synthetic_batches(1, batch_size=3)[0]
    with torch.no_grad():
        output = model.validation_step(batch)  # finite input: scores come out
    assert torch.isfinite(output.pred_score).all()

    batch.image[1, 0, 10:12, 10:12] = float("nan")
    with torch.no_grad(), pytest.raises(ValueError, match=r"input images themselves contain NaN") as error:
        model.validation_step(batch)
    assert "synthetic/0_1.png" in str(error.value)
    assert "synthetic/0_0.png" not in str(error.value)

    batch = synthetic_batches(1, batch_size=3)[0]
    extractor = model.model.feature_extractor
    original = extractor.forward

    def poisoned(images: torch.Tensor) -> list[torch.Tensor]:
        features = original(images)
        features[2][2, 0, 0, 0] = float("inf")  # image 2, level 2
        return features

    extractor.forward = poisoned
    # validation, `anomalib test` and `anomalib predict` all check (anomalib's own test/predict steps do not).
    for step in (model.validation_step, model.test_step, model.predict_step):
        with torch.no_grad(), pytest.raises(ValueError, match=r"backbone features or the flows") as error:
            step(batch, 0)
        assert "synthetic/0_2.png" in str(error.value)


def test_a_checkpoint_with_nonfinite_weights_is_refused(small_bgad_kwargs: dict) -> None:
    """Fault: a NaN weight in the flows at save time (e.g. after a failure the checks missed)."""
    model = small_model(small_bgad_kwargs)
    model.on_save_checkpoint({"state_dict": model.state_dict()})  # finite: fine
    with torch.no_grad():
        next(model.model.flows[1].parameters()).view(-1)[0] = float("nan")
    with pytest.raises(NonFiniteTrainingError, match="refusing to write a checkpoint") as error:
        model.on_save_checkpoint({"state_dict": model.state_dict()})
    assert "skipped" not in str(error.value)  # no step was skipped: the message must not say so


# ---------------------------------------------------------------------------------------------------------------
# 2. Checkpoints and resume
# ---------------------------------------------------------------------------------------------------------------


def small_kwargs() -> dict:
    """``small_bgad_kwargs`` for module-scoped fixtures (which cannot use the function-scoped fixture)."""
    return {
        "coupling_blocks": 2,
        "fiber_batch_size": 1024,
        "pre_processor": Bgad.configure_pre_processor(image_size=(64, 64)),
        "visualizer": False,
    }


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of a small BGAD trained 2 epochs (phase 1 + phase 2) on synthetic batches."""
    root = tmp_path_factory.mktemp("trained")
    model = Bgad(phase1_epochs=1, **small_kwargs())
    checkpoints = ModelCheckpoint(dirpath=root, filename="bgad")
    make_trainer(root, max_epochs=2, callbacks=[checkpoints]).fit(model, train_dataloaders=loader(synthetic_batches(1)))
    return Path(checkpoints.best_model_path)


def test_checkpoints_load_with_weights_only_and_carry_boundary_and_training_state(trained_checkpoint: Path) -> None:
    raw = torch.load(trained_checkpoint, map_location="cpu", weights_only=True)  # plain torch, no allowlist
    boundary = raw["state_dict"]["model.boundary.b_n"]
    assert torch.isfinite(boundary).all()
    assert (boundary != 0).all()
    state = raw["bgad_training_state"]
    assert state["finished_epoch"] == 1  # the checkpoint was written after epoch 1's boundary/LR update
    assert state["boundary"]["epoch_count"] == [0.0, 0.0, 0.0]  # the epoch's update was applied and reset
    assert raw["lr_schedulers"][0]["last_epoch"] == 2  # one-cycle: stepped once per batch (1 batch x 2 epochs)
    restored = Bgad.load_from_checkpoint(trained_checkpoint, map_location="cpu")  # anomalib: weights_only=True
    torch.testing.assert_close(restored.model.boundary.b_n, boundary, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"layers": (2, 3)}, ["layers: checkpoint (1, 2, 3), this model (2, 3)", "--model.layers [1,2,3]"]),
        (
            {"backbone": "tf_efficientnet_lite1", "pre_trained": False},
            [
                "backbone: checkpoint 'tf_efficientnet_lite0', this model 'tf_efficientnet_lite1'",
                "--model.backbone tf_efficientnet_lite0",
            ],
        ),
        ({"coupling_blocks": 1}, ["coupling_blocks: checkpoint 2, this model 1", "--model.coupling_blocks 2"]),
    ],
)
def test_a_checkpoint_of_another_architecture_fails_with_a_clear_message(
    trained_checkpoint: Path,
    tmp_path: Path,
    override: dict,
    expected: list[str],
) -> None:
    """Fault: test/predict with a model built with another backbone / level set / flow depth than the checkpoint."""
    model = Bgad(**{**small_kwargs(), **override})
    trainer = make_trainer(tmp_path)
    # anomalib's test/predict/export path: build the model from arguments, then load the checkpoint into it.
    with pytest.raises(ValueError, match="does not fit the BGAD model") as error:
        trainer.predict(model, dataloaders=loader(synthetic_batches(1)), ckpt_path=trained_checkpoint)
    for text in expected:
        assert text in str(error.value)
    # load_from_checkpoint(**override): Lightning overwrites the saved hyper-parameters with the overrides before
    # the model sees them, so here the mismatch is found from the tensors (names/shapes), still before loading.
    with pytest.raises(ValueError, match="does not fit the BGAD model") as error:
        Bgad.load_from_checkpoint(trained_checkpoint, map_location="cpu", **override)
    assert "not in the checkpoint" in str(error.value) or "not in this model" in str(error.value)


def test_a_checkpoint_with_other_border_padding_fails_naming_it(trained_checkpoint: Path, tmp_path: Path) -> None:
    """Same tensors, other features: only the saved init arg tells the mismatch, and the error names the fix."""
    model = Bgad(**{**small_kwargs(), "border_padding": 16})
    with pytest.raises(ValueError, match="does not fit the BGAD model") as error:
        make_trainer(tmp_path).predict(model, dataloaders=loader(synthetic_batches(1)), ckpt_path=trained_checkpoint)
    assert "border_padding: checkpoint 32, this model 16" in str(error.value)
    assert "--model.border_padding 32" in str(error.value)


def load_without_init_arg(
    checkpoint: Path, key: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> tuple[Bgad, Path]:
    """Save ``checkpoint`` without the init arg ``key`` (as an older version wrote it), then load it as export does."""
    old = torch.load(checkpoint, map_location="cpu", weights_only=True)
    del old["hyper_parameters"][key]
    old_path = tmp_path / f"bgad_without_{key}.ckpt"
    torch.save(old, old_path)
    with caplog.at_level(logging.WARNING, logger="anomalib_bgad.models.bgad.checkpoint"):
        return Bgad.load_from_checkpoint(old_path, map_location="cpu"), old_path  # what anomalib export does


def test_a_checkpoint_from_before_border_padding_is_scored_unpadded(
    trained_checkpoint: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """0.2.0 checkpoints have no border_padding init arg: export and load_from_checkpoint must not pad their images."""
    restored, _ = load_without_init_arg(trained_checkpoint, "border_padding", tmp_path, caplog)
    assert "made before border_padding existed" in caplog.text
    assert restored.hparams["border_padding"] == 0
    unpadded = Bgad(**{**small_kwargs(), "border_padding": 0})
    padded = Bgad(**small_kwargs())
    for model in (unpadded, padded):
        model.load_state_dict(restored.state_dict())
        model.eval()
    images = synthetic_batches(1)[0].image
    with torch.no_grad():
        scores = [model.model(images).pred_score for model in (restored.eval(), unpadded, padded)]
    torch.testing.assert_close(scores[0], scores[1], rtol=0, atol=0)
    assert not torch.allclose(scores[0], scores[2], atol=1e-4)  # padding changes the scores: the test can fail


def test_a_checkpoint_from_before_the_top_share_score_is_scored_by_the_maximum(
    trained_checkpoint: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """0.3.0 checkpoints have no image_score_top_share: their stored image threshold was fitted to the map's maximum."""
    restored, old_path = load_without_init_arg(trained_checkpoint, "image_score_top_share", tmp_path, caplog)
    restored.eval()
    assert "made before image_score_top_share existed" in caplog.text
    assert restored.hparams["image_score_top_share"] == 0.0
    images = synthetic_batches(1)[0].image
    with torch.no_grad():
        output = restored.model(images)
    torch.testing.assert_close(output.pred_score, output.anomaly_map.amax(dim=(-3, -2, -1)), rtol=0, atol=0)
    # A value set explicitly is kept; a checkpoint that has the init arg keeps its own.
    chosen = Bgad(**{**small_kwargs(), "image_score_top_share": 0.05})
    chosen.on_load_checkpoint(torch.load(old_path, map_location="cpu", weights_only=True))
    assert chosen.model.image_score.top_share == 0.05
    current = Bgad.load_from_checkpoint(trained_checkpoint, map_location="cpu")
    assert current.model.image_score.top_share == 0.01


def test_mid_epoch_training_state_survives_a_checkpoint_round_trip(small_bgad_kwargs: dict, tmp_path: Path) -> None:
    """The epoch accumulators (boundary sums, step counters) are saved, so a mid-epoch resume averages the epoch."""
    source = small_model(small_bgad_kwargs)
    yes, no = torch.tensor(True), torch.tensor(False)
    source.model.boundary.accumulate(0, torch.tensor(-0.5), yes)
    source.model.boundary.accumulate(0, torch.tensor(-0.25), yes)
    source.model.boundary.accumulate(1, torch.tensor(-0.75), yes)
    for ok in (yes, no, no):
        source.guard.check_step(ok, yes, yes)
    source.nonfinite_fibers.count, source.epoch_record.finished_epoch = 3, 4
    checkpoint = {"state_dict": source.state_dict(), "hyper_parameters": dict(source.hparams)}
    source.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "state.ckpt")
    checkpoint = torch.load(tmp_path / "state.ckpt", weights_only=True)
    target = small_model(small_bgad_kwargs)
    target.on_load_checkpoint(checkpoint)
    assert target.guard.training_state() == {"steps": 3, "skipped": 2, "run": 2, "problem": 1}
    assert (target.nonfinite_fibers.count, target.epoch_record.finished_epoch) == (3, 4)
    target.model.boundary.finish_epoch()
    assert target.model.boundary.b_n.tolist() == [-0.375, -0.75, 0.0]


class Interrupt(Callback):
    """Stop a run by raising at the start of an epoch, like a killed job (the last checkpoint stays)."""

    class Interrupted(RuntimeError):  # noqa: N818 (a stop signal, not an error)
        pass

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: Trainer, pl_module: Bgad) -> None:
        if trainer.current_epoch == self.epoch:
            raise self.Interrupted


def shuffled_loader(seed: int = 0) -> DataLoader:
    """8 synthetic images, shuffled by the global torch RNG (a plain RandomSampler), batches of 4."""
    items = [item for batch in synthetic_batches(2, seed=seed) for item in batch]
    return DataLoader(items, batch_size=4, shuffle=True, collate_fn=ImageBatch.collate)


# Float tolerance for "the same" results of two runs: differences seen are ~1e-7 relative (last-bit rounding).
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}


def model_state(model: Bgad) -> dict[str, torch.Tensor]:
    """The model's own tensors (flows, boundary, backbone)."""
    return {key: value for key, value in model.state_dict().items() if key.startswith("model.")}


def optimizer_tensors(trainer: Trainer) -> list[torch.Tensor]:
    """Every tensor of the optimizer state (Adam moments, step counts)."""
    state = trainer.optimizers[0].state_dict()["state"]
    return [value for key in sorted(state) for value in state[key].values()]


class EpochChunks(Callback):
    """Record how many step estimates each epoch's boundary update averaged, and the boundary."""

    def __init__(self) -> None:
        self.chunks: list[int] = []
        self.boundaries: list[torch.Tensor] = []

    def on_train_start(self, trainer: Trainer, pl_module: Bgad) -> None:
        boundary = pl_module.model.boundary
        finish = boundary.finish_epoch

        def spy() -> None:
            self.chunks.append(int(boundary.epoch_count.sum()))
            finish()

        boundary.finish_epoch = spy

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Bgad) -> None:
        self.boundaries.append(pl_module.model.boundary.b_n.clone())


@pytest.fixture(scope="module")
def shuffled_reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An uninterrupted 3-epoch run (phase 1, then 2 epochs of phase 2) on the shuffled synthetic loader."""
    seed_everything(11)
    model = Bgad(phase1_epochs=1, **small_kwargs())
    recorder = EpochChunks()
    trainer = make_trainer(tmp_path_factory.mktemp("shuffled"), max_epochs=3, callbacks=[recorder])
    trainer.fit(model, train_dataloaders=shuffled_loader())
    return {"model": model, "trainer": trainer, "recorder": recorder}


@pytest.mark.slow
def test_resume_from_a_phase2_checkpoint_continues_exactly(shuffled_reference: dict[str, Any], tmp_path: Path) -> None:
    """Fault: a run killed at the start of epoch 2 (phase 2), resumed with ``ckpt_path``; shuffled loader."""
    reference, reference_trainer = shuffled_reference["model"], shuffled_reference["trainer"]
    seed_everything(11)
    interrupted = Bgad(phase1_epochs=1, **small_kwargs())
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "b", save_last=True)
    trainer = make_trainer(tmp_path / "b", max_epochs=3, callbacks=[checkpoints, Interrupt(epoch=2)])
    with pytest.raises(Interrupt.Interrupted):
        trainer.fit(interrupted, train_dataloaders=shuffled_loader())
    last = tmp_path / "b" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    saved_boundary = saved["state_dict"]["model.boundary.b_n"]
    assert saved["epoch"] == 1  # phase 2 (phase1_epochs=1)
    torch.testing.assert_close(saved_boundary, shuffled_reference["recorder"].boundaries[1], **TOLERANCE)

    seed_everything(11)
    resumed = Bgad(phase1_epochs=1, **small_kwargs())
    started: list[tuple[int, bool, torch.Tensor]] = []

    class Start(Callback):
        def on_train_epoch_start(self, trainer: Trainer, pl_module: Bgad) -> None:
            started.append((trainer.current_epoch, pl_module.in_phase2, pl_module.model.boundary.b_n.clone()))

    resumed_trainer = make_trainer(tmp_path / "c", max_epochs=3, callbacks=[Start()])
    resumed_trainer.fit(resumed, train_dataloaders=shuffled_loader(), ckpt_path=last)

    (epoch, phase2, boundary) = started[0]
    assert (epoch, phase2) == (2, True)  # same phase
    torch.testing.assert_close(boundary, saved_boundary, rtol=0, atol=0)  # the boundary is restored
    assert resumed_trainer.global_step == reference_trainer.global_step
    # Same optimizer and scheduler state, same weights and boundary as the uninterrupted run, to float tolerance
    # (CPU kernels may round differently between runs, e.g. with buffer alignment: ~1e-7 relative seen).
    for mine, theirs in zip(optimizer_tensors(resumed_trainer), optimizer_tensors(reference_trainer), strict=True):
        torch.testing.assert_close(mine, theirs, **TOLERANCE)
    assert (
        resumed_trainer.lr_scheduler_configs[0].scheduler.state_dict()
        == reference_trainer.lr_scheduler_configs[0].scheduler.state_dict()
    )
    for key, value in model_state(reference).items():
        torch.testing.assert_close(model_state(resumed)[key], value, **TOLERANCE, msg=key)


@pytest.mark.slow
def test_resume_from_a_mid_epoch_checkpoint_keeps_the_epoch_accumulators(
    shuffled_reference: dict[str, Any],
    tmp_path: Path,
) -> None:
    """Fault: killed in the middle of epoch 2 after a step checkpoint (``every_n_train_steps``), then resumed.

    The epoch's boundary still averages all its chunks (before and after the interruption) and the step count
    matches. Lightning restarts a plain DataLoader's iterator mid-epoch, so the rest of the epoch sees other
    batches than the uninterrupted run: results are close, not equal (exact only with a stateful loader).
    """

    class StopInEpoch2(Callback):
        def on_train_batch_start(self, trainer: Trainer, pl_module: Bgad, batch: Any, batch_idx: int) -> None:
            if trainer.current_epoch == 2 and batch_idx == 1:
                raise Interrupt.Interrupted

    seed_everything(11)
    interrupted = Bgad(phase1_epochs=1, **small_kwargs())
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "b", every_n_train_steps=1, save_last=True)
    trainer = make_trainer(tmp_path / "b", max_epochs=3, callbacks=[checkpoints, StopInEpoch2()])
    with pytest.raises(Interrupt.Interrupted):
        trainer.fit(interrupted, train_dataloaders=shuffled_loader())
    saved = torch.load(tmp_path / "b" / "last.ckpt", weights_only=True)
    state = saved["bgad_training_state"]
    assert (saved["epoch"], state["guard"]["steps"]) == (2, 1)  # half of epoch 2: batch 0's step
    assert state["boundary"]["epoch_count"] == [1.0, 1.0, 1.0]

    seed_everything(11)
    resumed = Bgad(phase1_epochs=1, **small_kwargs())
    recorder = EpochChunks()
    resumed_trainer = make_trainer(tmp_path / "c", max_epochs=3, callbacks=[recorder])
    resumed_trainer.fit(resumed, train_dataloaders=shuffled_loader(), ckpt_path=tmp_path / "b" / "last.ckpt")

    reference = shuffled_reference["recorder"]
    # The whole epoch's step estimates (2 steps x 3 levels), not only those after the interruption.
    assert recorder.chunks == [reference.chunks[2]] == [6]
    assert resumed_trainer.global_step == shuffled_reference["trainer"].global_step
    assert resumed.current_epoch == 3
    torch.testing.assert_close(recorder.boundaries[0], reference.boundaries[2], rtol=0.05, atol=0.0)


# ---------------------------------------------------------------------------------------------------------------
# 2b/4. The real pipeline: resume in phase 2 and determinism (FewAnomalyMVTecAD, anomalib Engine, test metrics)
# ---------------------------------------------------------------------------------------------------------------

PIPELINE_SEED = 5
PIPELINE_EPOCHS = 3  # epoch 0: phase 1; epochs 1-2: phase 2


def pipeline_datamodule(root: Path, seed: int = PIPELINE_SEED) -> Any:
    """The project's datamodule on the tiny tree: 2 known anomalies, 1 pseudo anomaly per epoch."""
    from anomalib_bgad.data import FewAnomalyMVTecAD

    return FewAnomalyMVTecAD(
        root=root,
        category="brick",
        n_anomalies=2,
        pseudo_anomaly_count=1,
        repeat_anomalies=1,
        train_on_anomalies=True,
        train_batch_size=4,
        eval_batch_size=8,
        num_workers=0,
        seed=seed,
    )


def batch_digest(batch: Any) -> str:
    """Hash of what a training batch holds: pixels, masks, labels, paths."""
    digest = hashlib.sha256()
    for tensor in (batch.image, batch.gt_mask, batch.gt_label):
        if tensor is not None:
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(repr(list(batch.image_path or [])).encode())
    return digest.hexdigest()


def split_of(datamodule: Any) -> dict[str, list]:
    """The train/test/val split as (image path, label, mask path) rows."""
    columns = ["image_path", "label_index", "mask_path"]
    return {
        name: sorted(map(tuple, getattr(datamodule, f"{name}_data").samples[columns].astype(str).to_numpy().tolist()))
        for name in ("train", "test", "val")
    }


class PipelineRecorder(Callback):
    """Record training batches (before pre-processing), per-epoch boundaries and epoch starts."""

    def __init__(self) -> None:
        self.batches: list[str] = []
        self.boundaries: dict[int, torch.Tensor] = {}
        self.starts: list[tuple[int, bool, torch.Tensor, float]] = []

    def on_train_epoch_start(self, trainer: Trainer, pl_module: Bgad) -> None:
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        self.starts.append((trainer.current_epoch, pl_module.in_phase2, pl_module.model.boundary.b_n.clone(), lr))

    def on_train_batch_start(self, trainer: Trainer, pl_module: Bgad, batch: Any, batch_idx: int) -> None:
        self.batches.append(batch_digest(batch))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Bgad) -> None:
        self.boundaries[trainer.current_epoch] = pl_module.model.boundary.b_n.clone()


def run_pipeline(
    data_root: Path,
    out: Path,
    callbacks: list[Callback],
    ckpt_path: Path | None = None,
    test: bool = True,
) -> dict[str, Any]:
    """Seed, build datamodule + model, fit (optionally resuming), test; return what the comparisons need."""
    from anomalib.engine import Engine

    seed_everything(PIPELINE_SEED)
    datamodule = pipeline_datamodule(data_root)
    model = Bgad(phase1_epochs=1, **small_kwargs())
    engine = Engine(
        max_epochs=PIPELINE_EPOCHS,
        default_root_dir=out,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    engine.fit(model=model, datamodule=datamodule, ckpt_path=ckpt_path)
    result = {
        "model": model,
        "datamodule": datamodule,
        "trainer": engine.trainer,
        "checkpoint": Path(engine.trainer.checkpoint_callback.best_model_path),
    }
    if test:
        result["metrics"] = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
    return result


@pytest.fixture(scope="module")
def reference_run(tiny_mvtec_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One uninterrupted pipeline run (3 epochs, then test), recorded."""
    recorder = PipelineRecorder()
    run = run_pipeline(tiny_mvtec_root, tmp_path_factory.mktemp("reference"), [recorder])
    return {**run, "recorder": recorder}


@pytest.mark.slow
def test_a_phase2_run_interrupted_and_resumed_with_ckpt_path_matches_the_uninterrupted_run(
    reference_run: dict[str, Any],
    tiny_mvtec_root: Path,
    tmp_path: Path,
) -> None:
    """Fault: the job dies at the start of epoch 2 (phase 2) and is resumed from the last checkpoint."""
    with pytest.raises(Interrupt.Interrupted):
        run_pipeline(tiny_mvtec_root, tmp_path / "interrupted", [Interrupt(epoch=2)], test=False)
    checkpoint = next((tmp_path / "interrupted").rglob("*.ckpt"))
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["epoch"] == 1  # written at the end of epoch 1 (phase 2)

    recorder = PipelineRecorder()
    resumed = run_pipeline(tiny_mvtec_root, tmp_path / "resumed", [recorder], ckpt_path=checkpoint)
    reference = reference_run["recorder"]

    epoch, phase2, boundary, lr = recorder.starts[0]
    assert (epoch, phase2) == (2, True)  # same phase
    torch.testing.assert_close(boundary, saved["state_dict"]["model.boundary.b_n"], rtol=0, atol=0)  # restored
    torch.testing.assert_close(boundary, reference.boundaries[1], **TOLERANCE)  # same boundary
    assert lr == reference.starts[2][3]  # same learning rate (scheduler state)
    assert recorder.batches == reference.batches[-len(recorder.batches) :]  # same data (pseudo anomalies too)
    assert resumed["trainer"].global_step == reference_run["trainer"].global_step
    for mine, theirs in zip(
        optimizer_tensors(resumed["trainer"]), optimizer_tensors(reference_run["trainer"]), strict=True
    ):
        torch.testing.assert_close(mine, theirs, **TOLERANCE)
    for key, value in model_state(reference_run["model"]).items():
        torch.testing.assert_close(model_state(resumed["model"])[key], value, **TOLERANCE, msg=key)
    assert resumed["metrics"] == pytest.approx(reference_run["metrics"], abs=1e-5)


@pytest.mark.slow
def test_two_runs_with_the_same_seed_give_the_same_splits_pseudo_anomalies_and_metrics(
    reference_run: dict[str, Any],
    tiny_mvtec_root: Path,
    tmp_path: Path,
) -> None:
    recorder = PipelineRecorder()
    again = run_pipeline(tiny_mvtec_root, tmp_path / "again", [recorder])
    reference = reference_run["recorder"]

    assert split_of(again["datamodule"]) == split_of(reference_run["datamodule"])  # same splits
    assert recorder.batches == reference.batches  # same batches, known and pseudo anomalies, in the same order
    for epoch, boundary in reference.boundaries.items():
        torch.testing.assert_close(recorder.boundaries[epoch], boundary, **TOLERANCE)
    for key, value in model_state(reference_run["model"]).items():
        torch.testing.assert_close(model_state(again["model"])[key], value, **TOLERANCE, msg=key)
    assert again["metrics"] == pytest.approx(reference_run["metrics"], abs=1e-5)
    assert set(again["metrics"]) >= {"image_AUROC", "pixel_AUROC", "pixel_AUPRO"}

    # The comparison can fail: another seed draws other known anomalies and/or other pseudo anomalies.
    def first_epoch(seed: int) -> tuple[dict[str, list], list[str]]:
        datamodule = pipeline_datamodule(tiny_mvtec_root, seed=seed)
        datamodule.setup()
        return split_of(datamodule), [batch_digest(batch) for batch in datamodule.train_dataloader()]

    assert first_epoch(PIPELINE_SEED) == first_epoch(PIPELINE_SEED)
    assert first_epoch(PIPELINE_SEED) != first_epoch(PIPELINE_SEED + 1)


@pytest.mark.slow
def test_torch_deterministic_mode_runs_and_gives_the_same_result(
    shuffled_reference: dict[str, Any],
    tmp_path: Path,
) -> None:
    """``Trainer(deterministic=True)`` (``torch.use_deterministic_algorithms(True)``; the setting to use on GPU)
    raises for no BGAD op and, on CPU, trains the same model as the default settings."""
    seed_everything(11)
    model = Bgad(phase1_epochs=1, **small_kwargs())
    trainer = make_trainer(tmp_path, max_epochs=3, deterministic=True)
    trainer.fit(model, train_dataloaders=shuffled_loader())
    assert torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)  # leave the process as the other tests expect it
    for key, value in model_state(shuffled_reference["model"]).items():
        torch.testing.assert_close(model_state(model)[key], value, **TOLERANCE, msg=key)


@pytest.mark.slow
def test_the_fiber_shuffle_seed_does_not_depend_on_python_hash_randomisation(monkeypatch: pytest.MonkeyPatch) -> None:
    """``hash((seed, epoch, batch))`` of ints is not salted by PYTHONHASHSEED (unlike str): same in any process."""
    code = (
        "import os, torch; os.environ['PL_GLOBAL_SEED'] = '123'\n"
        "from anomalib_bgad.models.bgad.fibers import fiber_generator\n"
        "generator = fiber_generator(4, 7)\n"
        "print(hash('bgad'), torch.randperm(1000, generator=generator)[:20].tolist())"
    )
    hash_seed = "1" if os.environ.get("PYTHONHASHSEED") != "1" else "2"
    other = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONHASHSEED": hash_seed},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    monkeypatch.setenv("PL_GLOBAL_SEED", "123")
    here = torch.randperm(1000, generator=fiber_generator(4, 7))[:20].tolist()
    other_str_hash, other_order = other.split(" ", 1)
    assert int(other_str_hash) != hash("bgad")  # the two processes do salt str hashes differently ...
    assert other_order == str(here)  # ... and still shuffle the fibers alike
    monkeypatch.setenv("PL_GLOBAL_SEED", "124")
    another_seed = torch.randperm(1000, generator=fiber_generator(4, 7))[:20]
    assert another_seed.tolist() != here


# ---------------------------------------------------------------------------------------------------------------
# 5. Memory bounds
# ---------------------------------------------------------------------------------------------------------------

MEMORY_PROBE = '''
"""Train a few BGAD steps per (image size, fiber_batch_size); report the flow-training memory of the worst step."""
import ctypes
import gc
import json
import sys

import torch
from anomalib.data import ImageBatch
from lightning.pytorch import Trainer, seed_everything
from torch.utils.data import DataLoader

from anomalib_bgad import Bgad

libc = ctypes.CDLL("libc.so.6")


def rss(key):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise RuntimeError(key)


def measure(size, fiber_batch_size):
    seed_everything(0)
    batches = [
        ImageBatch(image=torch.rand(2, 3, size, size), gt_label=torch.zeros(2, dtype=torch.long)) for _ in range(2)
    ]
    model = Bgad(
        layers=(1,),
        coupling_blocks=2,
        fiber_batch_size=fiber_batch_size,
        pre_processor=False,
        post_processor=False,
        evaluator=False,
        visualizer=False,
    )
    steps = []
    saved = {"now": 0, "peak": 0}
    # Window: from right after the backbone (the batch's features exist) to the end of the training step, i.e.
    # the flow-training part. The kernel's peak-RSS counter (VmHWM) is reset at the window start (clear_refs 5).
    extract = model.model.feature_extractor.forward

    def features_then_reset(images):
        features = extract(images)
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        steps.append({"start": rss("VmRSS")})
        return features

    train_step = model.training_step

    def step_then_read(*args, **kwargs):
        output = train_step(*args, **kwargs)
        steps[-1]["peak"] = rss("VmHWM")
        return output

    backward = model.manual_backward

    def counted_backward(loss, *args, **kwargs):  # the activations autograd holds for this chunk's backward
        saved["peak"], saved["now"] = max(saved["peak"], saved["now"]), 0
        return backward(loss, *args, **kwargs)

    def pack(tensor):
        saved["now"] += tensor.numel() * tensor.element_size()
        return tensor

    model.model.feature_extractor.forward = features_then_reset
    model.training_step = step_then_read
    model.manual_backward = counted_backward
    trainer = Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        trainer.fit(model, train_dataloaders=DataLoader(batches, batch_size=None))
    mb = 2**20
    return {
        "growth_mb": max(step["peak"] - step["start"] for step in steps) / mb,
        "saved_mb": saved["peak"] / mb,
        "optimizer_steps": trainer.global_step,
    }


results = {}
for config in sys.argv[1:]:
    gc.collect()
    libc.malloc_trim(0)  # hand freed heap memory back (the test runs one configuration per process anyway)
    size, fiber_batch_size = map(int, config.split(":"))
    results[config] = measure(size, fiber_batch_size)
print(json.dumps(results))
'''


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset the peak RSS")
def test_flow_training_memory_does_not_grow_with_the_fibers_per_image(tmp_path: Path, run_offline) -> None:
    """Peak RSS of the flow-training part of a step at 64 px vs 256 px (16x the fibers per image).

    Level 1 (stride 4) of 2 images: 512 fibers at 64 px, 8192 at 256 px. With ``fiber_batch_size=512`` both
    train in chunks of 512 fibers, so the flow's activations and the peak RSS of the flow part stay the same;
    the control (512 px, one chunk of all 32768 fibers) shows that the measurement sees the growth when it is
    there. Bounds: activations are counted exactly (autograd's saved tensors); RSS is per process (CPU load from
    other jobs does not change it), but the allocator adds noise of a few MB, hence 20 MB slack. The control's
    activations are ~180 MB; the allocator reuses some freed memory, so its RSS grows by less (an earlier control
    of 8192 fibers, ~45 MB of activations, grew by 36 MB once and failed a 25 MB margin by 1 MB), hence a margin
    of 80 MB, far above both the noise and the 256 px growth.
    """
    script = tmp_path / "memory_probe.py"
    script.write_text(MEMORY_PROBE)

    def probe(config: str) -> dict[str, float]:  # a fresh process each: no allocator reuse between the cases
        completed = run_offline([sys.executable, str(script), config], timeout=600)
        assert completed.returncode == 0, completed.stderr[-3000:]
        return json.loads(completed.stdout.strip().splitlines()[-1])[config]

    small, large, control = probe("64:512"), probe("256:512"), probe("512:32768")

    assert (small["optimizer_steps"], large["optimizer_steps"], control["optimizer_steps"]) == (2, 32, 2)
    # Activations: bounded by the chunk, not by the image (tiny extra: index tensors of the grid).
    assert large["saved_mb"] <= 1.25 * small["saved_mb"]
    assert control["saved_mb"] >= 32 * large["saved_mb"]
    # Peak RSS of the flow-training part: bounded at 256 px; the unchunked control grows.
    assert large["growth_mb"] <= small["growth_mb"] + 20
    assert control["growth_mb"] >= large["growth_mb"] + 80
