"""Interleaved timing: every timed cell runs once per round, in turn, so machine load hits all cells alike."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Entry:
    """One timed (model, batch size) cell."""

    backbone: str
    model: str
    runtime: str
    batch: int
    call: Callable[[], object]
    times_ms: list[float] = field(default_factory=list)

    @property
    def per_image(self) -> list[float]:
        return [t / self.batch for t in self.times_ms]

    @property
    def median(self) -> float:
        return statistics.median(self.per_image)

    @property
    def minimum(self) -> float:
        return min(self.per_image)


def time_interleaved(
    entries: list[Entry], rounds: int, warmup: int = 1, log: Callable[[str], None] | None = None
) -> list[float]:
    """Time every entry once per round, in turn; returns the 1-minute load average after each round."""
    for entry in entries:
        for _ in range(warmup):
            entry.call()
    loads = []
    for index in range(rounds):
        for entry in entries:
            start = time.perf_counter()
            entry.call()
            entry.times_ms.append((time.perf_counter() - start) * 1000)
        loads.append(os.getloadavg()[0])
        if log is not None:
            log(f"round {index + 1}/{rounds} done (load average {loads[-1]:.1f})")
    return loads
