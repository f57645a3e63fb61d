"""The loss of one optimiser step (position groups of every level) and the non-finite step skip."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from lightning.pytorch import seed_everything

from anomalib_bgad.models.bgad.fibers import border_weights, label_fibers, to_fibers
from anomalib_bgad.models.bgad.loss import BgadLoss
from anomalib_bgad.models.bgad.numerics import step_unless_nonfinite
from anomalib_bgad.models.bgad.schedule import build_optimizer
from anomalib_bgad.models.bgad.step_loss import position_group_loss
from anomalib_bgad.models.bgad.torch_model import BgadModel


@pytest.fixture(scope="module")
def model_and_features() -> tuple[BgadModel, list[torch.Tensor]]:
    seed_everything(0, verbose=False)  # torch and numpy (FrEIA's permutations)
    model = BgadModel(coupling_blocks=2)
    with torch.no_grad():
        features = model.feature_extractor(torch.randn(2, 3, 64, 64))
    return model, features


def all_finite(features: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per level, a boolean ``(B, H_k, W_k)`` marking every fiber finite."""
    return [torch.ones(level.shape[0], *level.shape[-2:], dtype=torch.bool) for level in features]


def test_fibers_are_labeled_by_the_mask_and_non_finite_ones_by_neither(model_and_features) -> None:
    _, features = model_and_features
    finite = all_finite(features)
    finite[0][0, 0, 0] = False
    masks = torch.zeros(2, 64, 64)
    masks[1, :32, :32] = 1  # the top-left quarter of the second image
    fibers = label_fibers(features, finite, masks)
    assert fibers.grids == [tuple(level.shape[-2:]) for level in features]
    for level, (height, width) in enumerate(fibers.grids):
        assert not (fibers.normal[level] & fibers.anomalous[level]).any()
        assert int(fibers.anomalous[level][0].sum()) == 0
        assert int(fibers.anomalous[level][1].sum()) == (height // 2) * (width // 2)
        assert bool(fibers.anomalous[level][1, : height // 2, : width // 2].all())
    assert not fibers.normal[0][0, 0, 0]
    positions = fibers.grids[0][0] * fibers.grids[0][1]
    assert int(fibers.normal[0].sum()) == 2 * positions - 1 - int(fibers.anomalous[0].sum())


def test_partial_fibers_ignore_leaves_cells_touched_by_the_mask_out_of_the_normal_selection(
    model_and_features,
) -> None:
    _, features = model_and_features  # 64 px input: grids 16, 8 and 4 (cells of 4, 8 and 16 px)
    finite = all_finite(features)
    masks = torch.zeros(2, 64, 64)
    masks[1, 20:22, :] = 1  # a 2 px line: nearest downsampling misses it at the coarser levels
    paper = label_fibers(features, finite, masks)
    ignored = label_fibers(features, finite, masks, partial_fibers="ignore")
    for level, (height, _) in enumerate(paper.grids):
        cell = 64 // height
        touched = torch.zeros(2, height, height, dtype=torch.bool)
        touched[1, 20 // cell : 21 // cell + 1, :] = True
        assert torch.equal(ignored.anomalous[level], paper.anomalous[level])
        assert torch.equal(ignored.normal[level], ~touched)
        assert torch.equal(paper.normal[level], ~paper.anomalous[level])
    assert int(paper.anomalous[2].sum()) == 0  # at the 16 px level the line counts as normal in the paper's rule
    with pytest.raises(ValueError, match="partial_fibers"):
        label_fibers(features, finite, masks, partial_fibers="drop")


def test_partial_fibers_coverage_labels_a_fiber_anomalous_only_where_the_mask_covers_half_its_cell(
    model_and_features,
) -> None:
    _, features = model_and_features  # 64 px input: grids 16, 8 and 4 (cells of 4, 8 and 16 px)
    masks = torch.zeros(2, 64, 64)
    masks[1, 8:16, 4:12] = 1  # 8 x 8 px: four whole 4 px cells, half of two 8 px cells, a quarter of a 16 px cell
    masks[1, 32:34, 32:64] = 1  # a 2 px line through the centre rows of the coarsest cells only
    paper, coverage = (label_fibers(features, all_finite(features), masks, rule) for rule in ("normal", "coverage"))
    # 4 px cells: the box covers rows 2-3, columns 1-2 fully; the line covers half of row 8.
    assert torch.nonzero(coverage.anomalous[0][1]).tolist() == [[2, 1], [2, 2], [3, 1], [3, 2]] + [
        [8, col] for col in range(8, 16)
    ]
    assert torch.nonzero(coverage.anomalous[1][1]).tolist() == [[1, 0], [1, 1]]  # half of each 8 px cell
    assert int(coverage.anomalous[2].sum()) == 0  # nearest labels the line's 16 px cells anomalous; 1/8 covered
    assert int(coverage.anomalous[1][1, 4].sum()) == 0  # the line covers a quarter of its 8 px cells
    assert int(paper.anomalous[2][1].sum()) == 2
    for level in range(3):
        touched = F.adaptive_max_pool2d(masks[:, None], coverage.grids[level])[:, 0] > 0
        assert torch.equal(coverage.normal[level], ~touched)
        assert not (coverage.normal[level] & coverage.anomalous[level]).any()


def test_step_loss_sums_the_levels_and_adds_the_boundary_terms_in_phase_2(model_and_features) -> None:
    model, features = model_and_features
    finite = all_finite(features)
    masks = torch.zeros(2, 64, 64)
    masks[1, :32, :32] = 1
    fibers = label_fibers(features, finite, masks)
    every_position = [torch.arange(height * width) for height, width in fibers.grids]
    loss = BgadLoss("bgad")
    with torch.no_grad():
        phase1 = position_group_loss(model, loss, fibers, every_position, with_boundary_terms=False)
        phase2 = position_group_loss(model, loss, fibers, every_position, with_boundary_terms=True)
        # Reference: the ML term per level over whole maps, in the fiber order of `to_fibers`.
        ml = sum(
            (-F.logsigmoid(model.fiber_log_likelihood(level, to_fibers(features[level]), grid)))[
                fibers.normal[level].reshape(-1)
            ].mean()
            for level, grid in enumerate(fibers.grids)
        )
    torch.testing.assert_close(phase1.terms[1], ml)
    torch.testing.assert_close(phase1.total, ml)
    assert phase1.terms[2:].abs().sum() == 0  # phase 1: no pull, no push
    torch.testing.assert_close(phase2.terms[1], ml)
    torch.testing.assert_close(phase2.total, ml + phase2.terms[2] + phase2.terms[3])
    assert phase2.terms[2] > 0  # a beta-quantile boundary leaves normal fibers below it to pull
    assert int(phase1.anomalous_fibers) == sum(int(level.sum()) for level in fibers.anomalous)
    assert bool(phase1.log_likelihood_finite) and bool(phase1.loss_finite)
    for b_n, valid in phase2.b_n:
        assert bool(valid) and torch.isfinite(b_n)


def test_border_weight_weighs_each_levels_outermost_ring_in_the_ml_term(model_and_features) -> None:
    model, features = model_and_features  # 64 px input: grids 16, 8 and 4
    finite = all_finite(features)
    masks = torch.zeros(2, 64, 64)
    masks[1, :32, :32] = 1
    ring = border_weights((4, 4), 3.0, torch.device("cpu"))
    assert ring.sum().item() == 12 * 3.0 + 4  # 12 ring positions at weight 3, the 2 x 2 interior at 1
    assert label_fibers(features, finite, masks).weights is None  # border_weight 1: the paper's unweighted loss
    fibers = label_fibers(features, finite, masks, border_weight=3.0)
    # Position groups in shuffled order: each fiber must keep its own position's weight.
    groups = [
        torch.randperm(height * width, generator=torch.Generator().manual_seed(1)) for height, width in fibers.grids
    ]
    with torch.no_grad():
        step = position_group_loss(model, BgadLoss("bgad"), fibers, groups, with_boundary_terms=False)
        reference = 0.0
        for level, grid in enumerate(fibers.grids):
            ml = -F.logsigmoid(model.fiber_log_likelihood(level, to_fibers(features[level]), grid))
            weights = border_weights(grid, 3.0, torch.device("cpu")).reshape(-1).repeat(2)
            normal = fibers.normal[level].reshape(-1)
            reference = reference + (ml * weights)[normal].sum() / weights[normal].sum()
        unweighted = position_group_loss(model, BgadLoss("bgad"), label_fibers(features, finite, masks), groups, False)
    torch.testing.assert_close(step.total, reference)
    assert abs(step.total - unweighted.total) > 1e-4  # random features: the border fibers' ML differs
    with pytest.raises(ValueError, match="border_weight must be a finite number >= 0"):
        label_fibers(features, finite, masks, border_weight=-1.0)


@pytest.mark.parametrize("fused", [True, False])
def test_a_non_finite_step_leaves_the_weights_alone(fused: bool) -> None:
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = build_optimizer([weight], learning_rate=0.1, fused=fused)
    weight.grad = torch.ones(3)
    step_unless_nonfinite(optimizer, torch.tensor(False))
    torch.testing.assert_close(weight.detach(), torch.ones(3))
    step_unless_nonfinite(optimizer, torch.tensor(True))
    assert bool((weight.detach() < 1).all())


def test_the_module_labels_and_weighs_training_fibers_with_its_partial_fibers_and_border_weight() -> None:
    from anomalib.data import ImageBatch

    from anomalib_bgad import Bgad

    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[1, 20:22, :] = True
    batch = ImageBatch(image=torch.rand(2, 3, 64, 64), gt_label=torch.tensor([0, 1]), gt_mask=masks)
    selected = torch.ones(2, dtype=torch.bool)
    counts = {}
    for rule in ("normal", "ignore"):
        module = Bgad(partial_fibers=rule, coupling_blocks=1, pre_trained=False, cache_features=False)
        fibers = module._training_fibers(batch, selected)
        counts[rule] = [int(level.sum()) for level in fibers.normal]
    weighted = Bgad(border_weight=2.0, coupling_blocks=1, pre_trained=False, cache_features=False)
    weights = weighted._training_fibers(batch, selected).weights
    assert [level.sum().item() for level in weights] == [256 + 60, 64 + 28, 16 + 12]
    # 64 px input, grids 16 / 8 / 4: the line's cells are one row per level; nearest keeps only the finest's.
    assert counts["normal"] == [2 * 256 - 16, 2 * 64, 2 * 16]
    assert counts["ignore"] == [2 * 256 - 16, 2 * 64 - 8, 2 * 16 - 4]
