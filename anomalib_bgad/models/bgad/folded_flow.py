"""Whole-map inference of a :class:`.flow.ConditionalFlow` with its coupling blocks folded.

Training runs the FrEIA blocks; inference on whole feature maps runs the same function with every
``AllInOneBlock`` and its :class:`.flow.PositionalSubnet` folded (:class:`FusedCoupling`): the positional part of
every subnet precomputed per grid position, constants folded into the weights, rows processed in cache-sized
chunks. Only float rounding differs (about 1e-7 relative). In an export (``torch.export``, ONNX, OpenVINO) it is
one batched graph with a dynamic batch size. The parameters, and so the checkpoint layout, are the FrEIA blocks'.
"""

from __future__ import annotations

from itertools import pairwise
from typing import NamedTuple

import torch
from anomalib.models.components.flow import AllInOneBlock
from anomalib.models.image.cflow.utils import get_logp
from FrEIA.framework import SequenceINN


class FusedCoupling(NamedTuple):
    """One ``AllInOneBlock`` with its :class:`PositionalSubnet`, folded for inference on whole maps.

    The block computes (FrEIA/anomalib ``AllInOneBlock``, ``global_affine_type="SOFTPLUS"``, no GIN, no
    Householder permutation)::

        x1, x2 = split(x);  a = 0.1 * subnet(x1, position)
        s = clamp * tanh(a[:, :c2]);  x2 = x2 * exp(s) + a[:, c2:]
        y = W_perm (g * cat(x1, x2) + offset),  g = 0.1 * softplus(global_scale)
        log|det J| = sum(s) + sum(log g)

    Folded: the condition part of the subnet's first layer plus its bias is one ``(H*W, hidden)`` table
    (the condition is identical for every image), ``0.1`` goes into the output layer, ``g`` and ``offset``
    into the permutation. Same function as the block; only rounding differs (about 1e-7 relative).
    """

    split: int  # channels of x1
    clamp: float
    per_position: torch.Tensor  # (H*W, hidden): condition_layer(conditions) + feature_layer.bias
    feature_weight: torch.Tensor  # (split, hidden)
    output_weight: torch.Tensor  # (hidden, 2 * c2), times 0.1
    output_bias: torch.Tensor  # (2 * c2,), times 0.1
    permute_weight: torch.Tensor  # (C, C): (W_perm * g)^T
    permute_bias: torch.Tensor  # (C,): W_perm @ offset
    log_scale_sum: torch.Tensor  # (): sum(log g)


def fuse_coupling(block: AllInOneBlock, grid_conditions: torch.Tensor) -> FusedCoupling:
    """Fold one coupling block of a flow for whole-map inference (see :class:`FusedCoupling`)."""
    if block.GIN or block.householder or block.reverse_pre_permute or block.conditional:
        msg = "Only AllInOneBlocks without GIN, Householder or reverse permutation and FrEIA condition fold."
        raise ValueError(msg)
    subnet = block.subnet  # a flow.PositionalSubnet
    channels = block.in_channels
    scale = block.global_scale_activation(block.global_scale).reshape(channels)
    permutation = block.w_perm.reshape(channels, channels)
    return FusedCoupling(
        split=block.splits[0],
        clamp=block.clamp,
        per_position=subnet.condition_layer(grid_conditions) + subnet.feature_layer.bias,
        feature_weight=subnet.feature_layer.weight.t(),
        output_weight=(subnet.output_layer.weight * 0.1).t(),
        output_bias=subnet.output_layer.bias * 0.1,
        permute_weight=(permutation * scale).t(),
        permute_bias=permutation @ block.global_offset.reshape(channels),
        log_scale_sum=torch.log(scale).sum(),
    )


