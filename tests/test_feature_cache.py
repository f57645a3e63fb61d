"""The backbone-feature cache: content keys, reuse across epochs, eviction of unused entries."""

from __future__ import annotations

import torch

from anomalib_bgad.models.bgad.feature_cache import FeatureCache


class CountingBackbone:
    """A deterministic two-level 'backbone' that counts the images it computes."""

    def __init__(self) -> None:
        self.computed = 0

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        self.computed += images.shape[0]
        return [images.mean(dim=1, keepdim=True) * 2, images[:, :2, ::2, ::2] + 1]


def images(count: int, seed: int) -> torch.Tensor:
    return torch.rand(count, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_cached_features_equal_the_backbones_and_are_computed_once_per_image() -> None:
    cache, backbone = FeatureCache(), CountingBackbone()
    batch = images(4, seed=0)
    first = cache(batch, backbone)
    second = cache(batch.flip(0), backbone)  # same images, another order
    assert backbone.computed == 4
    assert (cache.hits, cache.misses) == (4, 4)
    for cached, fresh, reordered in zip(first, backbone(batch), second, strict=True):
        torch.testing.assert_close(cached, fresh, rtol=0, atol=0)
        torch.testing.assert_close(reordered, fresh.flip(0), rtol=0, atol=0)


def test_a_changed_image_misses_even_with_the_same_position_in_the_batch() -> None:
    cache, backbone = FeatureCache(), CountingBackbone()
    batch = images(3, seed=1)
    cache(batch, backbone)
    changed = batch.clone()
    changed[1, 0, 0, 0] += 1e-3  # e.g. a regenerated pseudo anomaly on the same normal image
    features = cache(changed, backbone)
    assert backbone.computed == 4  # only the changed image went through the backbone again
    torch.testing.assert_close(features[0], CountingBackbone()(changed)[0], rtol=0, atol=0)


def test_entries_unused_during_an_epoch_are_dropped_at_its_end_and_the_bound_holds() -> None:
    cache, backbone = FeatureCache(), CountingBackbone()
    kept, dropped = images(2, seed=2), images(2, seed=3)
    cache(torch.cat([kept, dropped]), backbone)
    cache.end_epoch()
    assert len(cache) == 4
    cache(kept, backbone)
    cache.end_epoch()
    assert len(cache) == 2
    cache(dropped, backbone)
    assert backbone.computed == 6

    bounded = FeatureCache(max_images=1)
    features = bounded(images(3, seed=4), CountingBackbone())
    assert len(bounded) == 1
    assert features[0].shape == (3, 1, 8, 8)  # beyond the bound, features are still returned
