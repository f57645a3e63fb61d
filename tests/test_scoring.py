"""Per-image scoring: the documented formula, batch invariance and the folded inference path.

The score of an image must not depend on the other images in its batch (anomalib's CFLOW
subtracts the batch maximum; the authors' BGAD the test-set maximum). These tests score images
alone, in a batch of 32 and next to extreme images, and compare the fast inference path
(folded coupling blocks, chunked rows, separable blur) with the formula computed the plain way.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.models.components import GaussianBlur2d
from lightning.pytorch import seed_everything

from anomalib_bgad import Bgad
from anomalib_bgad.models.bgad.anomaly_map import AnomalyMapGenerator
from anomalib_bgad.models.bgad.fibers import to_fibers
from anomalib_bgad.models.bgad.image_score import ImageScore
from anomalib_bgad.models.bgad.torch_model import BgadModel

ATOL = 1e-5  # the batch-invariance tolerance, on raw scores/maps and on normalised ones


def perturb_flows(model: BgadModel, seed: int = 0, scale: float = 0.05) -> None:
    """Move the flows away from their near-identity initialisation, as training does."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.flows.parameters():
            if parameter.requires_grad:
                parameter.add_(scale * torch.randn(parameter.shape, generator=generator))


@pytest.fixture(scope="module")
def model() -> BgadModel:
    """Small BGAD (2 blocks per flow, offline lite0 weights) with trained-like flows and a non-zero boundary."""
    seed_everything(0, verbose=False)  # torch and numpy (FrEIA's permutations)
    bgad = BgadModel(coupling_blocks=2)
    perturb_flows(bgad)
    bgad.boundary.b_n.copy_(torch.tensor([-0.31, -0.42, -0.55]))
    return bgad.eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """32 pre-processed 64 px images (ImageNet-normalised noise textures)."""
    generator = torch.Generator().manual_seed(1)
    smooth = F.avg_pool2d(torch.rand(32, 3, 72, 72, generator=generator), 9, stride=1)
    return (smooth - 0.45) / 0.225


