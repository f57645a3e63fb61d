"""Fibers: the feature vectors at the positions of a feature map, and how training draws them.

A *fiber* is the ``C_k``-dimensional feature vector at one position of the level-``k`` feature map. The flows
see fibers one by one, conditioned on their position.

Training draws fibers **by position group**: per optimiser step, every level contributes the fibers of all the
batch's images at a random subset of its grid positions (the level's positions are shuffled once per batch and
cut into as many groups as the batch takes steps). All levels take the same number of steps per batch and are
trained together in each step. Grouping by position lets the positional part of every coupling subnet be
computed once per position of the group instead of once per fiber (see :class:`.flow.PositionalSubnet`): the
condition is 128 of the subnet's 140-240 inputs, so this is most of the training arithmetic. The authors
instead shuffle all fibers of a level and cut them into chunks of 4096, one level per step; both are unbiased
draws of the same fibers and feed the same loss.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple, get_args

import torch
import torch.nn.functional as F  # noqa: N812


def to_fibers(features: torch.Tensor) -> torch.Tensor:
    """Flatten a feature map ``(B, C, H, W)`` into fibers ``(B*H*W, C)``, batch-major then row-major."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])


def downsample_mask(
    masks: torch.Tensor | None,
    size: tuple[int, int],
    batch_size: int,
    any_pixel: bool = False,
) -> torch.Tensor:
    """Downsample pixel masks to a feature level, as a boolean per position.

    Args:
        masks (torch.Tensor | None): ``(B, H, W)`` or ``(B, 1, H, W)``; ``None`` means all normal.
        size (tuple[int, int]): Feature map size ``(H_k, W_k)``.
        batch_size (int): ``B``, used when ``masks`` is ``None``.
        any_pixel (bool): ``False``: nearest (the authors' rule). ``True``: a position is set when any mask pixel
            of its cell is (max pooling over the cell), a superset of nearest. Defaults to ``False``.

    Returns:
        torch.Tensor: Boolean ``(B, H_k, W_k)``.
    """
    if masks is None:
        return torch.zeros(batch_size, *size, dtype=torch.bool)
    masks = masks.reshape(masks.shape[0], 1, *masks.shape[-2:]).float()
    if any_pixel:
        return F.adaptive_max_pool2d(masks, tuple(size))[:, 0] > 0.5
    return F.interpolate(masks, size=tuple(size), mode="nearest")[:, 0] > 0.5


class LabeledFibers(NamedTuple):
    """A training batch's feature maps and which of their fibers are normal and which anomalous.

    Attributes:
        features (list[torch.Tensor]): Per level, ``(B, C_k, H_k, W_k)``.
        normal (list[torch.Tensor]): Per level, boolean ``(B, H_k, W_k)``: finite fibers outside the masks.
        anomalous (list[torch.Tensor]): Per level, boolean ``(B, H_k, W_k)``: finite fibers inside the masks.
        grids (list[tuple[int, int]]): Per level, ``(H_k, W_k)``.
        weights (list[torch.Tensor] | None): Per level, ``(H_k, W_k)``: each position's weight in the loss
            (:func:`border_weights`); ``None`` weighs every fiber alike.
    """

    features: list[torch.Tensor]
    normal: list[torch.Tensor]
    anomalous: list[torch.Tensor]
    grids: list[tuple[int, int]]
    weights: list[torch.Tensor] | None = None


PartialFibers = Literal["normal", "ignore", "coverage"]
"""Values of ``partial_fibers`` (a ``Literal``, so that anomalib's CLI rejects any other at parsing)."""
PARTIAL_FIBERS = get_args(PartialFibers)

COVERAGE_LABEL_SHARE = 0.5
"""Under ``partial_fibers="coverage"``: the share of its cell a mask must cover for a fiber to count as anomalous."""


