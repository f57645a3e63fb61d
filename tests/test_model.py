"""BGAD torch model and Lightning module: flows, phases, boundary state, checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from anomalib.data import InferenceBatch
from lightning.pytorch import seed_everything

from anomalib_bgad import Bgad
from anomalib_bgad.models.bgad.feature_extractor import FrozenFeatureExtractor
from anomalib_bgad.models.bgad.fibers import (
    downsample_mask,
    gather_positions,
    position_groups,
    steps_per_batch,
    to_fibers,
)
from anomalib_bgad.models.bgad.flow import ConditionalFlow, PositionalSubnet
from anomalib_bgad.models.bgad.torch_model import BgadModel


@pytest.fixture(scope="module")
def small_model() -> BgadModel:
    seed_everything(0, verbose=False)  # torch and numpy (FrEIA's permutations)
    return BgadModel(coupling_blocks=2)


def test_subnet_equals_one_linear_over_features_and_condition() -> None:
    torch.manual_seed(0)
    flow = ConditionalFlow(channels=6, condition_dim=8, coupling_blocks=1, clamp_alpha=1.9, permute_soft=True)
    subnet: PositionalSubnet = flow.inn.module_list[0].subnet
    features = torch.randn(2 * 12, 3)
    grid = torch.randn(12, 8)
    flow.grid.conditions = grid
    fast = subnet(features)
    flow.grid.positions = torch.arange(12).repeat(2)
    gathered = subnet(features)
    flow.grid.conditions = flow.grid.positions = None
    # Reference: the unsplit subnet Linear(in, 2 in) -> ReLU -> Linear over the concatenation.
    weight = torch.cat([subnet.feature_layer.weight, subnet.condition_layer.weight], dim=1)
    hidden = torch.relu(torch.cat([features, grid.repeat(2, 1)], dim=1) @ weight.T + subnet.feature_layer.bias)
    reference = subnet.output_layer(hidden)
    torch.testing.assert_close(fast, reference)
    torch.testing.assert_close(gathered, reference)
    assert subnet.feature_layer.in_features == 3
    assert subnet.feature_layer.out_features == 2 * (3 + 8)
    with pytest.raises(RuntimeError, match="ConditionalFlow"):
        subnet(features)


def test_shuffled_fibers_get_the_same_likelihood_as_whole_maps(small_model: BgadModel) -> None:
    features = torch.randn(2, 24, 8, 8)
    fibers = to_fibers(features)
    whole = small_model.fiber_log_likelihood(0, fibers, (8, 8))
    order = torch.randperm(fibers.shape[0])
    positions = torch.arange(64).repeat(2)
    shuffled = small_model.fiber_log_likelihood(0, fibers[order], (8, 8), positions[order])
    torch.testing.assert_close(shuffled, whole[order])
    # Moving a fiber to another position changes its likelihood: the condition is used.
    moved = small_model.fiber_log_likelihood(0, fibers, (8, 8), positions.roll(1))
    assert not torch.allclose(moved, whole)


def test_eval_returns_inference_batch_and_train_returns_level_maps(small_model: BgadModel) -> None:
    images = torch.randn(2, 3, 64, 64)
    small_model.eval()
    with torch.no_grad():
        output = small_model(images)
    assert isinstance(output, InferenceBatch)
    assert output.anomaly_map.shape == (2, 1, 64, 64)
    assert output.pred_score.shape == (2,)
    # The default image score: the mean of the map's highest 1 % of pixels (41 of 64 x 64), below its maximum.
    top = output.anomaly_map.flatten(1).topk(41, dim=1).values
    torch.testing.assert_close(output.pred_score, top.mean(dim=1))
    assert (output.pred_score < output.anomaly_map.amax(dim=(-3, -2, -1))).all()
    small_model.train()
    maps = small_model(images)
    assert [tuple(m.shape) for m in maps] == [(2, 16, 16), (2, 8, 8), (2, 4, 4)]
    assert maps[0].requires_grad
    # The backbone never leaves eval mode (its BatchNorm statistics stay frozen).
    assert not small_model.feature_extractor.backbone.training
    small_model.eval()


def test_score_moves_with_the_boundary_by_exactly_its_shift(small_model: BgadModel) -> None:
    images = torch.randn(1, 3, 64, 64)
    small_model.eval()
    with torch.no_grad():
        before = small_model(images).pred_score
        small_model.boundary.b_n += 0.25
        after = small_model(images).pred_score
        small_model.boundary.b_n -= 0.25
    torch.testing.assert_close(after - before, torch.tensor([0.25]), atol=1e-5, rtol=0)


def test_downsample_mask_is_nearest_and_fiber_ordered() -> None:
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[1, :4, :4] = True
    flat = downsample_mask(mask, (2, 2), batch_size=2).reshape(-1)
    assert flat.tolist() == [False, False, False, False, True, False, False, False]
    assert downsample_mask(None, (2, 2), batch_size=3).sum() == 0
    assert downsample_mask(None, (2, 2), batch_size=3).shape == (3, 2, 2)


def test_position_groups_cover_every_position_once_and_the_group_path_equals_per_fiber() -> None:
    generator = torch.Generator().manual_seed(0)
    groups = position_groups((4, 5), 3, generator)
    assert sorted(torch.cat(groups).tolist()) == list(range(20))
    assert [len(group) for group in groups] == [7, 7, 6]
    # A grid with fewer positions than steps: every group still has a position.
    assert all(len(group) == 1 for group in position_groups((1, 2), 5, generator))
    assert steps_per_batch(16, (64, 64), 4096) == 16
    assert steps_per_batch(1, (8, 8), 4096) == 1
    torch.manual_seed(0)
    model = BgadModel(coupling_blocks=2)
    features = torch.randn(3, 24, 4, 5)
    group = groups[0]
    fibers = gather_positions(features, group)
    assert fibers.shape == (3 * 7, 24)
    torch.testing.assert_close(fibers[7 * 2 + 1], features[2, :, group[1] // 5, group[1] % 5])
    grouped = model.position_group_log_likelihood(0, fibers, (4, 5), group)
    per_fiber = model.fiber_log_likelihood(0, fibers, (4, 5), group.repeat(3))
    torch.testing.assert_close(grouped, per_fiber)


def test_border_padding_sees_the_mirrored_image_and_keeps_every_level_on_the_image_grid() -> None:
    images = torch.randn(2, 3, 64, 48)
    plain = FrozenFeatureExtractor("tf_efficientnet_lite0", (1, 2, 3))
    padded = FrozenFeatureExtractor("tf_efficientnet_lite0", (1, 2, 3), border_padding=16)
    padded.load_state_dict(plain.state_dict())
    features = padded(images)
    assert [tuple(f.shape[-2:]) for f in features] == [(16, 12), (8, 6), (4, 3)]
    # The plain backbone on the reflection-padded image, cropped by 16 px / stride (4, 2, 1 positions per side).
    mirrored = plain(torch.nn.functional.pad(images, (16, 16, 16, 16), mode="reflect"))
    assert [tuple(f.shape[-2:]) for f in mirrored] == [(24, 20), (12, 10), (6, 5)]
    for feature, full, crop in zip(features, mirrored, (4, 2, 1), strict=True):
        torch.testing.assert_close(feature, full[..., crop:-crop, crop:-crop])
    # Border positions no longer see the backbone's zero padding: their features change.
    assert not torch.allclose(features[0][..., 0, :], plain(images)[0][..., 0, :], atol=1e-3)
    for bad in (8, -16):
        with pytest.raises(ValueError, match=r"border_padding must be a non-negative multiple .* \(16 px"):
            FrozenFeatureExtractor("tf_efficientnet_lite0", (1, 2, 3), pre_trained=False, border_padding=bad)
    # Reflection mirrors the image's own pixels, so the padding must be smaller than the image.
    with pytest.raises(ValueError, match=r"border_padding \(16 px\) must be smaller than the image \(64 x 16 px\)"):
        padded(torch.randn(1, 3, 64, 16))


def test_invalid_init_args_are_rejected() -> None:
    with pytest.raises(ValueError, match="phase1_epochs"):
        Bgad(phase1_epochs=-1, coupling_blocks=1)
    with pytest.raises(ValueError, match="fiber_batch_size"):
        Bgad(fiber_batch_size=0, coupling_blocks=1)
    with pytest.raises(ValueError, match="partial_fibers must be one of"):
        Bgad(partial_fibers="drop", coupling_blocks=1)
    for border_weight in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="border_weight must be a finite number >= 0"):
            Bgad(border_weight=border_weight, coupling_blocks=1)
    for tau in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"tau \(the margin b_n - b_a"):
            Bgad(tau=tau, coupling_blocks=1)
    with pytest.raises(ValueError, match="beta must be in"):
        Bgad(beta=1.0, coupling_blocks=1)
    with pytest.raises(ValueError, match="normalizer must be"):
        Bgad(normalizer=0.0, coupling_blocks=1)
    assert Bgad(tau=0.0, coupling_blocks=1).model.boundary.tau == 0.0  # b_a = b_n: the push stops at the boundary
    with pytest.raises(ValueError, match="condition_vector"):
        BgadModel(condition_vector=30, coupling_blocks=1)


def _flow_weights(model: Bgad) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in model.model.flows.parameters()])


def _set_global_seed(monkeypatch: pytest.MonkeyPatch, global_seed: str | None) -> None:
    """``PL_GLOBAL_SEED`` as a caller's ``seed_everything`` leaves it; ``None``: unset, as under anomalib's CLI."""
    if global_seed is None:
        monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    else:
        monkeypatch.setenv("PL_GLOBAL_SEED", global_seed)


def _first_flow_weights(monkeypatch: pytest.MonkeyPatch, global_seed: str | None, torch_seed: int) -> torch.Tensor:
    """A fresh module's flow weights after the global RNG was left at ``torch_seed``."""
    _set_global_seed(monkeypatch, global_seed)
    torch.manual_seed(torch_seed)
    return _flow_weights(Bgad(coupling_blocks=1))


