"""Loss math against hand-computed tensors (paper Eq. 5-8)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from anomalib_bgad.models.bgad.loss import BgadLoss, LossMode, masked_mean


def bgad_terms(
    log_likelihood: torch.Tensor,
    anomalous: torch.Tensor,
    b_n: torch.Tensor,
    mode: str = "bgad",
    with_boundary_terms: bool = True,
    focal_weighting: bool = False,
    tau: float = 0.1,
    normalizer: float = 10.0,
):
    """The loss of one fiber batch with the paper's units: ln = l / alpha, b_a = b_n - tau."""
    loss = BgadLoss(mode=mode, focal_weighting=focal_weighting)
    return loss(log_likelihood, log_likelihood / normalizer, ~anomalous, anomalous, b_n, b_n - tau, with_boundary_terms)


def test_bgspp_terms_match_hand_computation() -> None:
    # l = log p / C; alpha = 10 -> ln = l / 10.
    log_likelihood = torch.tensor([-1.0, -3.0, -5.0, -2.0, -4.0, -9.0], requires_grad=True)
    anomalous = torch.tensor([False, False, False, True, True, True])
    boundary = torch.tensor(-0.4)  # b_n; b_a = -0.5 with tau = 0.1
    terms = bgad_terms(log_likelihood, anomalous, boundary, mode="bgad", tau=0.1, normalizer=10.0)

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
    terms = bgad_terms(log_likelihood, torch.zeros(2, dtype=torch.bool), torch.tensor(-1.0))
    assert terms.pull.item() == 0.0
    assert terms.push.item() == 0.0
    assert math.isfinite(terms.total.item())
    terms.total.backward()
    assert torch.isfinite(log_likelihood.grad).all()
    assert masked_mean(torch.tensor([]), torch.tensor([], dtype=torch.bool)).item() == 0.0


def test_fiber_weights_make_every_term_a_weighted_mean() -> None:
    log_likelihood = torch.tensor([-1.0, -3.0, -5.0, -2.0, -4.0, -9.0])
    anomalous = torch.tensor([False, False, False, True, True, True])
    weights = torch.tensor([3.0, 1.0, 2.0, 0.5, 1.0, 7.0])
    b_n = torch.tensor(-0.4)
    terms = BgadLoss("bgad")(log_likelihood, log_likelihood / 10, ~anomalous, anomalous, b_n, b_n - 0.1, True, weights)
    ml = -F.logsigmoid(log_likelihood[:3])
    assert terms.ml.item() == pytest.approx(((ml * weights[:3]).sum() / 6).item(), abs=1e-6)
    assert terms.pull.item() == pytest.approx(0.1, abs=1e-6)  # one fiber below b_n: its weight cancels
    assert terms.push.item() == pytest.approx((0.5 * 0.3 + 1.0 * 0.1) / 1.5, abs=1e-6)  # -0.9 is not pushed
    unit = BgadLoss("bgad")(log_likelihood, log_likelihood / 10, ~anomalous, anomalous, b_n, b_n - 0.1, True)
    ones = BgadLoss("bgad")(
        log_likelihood, log_likelihood / 10, ~anomalous, anomalous, b_n, b_n - 0.1, True, torch.ones(6)
    )
    torch.testing.assert_close(torch.stack(list(ones)), torch.stack(list(unit)))
    # A selection whose weights are all 0 counts as empty: 0, not NaN.
    assert masked_mean(torch.tensor([1.0, 2.0]), torch.tensor([True, False]), torch.tensor([0.0, 1.0])).item() == 0


def test_dagger_pushes_every_anomaly_without_bound() -> None:
    log_likelihood = torch.tensor([-1.0, -2.0, -9.0])
    anomalous = torch.tensor([False, True, True])
    boundary = torch.tensor(-0.4)
    dagger = bgad_terms(log_likelihood, anomalous, boundary, mode="bgad_dagger")
    bounded = bgad_terms(log_likelihood, anomalous, boundary, mode="bgad")
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
    terms = bgad_terms(log_likelihood, anomalous, torch.tensor(-0.4), mode=mode)
    assert (terms.pull.item() > 0) == has_pull
    assert (terms.push.item() != 0) == has_push
    assert LossMode(mode).uses_anomalies == has_push


def test_phase_one_is_ml_only() -> None:
    log_likelihood = torch.tensor([-1.0, -6.0, -2.0])
    anomalous = torch.tensor([False, False, True])
    terms = bgad_terms(log_likelihood, anomalous, torch.tensor(-0.4), with_boundary_terms=False)
    assert terms.total.item() == pytest.approx(terms.ml.item())
    assert terms.pull.item() == terms.push.item() == 0.0


def test_focal_weighting_changes_the_weighted_terms() -> None:
    log_likelihood = torch.tensor([-1.0, -6.0, -2.0, -3.0])
    anomalous = torch.tensor([False, False, True, True])
    plain = bgad_terms(log_likelihood, anomalous, torch.tensor(-0.4), focal_weighting=False)
    focal = bgad_terms(log_likelihood, anomalous, torch.tensor(-0.4), focal_weighting=True)
    # ln = -0.6 for the second normal: weight 11.7 * (1 - e^-0.6)^0.5 * 0.6 ≈ 4.68 on its ML and pull terms.
    weight = 11.7 * (1 - math.exp(-0.6)) ** 0.5 * 0.6
    expected_ml = (-F.logsigmoid(torch.tensor(-1.0)) - weight * F.logsigmoid(torch.tensor(-6.0))) / 2
    assert focal.ml.item() == pytest.approx(expected_ml.item(), rel=1e-5)
    assert focal.pull.item() == pytest.approx(plain.pull.item() * weight, rel=1e-5)


def test_fibers_in_neither_selection_do_not_count_even_when_not_finite() -> None:
    # The third fiber was dropped (non-finite backbone features): neither normal nor anomalous.
    log_likelihood = torch.tensor([-1.0, -2.0, float("nan")], requires_grad=True)
    is_normal = torch.tensor([True, False, False])
    is_anomalous = torch.tensor([False, True, False])
    b_n, b_a = torch.tensor(-0.15), torch.tensor(-0.25)
    terms = BgadLoss()(log_likelihood, log_likelihood / 10, is_normal, is_anomalous, b_n, b_a)
    assert terms.ml.item() == pytest.approx(-F.logsigmoid(torch.tensor(-1.0)).item(), abs=1e-6)
    assert terms.push.item() == pytest.approx(-0.2 + 0.25, abs=1e-6)
    terms.total.backward()
    assert torch.isfinite(log_likelihood.grad[:2]).all()


def test_invalid_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="is not a valid LossMode"):
        BgadLoss(mode="supervised")