def extreme_images() -> torch.Tensor:
    """Garbage neighbours: huge noise, a constant, a saturated checkerboard, huge negative values."""
    generator = torch.Generator().manual_seed(2)
    checker = ((torch.arange(64).view(-1, 1) // 4 + torch.arange(64) // 4) % 2).float() * 200 - 100
    return torch.stack(
        [
            1e4 * torch.randn(3, 64, 64, generator=generator),
            torch.full((3, 64, 64), 55.0),
            checker.expand(3, 64, 64),
            torch.full((3, 64, 64), -1e3),
        ]
    )


def reference_scores(
    model: BgadModel, images: torch.Tensor, level_aggregation: str = "mean"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The scoring formula computed the plain way, one image at a time.

    ``map = G_sigma * mean_k up_bilinear(b_n,k - l_k / alpha)``, ``score`` = the mean of its highest 1 % of pixels
    (the default ``image_score_top_share``, by a full sort instead of ``topk``), with ``l_k`` from the flow
    through FrEIA's ``SequenceINN`` (not the folded inference path) and anomalib's 2D ``GaussianBlur2d``;
    ``max`` takes the maximum over the levels, ``probability`` the mean of ``1 - exp(-alpha max(d_k, 0))``.
    """
    blur = GaussianBlur2d(sigma=4.0, channels=1, kernel_size=25)
    maps = []
    with torch.no_grad():
        for image in images.split(1):
            upsampled = []
            for level, feature in enumerate(model.feature_extractor(image)):
                _, _, height, width = feature.shape
                log_likelihood = model.fiber_log_likelihood(level, to_fibers(feature), (height, width))
                distance = (
                    model.boundary.b_n[level] - log_likelihood.view(1, 1, height, width) / model.boundary.normalizer
                )
                if level_aggregation == "probability":
                    distance = 1 - torch.exp(-model.boundary.normalizer * distance.clamp(min=0))
                upsampled.append(F.interpolate(distance, size=image.shape[-2:], mode="bilinear", align_corners=False))
            stacked = torch.stack(upsampled)
            maps.append(blur(stacked.amax(dim=0) if level_aggregation == "max" else stacked.mean(dim=0)))
    anomaly_map = torch.cat(maps)
    highest = anomaly_map.flatten(1).sort(dim=1, descending=True).values[:, : round(0.01 * anomaly_map[0].numel())]
    return highest.mean(dim=1), anomaly_map


def score(model: BgadModel, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        output = model(images)
    return output.pred_score, output.anomaly_map


def test_scores_follow_the_documented_formula(model: BgadModel, images: torch.Tensor) -> None:
    expected_score, expected_map = reference_scores(model, images[:4])
    pred_score, anomaly_map = score(model, images[:4])
    torch.testing.assert_close(anomaly_map, expected_map, atol=ATOL, rtol=0)
    torch.testing.assert_close(pred_score, expected_score, atol=ATOL, rtol=0)
    # The boundary enters as a plain shift: the scores are distances below b_n, not clipped, not batch-scaled.
    assert pred_score.std() > 1e-3


def test_normalized_maps_are_each_levels_log_likelihood_over_alpha(model: BgadModel, images: torch.Tensor) -> None:
    """The per-level maps the anomaly map is made of (also read by benchmarks/border.py), against FrEIA's flow."""
    with torch.inference_mode():
        normalized = model.normalized_maps(images[:2])
        features = model.feature_extractor(images[:2])
        assert len(normalized) == len(features) == model.num_levels
        for level, (feature, level_map) in enumerate(zip(features, normalized, strict=True)):
            batch, _, height, width = feature.shape
            log_likelihood = model.fiber_log_likelihood(level, to_fibers(feature), (height, width))
            expected = log_likelihood.view(batch, height, width) / model.boundary.normalizer
            torch.testing.assert_close(level_map, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("level_aggregation", ["max", "probability"])
def test_other_level_aggregations_follow_their_formulas_and_stay_per_image(
    model: BgadModel, images: torch.Tensor, level_aggregation: str
) -> None:
    mean_scores, _ = score(model, images[:4])
    default = model.anomaly_map_generator.level_aggregation
    model.anomaly_map_generator.level_aggregation = level_aggregation
    try:
        expected_score, expected_map = reference_scores(model, images[:4], level_aggregation)
        pred_score, anomaly_map = score(model, images[:4])
        alone_score, _ = score(model, images[2:3])
    finally:
        model.anomaly_map_generator.level_aggregation = default
    # The folded inference path vs FrEIA differ by float rounding; the maximum keeps a level's rounding whole.
    torch.testing.assert_close(anomaly_map, expected_map, atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(pred_score, expected_score, atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(alone_score, pred_score[2:3], atol=ATOL, rtol=0)
    assert not torch.allclose(pred_score, mean_scores, atol=1e-3)  # really another score


def test_top_share_image_score_is_the_mean_of_the_highest_pixels_and_stays_per_image(
    model: BgadModel, images: torch.Tensor
) -> None:
    default_scores, default_maps = score(model, images[:4])
    model.image_score = ImageScore(top_share=0.0)
    try:
        max_scores, _ = score(model, images[:4])
        model.image_score = ImageScore(top_share=0.02)
        pred_score, anomaly_map = score(model, images[:4])
        alone_score, _ = score(model, images[2:3])
    finally:
        model.image_score = ImageScore()
    torch.testing.assert_close(anomaly_map, default_maps, atol=0, rtol=0)  # the map does not change
    torch.testing.assert_close(max_scores, default_maps.amax(dim=(-3, -2, -1)), atol=0, rtol=0)  # 0: the maximum
    assert (default_scores > pred_score + 1e-5).all()  # the default 1 % lies between the maximum and the 2 %
    assert (default_scores < max_scores - 1e-5).all()
    highest = anomaly_map.flatten(1).sort(dim=1, descending=True).values[:, : round(0.02 * 64 * 64)]
    torch.testing.assert_close(pred_score, highest.mean(dim=1), atol=ATOL, rtol=0)
    torch.testing.assert_close(alone_score, pred_score[2:3], atol=ATOL, rtol=0)
    assert (pred_score < max_scores - 1e-4).all()  # really below the maximum on these smooth maps


def test_image_score_top_share_outside_0_1_names_the_argument() -> None:
    with pytest.raises(ValueError, match=r"image_score_top_share must be in \[0, 1\].*got 2"):
        ImageScore(top_share=2)
    with pytest.raises(ValueError, match="image_score_top_share"):
        Bgad(image_score_top_share=-0.1, pre_trained=False, visualizer=False)


@pytest.mark.parametrize("rows_per_chunk", [2048, 100], ids=["whole-maps-per-chunk", "slices-of-maps"])
def test_image_scored_alone_in_a_batch_of_32_or_next_to_garbage_gets_the_same_score(
    model: BgadModel,
    images: torch.Tensor,
    rows_per_chunk: int,
) -> None:
    for flow in model.flows:
        flow.rows_per_chunk = rows_per_chunk
    try:
        alone = [score(model, image) for image in images.split(1)]
        alone_scores = torch.cat([s for s, _ in alone])
        alone_maps = torch.cat([m for _, m in alone])
        batch_scores, batch_maps = score(model, images)
        mixed = torch.cat([extreme_images()[:2], images[:5], extreme_images()[2:], images[5:8]])
        mixed_scores, mixed_maps = score(model, mixed)
    finally:
        for flow in model.flows:
            flow.rows_per_chunk = 2048
    torch.testing.assert_close(batch_scores, alone_scores, atol=ATOL, rtol=0)
    torch.testing.assert_close(batch_maps, alone_maps, atol=ATOL, rtol=0)
    normal_in_mixed = torch.tensor([2, 3, 4, 5, 6, 9, 10, 11])
    torch.testing.assert_close(mixed_scores[normal_in_mixed], alone_scores[:8], atol=ATOL, rtol=0)
    torch.testing.assert_close(mixed_maps[normal_in_mixed], alone_maps[:8], atol=ATOL, rtol=0)
    # The garbage really is scored as far outside the boundary (it would dominate any batch-wide normalisation).
    assert mixed_scores[[0, 1, 7, 8]].min() > alone_scores.max()


def test_lightning_pipeline_with_post_processing_is_batch_invariant(images: torch.Tensor) -> None:
    """pre-processor -> model -> post-processor (normalisation + threshold learned on validation), as exported."""
    torch.manual_seed(0)
    module = Bgad(coupling_blocks=2, pre_processor=Bgad.configure_pre_processor(image_size=(64, 64)), visualizer=False)
    perturb_flows(module.model)
    module.model.boundary.b_n.copy_(torch.tensor([-0.3, -0.4, -0.5]))
    module.eval()
    raw = (images[:8] * 0.225 + 0.45).clamp(0, 1)  # RGB in 0..1, the exported graph's input
    with torch.inference_mode():
        raw_scores = module.model(module.pre_processor(raw)).pred_score
    middle = raw_scores.sort().values[3:5].mean()  # between two images: no score sits exactly on the threshold
    post = module.post_processor
    spread = raw_scores.max() - raw_scores.min()  # normalised scores then lie in (1/6, 5/6): none is clamped
    post.image_min.fill_(raw_scores.min() - spread)
    post.image_max.fill_(raw_scores.max() + spread)
    post._image_threshold.fill_(middle)
    post.pixel_min.fill_(raw_scores.min() - 0.5)
    post.pixel_max.fill_(raw_scores.max() + 0.01)
    post._pixel_threshold.fill_(middle)
    garbage = torch.stack([torch.zeros(3, 64, 64), torch.ones(3, 64, 64)])
    with torch.inference_mode():
        together = module(torch.cat([garbage, raw]))
        alone = [module(image) for image in raw.split(1)]
    alone_scores = torch.cat([a.pred_score for a in alone])
    torch.testing.assert_close(together.pred_score[2:], alone_scores, atol=ATOL, rtol=0)
    torch.testing.assert_close(together.anomaly_map[2:], torch.cat([a.anomaly_map for a in alone]), atol=ATOL, rtol=0)
    assert torch.equal(together.pred_label[2:], torch.cat([a.pred_label for a in alone]))
    # The normalised scores straddle the stored threshold (0.5 after normalisation): labels are not trivial.
    assert 0.0 < alone_scores.min() < 0.5 < alone_scores.max()
    assert together.pred_label[2:].any() and not together.pred_label[2:].all()


def test_cached_inference_tables_follow_parameter_updates(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    bgad = BgadModel(coupling_blocks=2).eval()
    before, _ = score(bgad, images[:2])
    perturb_flows(bgad, seed=5)  # in-place update, like an optimiser step
    after, _ = score(bgad, images[:2])
    expected, _ = reference_scores(bgad, images[:2])
    assert (after - before).abs().max() > 1e-3
    torch.testing.assert_close(after, expected, atol=ATOL, rtol=0)
    # Loading other weights (as a checkpoint restore does) invalidates the cached tables too.
    torch.manual_seed(1)
    other = BgadModel(coupling_blocks=2).eval()
    perturb_flows(other, seed=6)
    bgad.load_state_dict(other.state_dict())
    torch.testing.assert_close(score(bgad, images[:2])[0], reference_scores(other, images[:2])[0], atol=ATOL, rtol=0)


def test_whole_map_likelihood_keeps_gradients_in_training_mode(model: BgadModel) -> None:
    features = [torch.randn(2, c, s, s) for c, s in zip(model.feature_extractor.channels, (16, 8, 4), strict=True)]
    maps = model.log_likelihood_maps(features)
    maps[0].sum().backward()
    grads = [p.grad for p in model.flows[0].parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    model.zero_grad(set_to_none=True)
    for level, (feature, log_likelihood) in enumerate(zip(features, maps, strict=True)):
        expected = model.fiber_log_likelihood(level, to_fibers(feature), tuple(feature.shape[-2:]))
        torch.testing.assert_close(log_likelihood.detach().reshape(-1), expected.detach(), atol=1e-5, rtol=1e-5)


def test_separable_blur_equals_anomalibs_gaussian_blur() -> None:
    generator = torch.Generator().manual_seed(0)
    maps = torch.randn(3, 1, 70, 50, generator=generator)
    generator_module = AnomalyMapGenerator(sigma=4.0)
    torch.testing.assert_close(generator_module.smooth(maps), generator_module.blur(maps), atol=1e-6, rtol=0)


def test_inference_mode_caches_do_not_break_later_autograd(images: torch.Tensor) -> None:
    """Validation runs under ``torch.inference_mode``; training (or an export) with autograd may follow."""
    torch.manual_seed(0)
    bgad = BgadModel(coupling_blocks=1).eval()
    with torch.inference_mode():
        bgad(images[:1])
    bgad.train()
    maps = bgad(images[:1])
    features = bgad.feature_extractor(images[:1])
    fibers = to_fibers(features[0])
    positions = torch.arange(fibers.shape[0])
    trained = bgad.fiber_log_likelihood(0, fibers, tuple(features[0].shape[-2:]), positions)
    (maps[0].sum() + trained.sum()).backward()
    assert bgad.flows[0].inn.module_list[0].subnet.condition_layer.weight.grad is not None