def test_unseeded_construction_gives_the_same_flows_and_a_seeded_one_keeps_the_callers_rng(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """anomalib's CLI never applies `seed_everything`: without a seed the module seeds 0 itself."""
    unseeded = [_first_flow_weights(monkeypatch, None, torch_seed) for torch_seed in (1, 2)]
    torch.testing.assert_close(unseeded[0], unseeded[1], rtol=0, atol=0)
    seeded = [_first_flow_weights(monkeypatch, "7", torch_seed) for torch_seed in (1, 2)]
    assert not torch.equal(seeded[0], seeded[1])  # whoever seeded owns the RNG: no reseeding


def test_seed_from_datamodule_redraws_the_flows_only_after_the_default_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under anomalib's CLI the datamodule's seed, not the constructor's 0, decides the flows' initial weights."""

    def reseeded(seed: object, global_seed: str | None = None) -> tuple[Bgad, torch.Tensor]:
        _set_global_seed(monkeypatch, global_seed)
        model = Bgad(coupling_blocks=1)
        constructed = _flow_weights(model)
        model.seed_from_datamodule(seed)
        return model, constructed

    model_a, constructed = reseeded(3)
    assert os.environ["PL_GLOBAL_SEED"] == "3"  # the fiber groups follow it too
    model_b, _ = reseeded(3)
    model_c, _ = reseeded(4)
    torch.testing.assert_close(_flow_weights(model_a), _flow_weights(model_b), rtol=0, atol=0)
    assert not torch.equal(_flow_weights(model_a), constructed)
    assert not torch.equal(_flow_weights(model_a), _flow_weights(model_c))
    for seed in (0, None, True, "3"):  # 0 is what the constructor applied; anything but an int is no seed
        model, constructed = reseeded(seed)
        torch.testing.assert_close(_flow_weights(model), constructed, rtol=0, atol=0)
    model, constructed = reseeded(3, global_seed="7")  # a caller's seed_everything wins
    torch.testing.assert_close(_flow_weights(model), constructed, rtol=0, atol=0)
    assert os.environ["PL_GLOBAL_SEED"] == "7"


def test_fit_seeds_the_flows_from_the_datamodule(
    tiny_mvtec_root: Path, small_bgad_kwargs: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`setup("fit")` applies the datamodule's seed before training starts (stopped at `on_fit_start`)."""
    from anomalib.engine import Engine
    from lightning.pytorch import Callback

    from anomalib_bgad.data import FewAnomalyMVTecAD

    class _FitStartedError(Exception):
        pass

    class _Capture(Callback):
        def on_fit_start(self, trainer, pl_module) -> None:
            captured.append(_flow_weights(pl_module))
            raise _FitStartedError

    captured: list[torch.Tensor] = []
    for seed in (3, 3, 4):
        _set_global_seed(monkeypatch, None)
        datamodule = FewAnomalyMVTecAD(
            root=tiny_mvtec_root, category="brick", n_anomalies=2, num_workers=0, seed=seed, train_batch_size=4
        )
        engine = Engine(
            max_epochs=1,
            default_root_dir=tmp_path / str(len(captured)),
            accelerator="cpu",
            devices=1,
            callbacks=[_Capture()],
            logger=False,
            enable_progress_bar=False,
        )
        with pytest.raises(_FitStartedError):
            engine.fit(Bgad(**small_bgad_kwargs), datamodule=datamodule)
        assert os.environ["PL_GLOBAL_SEED"] == str(seed)
    torch.testing.assert_close(captured[0], captured[1], rtol=0, atol=0)
    assert not torch.equal(captured[0], captured[2])


class _LossRecorder:
    """Collect the epoch-level logged loss terms of a fit."""

    def __init__(self) -> None:
        from lightning.pytorch import Callback

        recorder = self

        class _Callback(Callback):
            def on_train_epoch_end(self, trainer, pl_module) -> None:
                metrics = trainer.callback_metrics
                recorder.epochs.append({k: float(v) for k, v in metrics.items() if k.startswith("train_")})

        self.epochs: list[dict[str, float]] = []
        self.callback = _Callback()


@pytest.mark.slow
def test_phase_switch_and_boundary_checkpoint_round_trip(
    tiny_mvtec_root: Path,
    small_bgad_kwargs: dict,
    tmp_path: Path,
) -> None:
    from anomalib.engine import Engine

    from anomalib_bgad.data import FewAnomalyMVTecAD

    seed_everything(3)

    datamodule = FewAnomalyMVTecAD(
        root=tiny_mvtec_root,
        category="brick",
        n_anomalies=2,
        pseudo_anomaly_count=0,
        train_batch_size=4,
        eval_batch_size=4,
        num_workers=0,
        seed=3,
    )
    model = Bgad(phase1_epochs=1, **small_bgad_kwargs)
    recorder = _LossRecorder()
    engine = Engine(
        max_epochs=2,
        default_root_dir=tmp_path,
        accelerator="cpu",
        devices=1,
        callbacks=[recorder.callback],
        logger=False,
        enable_progress_bar=False,
    )
    engine.fit(model, datamodule=datamodule)

    phase1, phase2 = recorder.epochs
    assert phase1["train_pull_loss"] == 0.0
    assert phase1["train_push_loss"] == 0.0
    assert phase2["train_pull_loss"] > 0.0
    assert phase2["train_push_loss"] > 0.0  # the labeled anomalies are pushed in phase 2 only

    boundary = model.model.boundary.b_n.clone()
    assert torch.isfinite(boundary).all()
    assert (boundary != 0).all()
    checkpoint = next(Path(tmp_path).rglob("*.ckpt"))
    restored = Bgad.load_from_checkpoint(checkpoint, map_location="cpu")
    torch.testing.assert_close(restored.model.boundary.b_n, boundary)
    assert restored.phase1_epochs == 1
