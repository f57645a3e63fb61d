"""Loss math against hand-computed tensors (paper Eq. 5-8)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from anomalib_bgad.models.bgad.loss import BgadLoss, LossMode, masked_mean, normal_boundary


def test_normal_boundary_is_beta_quantile_of_normal_values_above_minus_one() -> None:
    # 10 normal values (one of them an outlier below -1) and 2 anomalous ones that must be ignored.
    normalized = torch.tensor([-5.0, -0.9, -0.8, -0.7, -0.6, -0.5, -0.4, -0.3, -0.2, -0.1, -3.0, 0.5])
    anomalous = torch.tensor([False] * 10 + [True, True])
    # Kept: 9 values -0.9..-0.1; beta = 0.25 -> k = int(0.25 * 9) + 1 = 3 -> third smallest = -0.7.
    assert normal_boundary(normalized, anomalous, beta=0.25).item() == pytest.approx(-0.7)
    # beta small -> the smallest kept value, not the -5 outlier.
    assert normal_boundary(normalized, anomalous, beta=0.01).item() == pytest.approx(-0.9)


def test_normal_boundary_falls_back_to_all_normals_and_none_without_normals() -> None:
    normalized = torch.tensor([-4.0, -3.0, -2.0])
    assert normal_boundary(normalized, torch.zeros(3, dtype=torch.bool), beta=0.01).item() == pytest.approx(-4.0)
    assert normal_boundary(normalized, torch.ones(3, dtype=torch.bool), beta=0.01) is None


def test_boundary_is_detached() -> None:
    log_likelihood = torch.tensor([-1.0, -2.0, -3.0], requires_grad=True)
    boundary = BgadLoss().boundary(log_likelihood, torch.zeros(3, dtype=torch.bool))
    assert not boundary.requires_grad


def test_bgspp_terms_match_hand_computation() -> None:
    # l = log p / C; alpha = 10 -> ln = l / 10.
    log_likelihood = torch.tensor([-1.0, -3.0, -5.0, -2.0, -4.0, -9.0], requires_grad=True)
    anomalous = torch.tensor([False, False, False, True, True, True])
    boundary = torch.tensor(-0.4)  # b_n; b_a = -0.5 with tau = 0.1
    loss = BgadLoss(mode="bgad", tau=0.1, normalizer=10.0, bgspp_weight=1.0)
    terms = loss(log_likelihood, anomalous, boundary)

    ml = -F.logsigmoid(torch.tensor([-1.0, -3.0, -5.0])).mean()
    # pull: normals with ln < -0.4: only -0.5 -> 0.1
    pull = 0.1
    # push: anomalies with ln > -0.5: -0.2 (0.3) and -0.4 (0.1); -0.9 is already below b_a
    push = (0.3 + 0.1) / 2
    assert terms.ml.item() == pytest.approx(ml.item(), abs=1e-6)
    assert terms.pull.item() == pytest.approx(pull, abs=1e-6)
    assert terms.push.item() == pytest.approx(push, abs=1e-6)
    assert terms.total.item() == pytest.approx(ml.item() + pull + push, abs=1e-6)

    terms.total.backward()
    grad = log_likelihood.grad
    # The anomaly already below b_a gets no gradient (semi-push): the "no further" part of BG-SPP.
    assert grad[5].item() == 0.0
    # Pushed anomalies: d/dl of (l/10 - b_a)/2 = 0.05 each.
    assert grad[3].item() == pytest.approx(0.05)
    assert grad[4].item() == pytest.approx(0.05)


def test_empty_selections_give_zero_not_nan() -> None:
    log_likelihood = torch.tensor([-1.0, -2.0], requires_grad=True)
    # All normals are above the boundary and there is no anomaly: pull and push select nothing.
    terms = BgadLoss(mode="bgad")(log_likelihood, torch.zeros(2, dtype=torch.bool), torch.tensor(-1.0))
    assert terms.pull.item() == 0.0
    assert terms.push.item() == 0.0
    assert math.isfinite(terms.total.item())
    terms.total.backward()
    assert torch.isfinite(log_likelihood.grad).all()
    assert masked_mean(torch.tensor([]), torch.tensor([], dtype=torch.bool)).item() == 0.0


def test_dagger_pushes_every_anomaly_without_bound() -> None:
    log_likelihood = torch.tensor([-1.0, -2.0, -9.0])
    anomalous = torch.tensor([False, True, True])
    boundary = torch.tensor(-0.4)
    dagger = BgadLoss(mode="bgad_dagger")(log_likelihood, anomalous, boundary)
    bounded = BgadLoss(mode="bgad")(log_likelihood, anomalous, boundary)
    # ln = -0.2 and -0.9 against b_a = -0.5: dagger keeps pushing the -0.9 one too.
    assert dagger.push.item() == pytest.approx(((-0.2 + 0.5) + (-0.9 + 0.5)) / 2)
    assert bounded.push.item() == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("mode", "has_pull", "has_push"),
    [("nfad", False, False), ("bgad_wo", True, False), ("bgad", True, True), ("bgad_dagger", True, True)],
)
def test_loss_modes_select_terms(mode: str, has_pull: bool, has_push: bool) -> None:
    log_likelihood = torch.tensor([-1.0, -6.0, -2.0])
    anomalous = torch.tensor([False, False, True])
    terms = BgadLoss(mode=mode)(log_likelihood, anomalous, torch.tensor(-0.4))
    assert (terms.pull.item() > 0) == has_pull
    assert (terms.push.item() != 0) == has_push
    assert LossMode(mode).uses_anomalies == has_push


def test_phase_one_is_ml_only() -> None:
    log_likelihood = torch.tensor([-1.0, -6.0, -2.0])
    anomalous = torch.tensor([False, False, True])
    terms = BgadLoss(mode="bgad")(log_likelihood, anomalous, torch.tensor(-0.4), with_boundary_terms=False)
    assert terms.total.item() == pytest.approx(terms.ml.item())
    assert terms.pull.item() == terms.push.item() == 0.0


def test_focal_weighting_changes_the_weighted_terms() -> None:
    log_likelihood = torch.tensor([-1.0, -6.0, -2.0, -3.0])
    anomalous = torch.tensor([False, False, True, True])
    plain = BgadLoss(focal_weighting=False)(log_likelihood, anomalous, torch.tensor(-0.4))
    focal = BgadLoss(focal_weighting=True)(log_likelihood, anomalous, torch.tensor(-0.4))
    # ln = -0.6 for the second normal: weight 11.7 * (1 - e^-0.6)^0.5 * 0.6 ≈ 4.68 on its ML and pull terms.
    weight = 11.7 * (1 - math.exp(-0.6)) ** 0.5 * 0.6
    expected_ml = (-F.logsigmoid(torch.tensor(-1.0)) - weight * F.logsigmoid(torch.tensor(-6.0))) / 2
    assert focal.ml.item() == pytest.approx(expected_ml.item(), rel=1e-5)
    assert focal.pull.item() == pytest.approx(plain.pull.item() * weight, rel=1e-5)


def test_invalid_hyperparameters_are_rejected() -> None:
    with pytest.raises(ValueError, match="beta"):
        BgadLoss(beta=1.5)
    with pytest.raises(ValueError, match="normalizer"):
        BgadLoss(normalizer=0)
    with pytest.raises(ValueError, match="is not a valid LossMode"):
        BgadLoss(mode="supervised")
