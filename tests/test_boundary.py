"""The explicit boundary b_n (paper Eq. 6-7): estimate, epoch update, b_a, score distance, checkpoint key."""

from __future__ import annotations

import pytest
import torch

from anomalib_bgad.models.bgad.boundary import Boundary, map_legacy_state


def estimate(normalized: torch.Tensor, is_normal: torch.Tensor, beta: float) -> tuple[float, bool]:
    value, valid = Boundary(1, beta=beta).estimate(normalized, is_normal)
    return value.item(), bool(valid)


def test_estimate_is_the_beta_quantile_of_normal_values_above_minus_one() -> None:
    # 10 normal values (one of them an outlier below -1) and 2 anomalous ones that must be ignored.
    normalized = torch.tensor([-5.0, -0.9, -0.8, -0.7, -0.6, -0.5, -0.4, -0.3, -0.2, -0.1, -3.0, 0.5])
    is_normal = torch.tensor([True] * 10 + [False, False])
    # Kept: 9 values -0.9..-0.1; beta = 0.25 -> k = int(0.25 * 9) + 1 = 3 -> third smallest = -0.7.
    assert estimate(normalized, is_normal, beta=0.25) == (pytest.approx(-0.7), True)
    # beta small -> the smallest kept value, not the -5 outlier.
    assert estimate(normalized, is_normal, beta=0.01) == (pytest.approx(-0.9), True)


@pytest.mark.parametrize("size", [1, 2, 99, 100, 101, 4096, 5000])
@pytest.mark.parametrize("beta", [0.01, 0.05, 0.5, 0.99])
def test_estimate_equals_kthvalue_with_k_floor_beta_n_plus_one(size: int, beta: float) -> None:
    values = -torch.rand(size, generator=torch.Generator().manual_seed(size))
    expected = values.kthvalue(int(beta * size) + 1).values.item()
    assert estimate(values, torch.ones(size, dtype=torch.bool), beta) == (expected, True)


def test_estimate_falls_back_to_all_normals_and_is_invalid_without_normals() -> None:
    normalized = torch.tensor([-4.0, -3.0, -2.0])
    assert estimate(normalized, torch.ones(3, dtype=torch.bool), beta=0.01) == (pytest.approx(-4.0), True)
    value, valid = estimate(normalized, torch.zeros(3, dtype=torch.bool), beta=0.01)
    assert (value, valid) == (0.0, False)


def test_estimate_is_detached() -> None:
    normalized = torch.tensor([-0.1, -0.2, -0.3], requires_grad=True)
    value, _ = Boundary(1).estimate(normalized, torch.ones(3, dtype=torch.bool))
    assert not value.requires_grad


def test_epoch_update_averages_accepted_estimates_and_keeps_levels_without_any() -> None:
    boundary = Boundary(3)
    boundary.b_n.copy_(torch.tensor([-0.5, -0.6, -0.7]))
    yes, no = torch.tensor(True), torch.tensor(False)
    boundary.accumulate(0, torch.tensor(-0.2), yes)
    boundary.accumulate(0, torch.tensor(-0.4), yes)
    boundary.accumulate(0, torch.tensor(float("nan")), no)  # a skipped step: never counted, not even as NaN
    boundary.accumulate(1, torch.tensor(-0.1), yes)
    boundary.finish_epoch()
    torch.testing.assert_close(boundary.b_n, torch.tensor([-0.3, -0.1, -0.7]))
    assert boundary.epoch_count.sum() == 0  # reset for the next epoch


def test_b_a_and_score_distance_follow_b_n_and_tau() -> None:
    boundary = Boundary(2, tau=0.1)
    boundary.b_n.copy_(torch.tensor([-0.3, -0.2]))
    torch.testing.assert_close(boundary.b_a, torch.tensor([-0.4, -0.3]))
    torch.testing.assert_close(boundary.distance(1, torch.tensor([-0.2, -0.5])), torch.tensor([0.0, 0.3]))
    assert boundary.normalize(torch.tensor(-3.0)).item() == pytest.approx(-0.3)


def test_training_state_round_trips_the_epoch_update() -> None:
    source = Boundary(2)
    source.accumulate(1, torch.tensor(-0.25), torch.tensor(True))
    target = Boundary(2)
    target.load_training_state(source.training_state())
    target.finish_epoch()
    assert target.b_n.tolist() == [0.0, -0.25]


def test_a_0_1_0_state_dict_key_is_mapped_to_the_boundary_module() -> None:
    state = {"model.normal_boundary": torch.tensor([-0.1, -0.2, -0.3]), "model.flows.0.x": torch.zeros(1)}
    map_legacy_state(state, "model.")
    assert set(state) == {"model.boundary.b_n", "model.flows.0.x"}


def test_invalid_hyperparameters_are_rejected() -> None:
    with pytest.raises(ValueError, match="beta"):
        Boundary(3, beta=1.5)
    with pytest.raises(ValueError, match="normalizer"):
        Boundary(3, normalizer=0)
