"""The level-combination diagnostic (benchmarks/levels.py): its maps and image scores."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import seed_everything
from sklearn.metrics import roc_auc_score

from anomalib_bgad.models.bgad.image_score import top_share_mean
from anomalib_bgad.models.bgad.torch_model import BgadModel
from benchmarks.levels import combined_maps, image_scores, level_maps, standardized_map
from benchmarks.worker import pixel_metrics


def test_the_level_maps_average_to_the_models_anomaly_map() -> None:
    """Upsampling and smoothing are linear: the mean of the per-level maps is the model's ``mean`` map."""
    seed_everything(0, verbose=False)
    model = BgadModel(coupling_blocks=1, image_score_top_share=0.05).eval()
    model.boundary.b_n.copy_(torch.tensor([-0.3, -0.4, -0.5]))
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        maps = level_maps(model, model.normalized_maps(images), (64, 64))
        prediction = model(images)
    assert [tuple(m.shape) for m in maps] == [(2, 64, 64)] * 3
    torch.testing.assert_close(torch.stack(maps).mean(0), prediction.anomaly_map[:, 0], atol=1e-5, rtol=0)
    scores = image_scores(maps, combined_maps(maps, torch.ones(3)), top_share=0.05)
    torch.testing.assert_close(scores["map"], prediction.pred_score, atol=1e-5, rtol=0)


def test_standardizing_lets_a_small_scale_level_rank_the_images() -> None:
    """Level 0 is noise on a 10x larger scale; level 1 holds the defects. Only the standardized map ranks them."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([0] * 6 + [1] * 6)
    noise = 10 * torch.rand(12, 16, 16, generator=generator)  # level 0: large, uninformative
    defects = 0.1 * torch.rand(12, 16, 16, generator=generator)
    defects[6:, 4:8, 4:8] += 1.0  # level 1: the anomalous images' defects
    spreads = torch.tensor([10.0, 0.1])

    scores = image_scores([noise, defects], combined_maps([noise, defects], spreads), top_share=0.1)

    def auroc(name: str) -> float:
        return roc_auc_score(labels.numpy(), scores[name].numpy())

    assert auroc("level1") == 1.0 and auroc("standardized_map") == 1.0
    assert auroc("map") < 0.9  # the noise level's scale decides the plain mean
    torch.testing.assert_close(scores["level_mean"], (scores["level0"] + scores["level1"]) / 2)
    torch.testing.assert_close(standardized_map([noise, defects], spreads), (noise / 10 + defects / 0.1) / 2)
    assert scores["level0"].tolist() == pytest.approx(top_share_mean(noise, 0.1).tolist())


def test_pixel_metrics_of_a_perfect_and_a_reversed_map() -> None:
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[0, 2:6, 2:6] = masks[1, 8:12, 9:13] = True
    perfect = pixel_metrics(masks.float(), masks)
    assert perfect["pixel_AUROC"] == 1.0 and perfect["pixel_AUPRO"] == pytest.approx(1.0)
    reversed_map = pixel_metrics(1 - masks.float(), masks)
    assert reversed_map["pixel_AUROC"] == 0.0 and reversed_map["pixel_AUPRO"] < 0.01
