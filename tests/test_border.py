"""The border diagnostic's statistics on hand-made maps (benchmarks/border.py)."""

from __future__ import annotations

import pytest
import torch

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