def fused_coupling_forward(
    x: torch.Tensor,
    block: FusedCoupling,
    per_position: torch.Tensor,
    grid_positions: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply a folded coupling block to fiber rows.

    Args:
        x (torch.Tensor): Fibers ``(N, C)``.
        block (FusedCoupling): The folded block.
        per_position (torch.Tensor): Its per-position table matched to the rows: ``(N, hidden)``, or
            ``(H*W, hidden)`` with ``grid_positions=H*W`` when ``x`` holds whole maps batch-major.
        grid_positions (int | None): ``H*W`` to broadcast ``per_position`` over the batch. Defaults to ``None``.

    Returns:
        tuple[torch.Tensor, torch.Tensor]: Output fibers ``(N, C)`` and ``log|det J|`` ``(N,)``.
    """
    x1, x2 = x[:, : block.split], x[:, block.split :]
    if grid_positions is None:
        hidden = torch.addmm(per_position, x1, block.feature_weight)
    else:
        hidden = x1 @ block.feature_weight
        hidden = (hidden.view(-1, grid_positions, hidden.shape[-1]) + per_position).view(hidden.shape)
    coefficients = torch.addmm(block.output_bias, torch.relu_(hidden), block.output_weight)
    passive = x2.shape[1]
    log_scale = block.clamp * torch.tanh(coefficients[:, :passive])
    x2 = x2 * torch.exp(log_scale) + coefficients[:, passive:]
    x = torch.addmm(block.permute_bias, torch.cat((x1, x2), dim=1), block.permute_weight)
    return x, log_scale.sum(dim=1) + block.log_scale_sum


class FoldedInference:
    """Whole-map log-likelihoods of a flow's ``SequenceINN`` with folded blocks, caching the folds in inference.

    Not an ``nn.Module``: it holds no parameters of its own, only a reference to the flow's blocks and a cache of
    their folded form, rebuilt whenever a parameter changes (storage or autograd version counter) or the grid
    changes. Code that updates the weights without bumping their version counters (fused optimisers) must call
    ``torch.autograd.graph.increment_version`` on them, as BGAD's training step does.

    Args:
        inn (SequenceINN): The flow's blocks.
        rows_per_chunk (int): Fibers processed through all blocks at once in eager mode, so that the
            ``(rows, hidden)`` activations stay in the CPU cache. Defaults to ``2048``.
    """

    def __init__(self, inn: SequenceINN, rows_per_chunk: int = 2048) -> None:
        self.inn = inn
        self.rows_per_chunk = rows_per_chunk
        self._fused_key: tuple | None = None
        self._fused: list[FusedCoupling] = []
        self._tiled: dict[int, list[torch.Tensor]] = {}

    def _param_state(self) -> tuple:
        """Identity of the current parameter values (storage and in-place version counters)."""
        return tuple((parameter.data_ptr(), parameter._version) for parameter in self.inn.parameters())

    def fused_couplings(
        self,
        conditions: torch.Tensor,
        grid_size: tuple[int, int],
        tracing: bool = False,
    ) -> list[FusedCoupling]:
        """The folded blocks for this grid; cached in inference (no grad, not tracing) until a parameter changes."""
        if torch.is_grad_enabled() or tracing:
            return [fuse_coupling(block, conditions) for block in self.inn.module_list]
        key = (tuple(grid_size), conditions.device, conditions.dtype, self._param_state())
        if self._fused_key != key:
            with torch.inference_mode(False), torch.no_grad():  # normal tensors, usable outside inference mode
                self._fused = [fuse_coupling(block, conditions) for block in self.inn.module_list]
            self._fused_key, self._tiled = key, {}
        return self._fused

    def _tiled_tables(self, blocks: list[FusedCoupling], repeats: int, cache: bool) -> list[torch.Tensor]:
        """Per-position tables repeated for ``repeats`` consecutive whole maps."""
        if not cache:
            return [block.per_position.repeat(repeats, 1) for block in blocks]
        if repeats not in self._tiled:
            with torch.inference_mode(False), torch.no_grad():
                self._tiled[repeats] = [block.per_position.repeat(repeats, 1) for block in blocks]
        return self._tiled[repeats]

    def __call__(
        self,
        fibers: torch.Tensor,
        conditions: torch.Tensor,
        grid_size: tuple[int, int],
        tracing: bool = False,
    ) -> torch.Tensor:
        """Per-dimension log-likelihood ``l = log p / C`` of whole feature maps.

        In eager mode the rows are processed in chunks of about :attr:`rows_per_chunk` (whole maps, or fixed
        slices of one map), all blocks per chunk; an image's chunks do not depend on the other images in the
        batch. While tracing for export it is one batched graph (dynamic batch size).

        Args:
            fibers (torch.Tensor): Whole maps as fibers ``(B * H * W, C)``, batch-major then row-major.
            conditions (torch.Tensor): Condition of every grid position, ``(H * W, dim)``.
            grid_size (tuple[int, int]): ``(H, W)``.
            tracing (bool): Whether an export or compiler is tracing. Defaults to ``False``.

        Returns:
            torch.Tensor: ``(B * H * W,)``.
        """
        grid_positions = conditions.shape[0]
        blocks = self.fused_couplings(conditions, grid_size, tracing)
        if tracing:
            return _chunk_log_likelihood(fibers, blocks, [b.per_position for b in blocks], grid_positions)
        cache = not torch.is_grad_enabled()
        batch = fibers.shape[0] // grid_positions
        outputs = []
        if grid_positions >= self.rows_per_chunk:  # fixed slices of every map
            pieces = max(1, round(grid_positions / self.rows_per_chunk))
            bounds = [grid_positions * i // pieces for i in range(pieces + 1)]
            for image in range(batch):
                offset = image * grid_positions
                for start, stop in pairwise(bounds):
                    tables = [block.per_position[start:stop] for block in blocks]
                    outputs.append(_chunk_log_likelihood(fibers[offset + start : offset + stop], blocks, tables))
        else:  # several whole maps per chunk
            images_per_chunk = max(1, self.rows_per_chunk // grid_positions)
            for first in range(0, batch, images_per_chunk):
                count = min(images_per_chunk, batch - first)
                tables = self._tiled_tables(blocks, count, cache)
                rows = fibers[first * grid_positions : (first + count) * grid_positions]
                outputs.append(_chunk_log_likelihood(rows, blocks, tables))
        return torch.cat(outputs)


def _chunk_log_likelihood(
    fibers: torch.Tensor,
    blocks: list[FusedCoupling],
    tables: list[torch.Tensor],
    grid_positions: int | None = None,
) -> torch.Tensor:
    channels = fibers.shape[1]
    x, log_jac_det = fibers, None
    for block, table in zip(blocks, tables, strict=True):
        x, block_log_jac_det = fused_coupling_forward(x, block, table, grid_positions)
        log_jac_det = block_log_jac_det if log_jac_det is None else log_jac_det + block_log_jac_det
    return get_logp(channels, x, log_jac_det) / channels
