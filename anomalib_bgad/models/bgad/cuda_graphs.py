"""CUDA graphs of the flows' training forward and backward: the same computation, without per-kernel launch cost.

A training step pushes a few thousand fibers through 8 coupling blocks per level: on a GPU each of its ~1000
small kernels costs more to launch from Python than to run. :class:`GraphedFlows` captures each level's flow
(forward and backward, via ``torch.cuda.make_graphed_callables``) once per input shape and replays it. The graphs
read the flows' parameters in place, so optimiser updates are seen; inputs are copied into the graphs' static
buffers at every call. Used on CUDA only and not under DDP; any failure to capture falls back to the eager flows
(logged once). Shapes beyond ``max_graphs_per_level`` (e.g. odd last batches) run eagerly.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)


class _FlowCall(nn.Module):
    """``flow(fibers, conditions)`` as a module with tensor arguments only (what graph capture needs)."""

    def __init__(self, flow: nn.Module) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, fibers: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        return self.flow(fibers, conditions)


class GraphedFlows:
    """Per-level flows whose training calls replay CUDA graphs.

    Args:
        flows (nn.ModuleList): The model's flows (one per level).
        max_graphs_per_level (int): Distinct input shapes captured per level. Defaults to ``4``.
    """

    def __init__(self, flows: nn.ModuleList, max_graphs_per_level: int = 4) -> None:
        self.flows = flows
        self.max_graphs_per_level = max_graphs_per_level
        self._graphs: dict[tuple, nn.Module] = {}
        self._failed = False

    def __call__(self, level: int, fibers: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        """``l`` of ``fibers`` (``(B * P, C)``, batch-major) at the positions of ``conditions`` (``(P, dim)``)."""
        flow = self.flows[level]
        if self._failed or fibers.device.type != "cuda" or not torch.is_grad_enabled():
            return flow(fibers, conditions)
        key = (level, tuple(fibers.shape), tuple(conditions.shape))
        graphed = self._graphs.get(key)
        if graphed is None:
            if sum(1 for other in self._graphs if other[0] == level) >= self.max_graphs_per_level:
                return flow(fibers, conditions)
            try:
                sample = (fibers.detach().clone(), conditions.detach().clone())
                graphed = torch.cuda.make_graphed_callables(_FlowCall(flow), sample)
            except Exception as error:  # any capture failure: train eagerly instead
                self._failed = True
                logger.warning("BGAD: CUDA graph capture failed (%s); training the flows eagerly.", error)
                return flow(fibers, conditions)
            self._graphs[key] = graphed
        return graphed(fibers, conditions)
