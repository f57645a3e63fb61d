"""Histogram of normal and anomalous log-likelihoods with the learned boundaries (paper Fig. 6).

:class:`BoundaryHistogram` is a Lightning callback that BGAD adds to every run
(:meth:`anomalib_bgad.Bgad.configure_callbacks`). During ``test`` it collects, for every feature
level, the normalised log-likelihoods ``ln = l / alpha`` of the test images' feature positions,
split into normal and anomalous ones by the ground-truth mask (downsampled to the level, nearest,
as in training; images without a mask count by their image label), keeps a uniform random
subsample of at most ``max_samples`` values per level and class, and at the end of the test
writes ``boundary_histogram.png`` into the run's results folder (``trainer.default_root_dir``, the
folder whose ``images/`` sub-folder holds anomalib's visualisations) with ``b_n`` and
``b_a = b_n - tau`` drawn per level. It also counts, over all values (not the subsample), how many
fibers of each class lie below ``b_n`` and below ``b_a`` (:class:`Separation`): whether the push
separates the test set's anomalous fibers from the normal ones. The legends give those shares.

The values come from a forward hook on the model's anomaly-map generator: the test step's own
forward pass, no second pass through the flows.

Example:
    >>> from anomalib.engine import Engine
    >>> from anomalib_bgad import Bgad
    >>> engine = Engine()  # doctest: +SKIP
    >>> engine.test(Bgad(), datamodule=datamodule)  # doctest: +SKIP
    >>> # -> results/Bgad/<dataset>/<category>/latest/boundary_histogram.png
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.hooks import RemovableHandle

from .fibers import downsample_mask

logger = logging.getLogger(__name__)

FILE_NAME = "boundary_histogram.png"


class _BottomKSample:
    """Uniform random sample without replacement of at most ``size`` values from a stream (bottom-k priorities)."""

    def __init__(self, size: int, generator: torch.Generator) -> None:
        self.size = size
        self.generator = generator
        self.values = torch.empty(0)
        self.priorities = torch.empty(0)
        self.seen = 0

    def add(self, values: torch.Tensor) -> None:
        values = values.detach().float().reshape(-1).cpu()
        self.seen += values.numel()
        priorities = torch.rand(values.numel(), generator=self.generator)
        self.values = torch.cat([self.values, values])
        self.priorities = torch.cat([self.priorities, priorities])
        if self.values.numel() > self.size:
            keep = torch.topk(self.priorities, self.size, largest=False).indices
            self.values, self.priorities = self.values[keep], self.priorities[keep]


@dataclass(frozen=True)
class Separation:
    """How one level's test fibers lie against the learned boundaries: counts of fibers, over the whole test set.

    A fiber below ``b_n`` scores a positive distance ``b_n - ln``; below ``b_a = b_n - tau`` it is where the push
    (paper Eq. 8) sends the known anomalies. Training puts about ``beta`` (1 %) of the normal training fibers
    below ``b_n`` (:mod:`.boundary`).

    Attributes:
        normal (int): Normal fibers.
        normal_below_b_n (int): Normal fibers with ``ln < b_n`` (false alarms at the boundary).
        anomalous (int): Anomalous fibers (inside the downsampled ground-truth masks).
        anomalous_below_b_n (int): Anomalous fibers with ``ln < b_n``.
        anomalous_below_b_a (int): Anomalous fibers with ``ln < b_a``.
    """

    normal: int = 0
    normal_below_b_n: int = 0
    anomalous: int = 0
    anomalous_below_b_n: int = 0
    anomalous_below_b_a: int = 0

    @classmethod
    def count(cls, values: torch.Tensor, anomalous: torch.Tensor, b_n: float, b_a: float) -> Separation:
        """Count one batch: ``values`` ``ln`` of any shape, ``anomalous`` a boolean of the same shape."""
        normal, anomalous_values = values[~anomalous], values[anomalous]
        return cls(
            normal.numel(),
            int((normal < b_n).sum()),
            anomalous_values.numel(),
            int((anomalous_values < b_n).sum()),
            int((anomalous_values < b_a).sum()),
        )

    def __add__(self, other: Separation) -> Separation:
        """Field-wise sum: the counts of two batches together."""
        return Separation(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    def shares(self) -> dict[str, float | None]:
        """The counts as shares of their class, in ``[0, 1]``; ``None`` for a class with no fiber."""
        return {
            "normal_below_b_n": self.normal_below_b_n / self.normal if self.normal else None,
            "anomalous_below_b_n": self.anomalous_below_b_n / self.anomalous if self.anomalous else None,
            "anomalous_below_b_a": self.anomalous_below_b_a / self.anomalous if self.anomalous else None,
        }


def anomalous_positions(
    shape: torch.Size,
    masks: torch.Tensor | None,
    labels: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor:
    """Which test fibers are anomalous, boolean ``(B, H_k, W_k)``: the mask downsampled (nearest, as in training).

    An image without a mask (or with an empty one) counts by its image label. ``shape`` is the level's
    ``(B, H_k, W_k)``.
    """
    batch = shape[0]
    by_label = torch.zeros(batch, dtype=torch.bool, device=device)
    if labels is not None:
        by_label = labels.reshape(-1).to(device).bool()
    by_label = by_label.view(-1, 1, 1).expand(shape)
    if masks is None:
        return by_label
    by_mask = downsample_mask(masks.to(device), tuple(shape[-2:]), batch)
    has_mask = (masks.reshape(batch, -1).to(device).float().amax(dim=1) > 0.5).view(-1, 1, 1)
    return torch.where(has_mask, by_mask, by_label)


class BoundaryHistogram(Callback):
    """Write a histogram of normal/anomalous normalised log-likelihoods with ``b_n`` and ``b_a`` per level.

    Args:
        output_dir (str | Path | None): Folder for the PNG. Defaults to ``None``: ``trainer.default_root_dir``.
        max_samples (int): Values kept per level and class (uniform random subsample). Defaults to ``200_000``.
        bins (int): Histogram bins. Defaults to ``100``.
        seed (int): Seed of the subsampling. Defaults to ``0``.

    Attributes:
        path (Path | None): The PNG written by the last test.
        separation (list[Separation]): Per level, the last test's counts against ``b_n`` and ``b_a``.
    """

    def __init__(
        self,
        output_dir: str | Path | None = None,
        max_samples: int = 200_000,
        bins: int = 100,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.max_samples = max_samples
        self.bins = bins
        self.seed = seed
        self.path: Path | None = None
        self.separation: list[Separation] = []
        self._handle: RemovableHandle | None = None
        self._levels: list[torch.Tensor] | None = None
        self._normal: list[_BottomKSample] = []
        self._anomalous: list[_BottomKSample] = []

    def _capture(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        del module
        self._levels = [level.detach() for level in args[0]]

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Hook the anomaly-map generator, which receives the per-level ``ln`` maps."""
        del trainer
        generator = torch.Generator().manual_seed(self.seed)
        levels = pl_module.model.num_levels
        self._normal = [_BottomKSample(self.max_samples, generator) for _ in range(levels)]
        self._anomalous = [_BottomKSample(self.max_samples, generator) for _ in range(levels)]
        self.separation = [Separation() for _ in range(levels)]
        self._handle = pl_module.model.anomaly_map_generator.register_forward_pre_hook(self._capture)

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Split the batch's ``ln`` values into normal and anomalous positions per level."""
        del trainer, outputs, batch_idx, dataloader_idx
        if self._levels is None:
            return
        masks = getattr(batch, "gt_mask", None)
        labels = getattr(batch, "gt_label", None)
        boundary = pl_module.model.boundary
        for level, values in enumerate(self._levels):
            anomalous = anomalous_positions(values.shape, masks, labels, values.device)
            self._normal[level].add(values[~anomalous])
            self._anomalous[level].add(values[anomalous])
            self.separation[level] += Separation.count(
                values, anomalous, float(boundary.b_n[level]), float(boundary.b_a[level])
            )
        self._levels = None

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Remove the hook and write the histogram."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if not trainer.is_global_zero or not self._normal:
            return
        boundary = pl_module.model.boundary
        output_dir = self.output_dir or Path(trainer.default_root_dir)
        self.path = write_boundary_histogram(
            output_dir / FILE_NAME,
            [sample.values for sample in self._normal],
            [sample.values for sample in self._anomalous],
            boundary.b_n.detach().cpu(),
            boundary.b_a.detach().cpu(),
            bins=self.bins,
            normal_seen=[sample.seen for sample in self._normal],
            anomalous_seen=[sample.seen for sample in self._anomalous],
            separation=self.separation or None,
        )
        logger.info("Wrote the BGAD boundary histogram to %s", self.path)
        for level, counts in enumerate(self.separation):
            logger.info("Level %d: %s", level, separation_label(counts))


