"""The border diagnostic's statistics on hand-made maps (benchmarks/border.py)."""

from __future__ import annotations

import pytest
import torch

from anomalib_bgad.models.bgad.image_score import top_share_mean
from benchmarks.border import border_statistics, edge_mask


def test_edge_mask_marks_the_outer_ring() -> None:
    mask = edge_mask(6, 5, 1)
    assert mask.sum() == 6 * 5 - 4 * 3
    assert not mask[1:-1, 1:-1].any() and mask[0].all() and mask[:, -1].all()


def test_statistics_find_edge_peaks_of_normal_maps_and_score_three_ways() -> None:
    maps = torch.zeros(4, 32, 32)
    maps[0, 0, 5] = maps[1, 15, 31] = 2.0  # normal images: a hot pixel on the top row / the right column
    maps[2, 16, 16] = maps[3, 10, 20] = 1.0  # anomalous images: interior defect, weaker than the border spots
    labels = torch.tensor([0, 0, 1, 1])
    level = torch.zeros(4, 4, 4)
    level[0, 0, 0] = level[1, 1, 1] = 1.0  # level peaks: one normal image on the edge, one inside
    train_mean = torch.zeros(32, 32)
    train_mean[0] = train_mean[-1] = 2.0  # training normals are hot along the top and bottom rows

    stats = border_statistics([level], maps, labels, train_mean, ring=4)

    assert stats["normal_map_max_in_ring"] == 1.0 and stats["n_normal"] == 2
    assert stats["ring_share_of_area"] == pytest.approx(1 - 24 * 24 / 32 / 32)
    (level_stats,) = stats["levels"]
    assert level_stats["normal_peak_on_edge"] == 0.5 and level_stats["edge_share_of_positions"] == 0.75
    assert level_stats["mean_d_edge"] == pytest.approx(1 / 24)
    assert level_stats["mean_d_interior"] == pytest.approx(1 / 8)
    auroc = stats["image_AUROC"]
    assert auroc["max"] == 0.0  # the border spots outscore the defects
    assert auroc["interior_max"] == 1.0
    assert auroc["position_centred_max"] == 0.5  # image 0's spot is on a hot row of the mean map, image 1's is not


def test_top_share_mean_ranks_a_wide_defect_above_a_single_hot_pixel() -> None:
    maps = torch.zeros(2, 20, 20)
    maps[0, 3, 3] = 2.0  # normal image: one hot pixel
    maps[1, 5:10, 5:10] = 1.0  # anomalous image: a 25-pixel defect, weaker than the hot pixel
    assert top_share_mean(maps, 0.05).tolist() == pytest.approx([2.0 / 20, 1.0])  # 5 % of 400 pixels = 20
    assert top_share_mean(maps, 1e-6).tolist() == [2.0, 1.0]  # at least one pixel: the maximum

    stats = border_statistics([torch.zeros(2, 4, 4)], maps, torch.tensor([0, 1]), torch.zeros(20, 20), ring=2)

    assert stats["image_AUROC"]["max"] == 0.0
    assert stats["image_AUROC"]["top5%_mean"] == 1.0