def mask_coverage(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Share of each feature-level cell that the pixel masks cover (average pooling over the cell).

    Args:
        masks (torch.Tensor): ``(B, H, W)`` or ``(B, 1, H, W)`` pixel masks.
        size (tuple[int, int]): Feature map size ``(H_k, W_k)``.

    Returns:
        torch.Tensor: Float ``(B, H_k, W_k)`` in ``[0, 1]``.
    """
    masks = masks.reshape(masks.shape[0], 1, *masks.shape[-2:]).float()
    return F.adaptive_avg_pool2d(masks, tuple(size))[:, 0]


def check_partial_fibers(partial_fibers: str) -> None:
    """Raise ``ValueError`` naming the argument unless ``partial_fibers`` is one of :data:`PARTIAL_FIBERS`."""
    if partial_fibers not in PARTIAL_FIBERS:
        msg = f"partial_fibers must be one of {list(PARTIAL_FIBERS)}, got {partial_fibers!r} (model README)."
        raise ValueError(msg)


def check_border_weight(border_weight: float) -> None:
    """Raise ``ValueError`` naming the argument unless ``border_weight`` is finite and ``>= 0``."""
    if not math.isfinite(border_weight) or border_weight < 0:
        msg = (
            f"border_weight must be a finite number >= 0 (1 weighs border fibers like the others), got {border_weight}."
        )
        raise ValueError(msg)


def border_weights(grid: tuple[int, int], border_weight: float, device: torch.device) -> torch.Tensor:
    """Loss weight of every position of a level: ``border_weight`` on its outermost ring of positions, else 1.

    The ring is one position wide at every level: the positions whose cell touches the image border. Their
    receptive field reaches furthest past the border (into the reflection padding of
    :class:`.feature_extractor.FrozenFeatureExtractor`), and on normal test images it is where the coarsest level's
    distance ``b_n - ln`` peaks (``benchmarks/border.py``). Not in the paper, whose loss weighs all fibers alike.

    Args:
        grid (tuple[int, int]): ``(H_k, W_k)``.
        border_weight (float): Weight of the ring's fibers relative to the others' (``>= 0``).
        device (torch.device): Device of the weights.

    Returns:
        torch.Tensor: Float ``(H_k, W_k)``.
    """
    weights = torch.full(grid, float(border_weight), device=device)
    weights[1:-1, 1:-1] = 1.0
    return weights


def label_fibers(
    features: list[torch.Tensor],
    finite: list[torch.Tensor],
    masks: torch.Tensor | None,
    partial_fibers: str = "normal",
    border_weight: float = 1.0,
) -> LabeledFibers:
    """Label every fiber normal or anomalous by its image's pixel mask (:func:`downsample_mask`).

    A *partial* fiber's cell holds mask pixels, yet nearest downsampling labels it normal: the rim of a defect,
    or all of a defect smaller than the level's stride. The paper and the authors' code count it as normal, so
    the ML loss and the pull raise the likelihood of defect features there; ``"ignore"`` leaves it out of both
    selections. Nearest downsampling also labels a cell anomalous when only its centre pixel is masked: for thin
    or fragmented masks (cracks, Perlin blobs) most anomalous fibers of the coarse levels are then mostly normal
    texture, pushed out by the push term. ``"coverage"`` labels by the share of the cell the mask covers: anomalous
    from :data:`COVERAGE_LABEL_SHARE` up, normal at none, every other touched cell in neither selection.

    Args:
        features (list[torch.Tensor]): Per level, ``(B, C_k, H_k, W_k)``.
        finite (list[torch.Tensor]): Per level, boolean ``(B, H_k, W_k)``: fibers fit to train on (non-finite
            ones are in neither selection).
        masks (torch.Tensor | None): ``(B, H, W)`` or ``(B, 1, H, W)`` pixel masks; ``None`` means all normal.
        partial_fibers (str): ``"normal"`` (paper), ``"ignore"`` or ``"coverage"``. Defaults to ``"normal"``.
        border_weight (float): Loss weight of the fibers on each level's outermost ring of positions
            (:func:`border_weights`); ``1`` (paper) leaves ``weights`` ``None``. Defaults to ``1``.

    Returns:
        LabeledFibers: The features with their labels (and weights) on the features' device.

    Raises:
        ValueError: If ``partial_fibers`` is not one of :data:`PARTIAL_FIBERS`, or ``border_weight`` is negative or
            not finite.
    """
    check_partial_fibers(partial_fibers)
    check_border_weight(border_weight)
    grids = [tuple(level.shape[-2:]) for level in features]
    device, batch_size = features[0].device, features[0].shape[0]
    if partial_fibers == "coverage" and masks is not None:
        coverage = [mask_coverage(masks, grid).to(device) for grid in grids]
        known = [share >= COVERAGE_LABEL_SHARE for share in coverage]
        touched = [share > 0 for share in coverage]
    else:
        known = [downsample_mask(masks, grid, batch_size).to(device) for grid in grids]
        touched = known
        if partial_fibers == "ignore":
            touched = [downsample_mask(masks, grid, batch_size, any_pixel=True).to(device) for grid in grids]
    normal = [~mask & ok for mask, ok in zip(touched, finite, strict=True)]
    anomalous = [mask & ok for mask, ok in zip(known, finite, strict=True)]
    weights = None if border_weight == 1 else [border_weights(grid, border_weight, device) for grid in grids]
    return LabeledFibers(features, normal, anomalous, grids, weights)


def training_fibers(
    images: torch.Tensor,
    masks: torch.Tensor | None,
    paths: Sequence[str],
    backbone: Callable[[torch.Tensor], list[torch.Tensor]],
    cache: Callable[[torch.Tensor, Callable[[torch.Tensor], list[torch.Tensor]]], list[torch.Tensor]] | None,
    drop_nonfinite: Callable[[list[torch.Tensor], Sequence[str]], tuple[list[torch.Tensor], list[torch.Tensor]]],
    partial_fibers: str,
    border_weight: float = 1.0,
) -> LabeledFibers:
    """A training batch's labeled fibers: backbone features, non-finite fibers zeroed and unlabeled.

    Args:
        images (torch.Tensor): The images trained on, ``(B, 3, H, W)``; ``B = 0`` only under DDP, where this rank
            then joins the collective steps with one zero-weighted dummy image (all its fibers unlabeled).
        masks (torch.Tensor | None): ``(B, H, W)`` or ``(B, 1, H, W)`` pixel masks; ``None`` means all normal.
        paths (Sequence[str]): The images' paths, to name those with non-finite features.
        backbone (Callable): Images to per-level features ``(B, C_k, H_k, W_k)``.
        cache (Callable | None): The feature cache (:class:`.feature_cache.FeatureCache`): features of images
            seen in earlier epochs without the backbone; ``None`` calls the backbone every time. The DDP dummy
            image is never cached.
        drop_nonfinite (Callable): Features and paths to the features with non-finite fibers zeroed and the
            per-level finite masks (:class:`.numerics.NonFiniteFibers`).
        partial_fibers (str): How fibers partly covered by a mask count (:func:`label_fibers`).
        border_weight (float): Loss weight of the border fibers (:func:`label_fibers`). Defaults to ``1``.

    Returns:
        LabeledFibers: See :func:`label_fibers`.
    """
    if images.shape[0] == 0:
        features = backbone(images.new_zeros(1, *images.shape[1:]))
        unused = [torch.zeros_like(level[:, 0]).bool() for level in features]
        return label_fibers([level * 0.0 for level in features], unused, None, border_weight=border_weight)
    features = cache(images, backbone) if cache is not None else backbone(images)
    return label_fibers(*drop_nonfinite(features, paths), masks, partial_fibers, border_weight)


def fiber_generator(epoch: int, batch_idx: int) -> torch.Generator:
    """CPU RNG of a batch's position groups, fixed by (global seed, epoch, batch) so that resumed runs draw alike.

    The global seed is Lightning's ``PL_GLOBAL_SEED`` (0 if unset). ``hash`` of a tuple of ints is not salted by
    ``PYTHONHASHSEED``: the draw is the same in every process.
    """
    seed = int(os.environ.get("PL_GLOBAL_SEED", "0"))
    return torch.Generator().manual_seed(hash((seed, epoch, batch_idx)) & 0x7FFF_FFFF_FFFF)


def steps_per_batch(num_images: int, grid_size: tuple[int, int], fiber_batch_size: int) -> int:
    """Optimiser steps for a batch: enough that a step holds about ``fiber_batch_size`` fibers of the finest level.

    Args:
        num_images (int): Images in the batch (under DDP: the largest batch of all ranks).
        grid_size (tuple[int, int]): ``(H, W)`` of the finest (largest) feature level.
        fiber_batch_size (int): Target fibers of the finest level per step.

    Returns:
        int: Number of steps, between 1 and the number of positions of the finest level.
    """
    positions = grid_size[0] * grid_size[1]
    return max(1, min(positions, round(num_images * positions / fiber_batch_size)))


def position_groups(grid_size: tuple[int, int], num_groups: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Shuffle the positions ``y * W + x`` of a grid and cut them into ``num_groups`` groups of near-equal size.

    A grid with fewer positions than groups repeats its shuffled positions, so that every group has at least one.

    Args:
        grid_size (tuple[int, int]): ``(H, W)``.
        num_groups (int): Number of groups (the batch's optimiser steps).
        generator (torch.Generator): CPU generator of the shuffle.

    Returns:
        list[torch.Tensor]: ``num_groups`` int64 tensors of positions (CPU).
    """
    positions = grid_size[0] * grid_size[1]
    order = torch.randperm(positions, generator=generator)
    if positions < num_groups:
        order = order.repeat(math.ceil(num_groups / positions))[:num_groups]
    return list(order.tensor_split(num_groups))


def batch_position_groups(
    grids: list[tuple[int, int]],
    num_groups: int,
    generator: torch.Generator,
    device: torch.device,
) -> list[list[torch.Tensor]]:
    """:func:`position_groups` of every level, moved to ``device`` in one copy (one host synchronisation on GPU).

    Args:
        grids (list[tuple[int, int]]): ``(H_k, W_k)`` per level.
        num_groups (int): Groups (optimiser steps) per level.
        generator (torch.Generator): CPU generator of the shuffles (levels drawn in order).
        device (torch.device): Device of the features.

    Returns:
        list[list[torch.Tensor]]: Per level, ``num_groups`` position tensors on ``device``.
    """
    groups = [position_groups(grid, num_groups, generator) for grid in grids]
    flat = torch.cat([group for level in groups for group in level]).to(device)
    parts = iter(flat.split([len(group) for level in groups for group in level]))
    return [[next(parts) for _ in level] for level in groups]


def gather_positions(features: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Fibers of all images at the given positions, ``(B * P, C)`` batch-major (position-group order).

    Args:
        features (torch.Tensor): Feature map ``(B, C, H, W)``.
        positions (torch.Tensor): ``(P,)`` grid positions ``y * W + x`` on the features' device.

    Returns:
        torch.Tensor: ``(B * P, C)``.
    """
    batch, channels = features.shape[:2]
    return features.flatten(2).index_select(2, positions).permute(0, 2, 1).reshape(batch * positions.numel(), channels)


def gather_position_values(values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Per-position values (labels, weights) of all images at the given positions, in the fiber order of
    :func:`gather_positions`.

    Args:
        values (torch.Tensor): ``(B, H, W)``.
        positions (torch.Tensor): ``(P,)`` grid positions ``y * W + x`` on the values' device.

    Returns:
        torch.Tensor: ``(B * P,)``.
    """
    return values.flatten(1).index_select(1, positions).reshape(-1)