def count_label(kept: int, seen: int | None, name: str) -> str:
    """How many values of a class a panel shows, saying so when they are a subsample.

    Example:
        >>> count_label(200_000, 1_234_567, "normal")
        '200,000 of 1.2M normal (random subsample)'
        >>> count_label(5_000, 5_000, "anomalous")
        '5,000 anomalous'
    """
    if seen is None or seen <= kept:
        return f"{kept:,} {name}"
    total = f"{seen / 1e6:.1f}M" if seen >= 1_000_000 else f"{seen:,}"
    return f"{kept:,} of {total} {name} (random subsample)"


def _percent(share: float | None) -> str:
    return "n/a" if share is None else f"{100 * share:.1f} %"


def separation_label(separation: Separation) -> str:
    """One line of :class:`Separation`'s shares, in percent.

    Example:
        >>> separation_label(Separation(1000, 12, 200, 90, 40))
        'below b_n: 1.2 % of normal, 45.0 % of anomalous fibers; below b_a: 20.0 % of anomalous'
    """
    shares = separation.shares()
    return (
        f"below b_n: {_percent(shares['normal_below_b_n'])} of normal, "
        f"{_percent(shares['anomalous_below_b_n'])} of anomalous fibers; "
        f"below b_a: {_percent(shares['anomalous_below_b_a'])} of anomalous"
    )


def write_boundary_histogram(
    path: str | Path,
    normal: list[torch.Tensor],
    anomalous: list[torch.Tensor],
    normal_boundary: torch.Tensor,
    anomalous_boundary: torch.Tensor,
    bins: int = 100,
    normal_seen: Sequence[int] | None = None,
    anomalous_seen: Sequence[int] | None = None,
    separation: Sequence[Separation] | None = None,
) -> Path:
    """Plot one panel per level: normal (blue) and anomalous (red) ``ln`` densities, ``b_n`` and ``b_a = b_n - tau``.

    Args:
        path (str | Path): PNG to write (parent folders are created).
        normal (list[torch.Tensor]): Normal ``ln`` values per level.
        anomalous (list[torch.Tensor]): Anomalous ``ln`` values per level.
        normal_boundary (torch.Tensor): ``b_n`` per level.
        anomalous_boundary (torch.Tensor): ``b_a`` per level (:attr:`.boundary.Boundary.b_a`).
        bins (int): Histogram bins. Defaults to ``100``.
        normal_seen (Sequence[int] | None): Normal values per level before subsampling; panel titles say
            "kept of seen (random subsample)" where fewer were kept. Defaults to ``None``: all values were kept.
        anomalous_seen (Sequence[int] | None): The same for the anomalous values. Defaults to ``None``.
        separation (Sequence[Separation] | None): Per level, the counts against the boundaries over all values; the
            legend then gives the shares below ``b_n`` and ``b_a``. Defaults to ``None``: no shares.

    Returns:
        Path: The written file.
    """
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    levels = len(normal)
    figure = Figure(figsize=(5 * levels, 4), layout="constrained")
    axes = figure.subplots(1, levels, squeeze=False)[0]
    for level, axis in enumerate(axes):
        b_n, b_a = float(normal_boundary[level]), float(anomalous_boundary[level])
        margin = b_n - b_a
        present = [values for values in (normal[level], anomalous[level]) if values.numel()]
        # Range: both classes, without the far tails (anomalies can reach very low values), and both boundaries.
        if present:
            pooled = torch.cat(present)
            low, high = torch.quantile(pooled[:1_000_000], torch.tensor([0.005, 0.995])).tolist()
        else:
            low, high = b_a, b_n
        low, high = min(low, b_a - margin), max(high, b_n + margin)
        for values, color, label in ((normal[level], "tab:blue", "normal"), (anomalous[level], "tab:red", "anomalous")):
            if values.numel():
                clipped = values.clamp(low, high).numpy()
                axis.hist(clipped, bins=bins, range=(low, high), density=True, alpha=0.55, color=color, label=label)
        n_label, a_label = f"$b_n$ = {b_n:.3f}", f"$b_a = b_n - \\tau$ = {b_a:.3f}"
        if separation is not None:
            shares = separation[level].shares()
            n_label += (
                f"\nbelow: {_percent(shares['normal_below_b_n'])} of normal, "
                f"{_percent(shares['anomalous_below_b_n'])} of anomalous"
            )
            a_label += f"\nbelow: {_percent(shares['anomalous_below_b_a'])} of anomalous"
        axis.axvline(b_n, color="black", linestyle="-", linewidth=1.5, label=n_label)
        axis.axvline(b_a, color="black", linestyle="--", linewidth=1.5, label=a_label)
        counts = (
            count_label(normal[level].numel(), normal_seen[level] if normal_seen else None, "normal"),
            count_label(anomalous[level].numel(), anomalous_seen[level] if anomalous_seen else None, "anomalous"),
        )
        axis.set_title(f"level {level}\n{counts[0]} / {counts[1]}", fontsize="medium")
        axis.set_xlabel("normalised log-likelihood  $l / \\alpha$ (tails clipped)")
        axis.set_ylabel("density")
        axis.legend(loc="upper left", fontsize="small")
    figure.suptitle("BGAD: test log-likelihoods and the learned boundaries")
    figure.savefig(path, dpi=100)
    return path
