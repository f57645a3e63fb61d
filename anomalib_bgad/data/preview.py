"""Preview grid of pseudo anomalies (RPAG, SmoothBlend and/or Perlin), to check them by eye before training.

Example:
    >>> from anomalib_bgad.data import FewAnomalyMVTecAD, preview_pseudo_anomalies
    >>> datamodule = FewAnomalyMVTecAD(root="./datasets/MVTecAD", category="bottle")  # doctest: +SKIP
    >>> preview_pseudo_anomalies(datamodule, "pseudo_anomalies.png", num_samples=8)  # doctest: +SKIP
"""

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as tvf
from torchvision.utils import make_grid

from anomalib_bgad.data.datamodules.base import FewAnomalyDataModule
from anomalib_bgad.data.pseudo_anomalies.sources import GENERATORS, PERLIN, RPAG, SMOOTHBLEND, source_parts
from anomalib_bgad.data.pseudo_anomalies.train_set import FewAnomalyTrainSet


def _build(datamodule: FewAnomalyDataModule | str | Path | dict[str, Any]) -> FewAnomalyDataModule:
    if isinstance(datamodule, FewAnomalyDataModule):
        return datamodule
    if isinstance(datamodule, str | Path):
        return FewAnomalyDataModule.from_manifest(datamodule, num_workers=0)
    if isinstance(datamodule, dict) and "class_path" in datamodule:
        module_name, _, class_name = str(datamodule["class_path"]).rpartition(".")
        cls = getattr(importlib.import_module(module_name), class_name)
        built = cls(**datamodule.get("init_args", {}))
        if isinstance(built, FewAnomalyDataModule):
            return built
    msg = (
        "preview_pseudo_anomalies needs a few-anomaly datamodule (e.g. FewAnomalyMVTecAD(...)), the path of a "
        f"split manifest, or a {{'class_path': ..., 'init_args': {{...}}}} dict; got {datamodule!r}."
    )
    raise TypeError(msg)


def _overlay(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Tint the mask red and draw its outline."""
    out = image.clone()
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    out = torch.where(mask, 0.5 * out + 0.5 * red, out)
    padded = torch.nn.functional.pad(mask[None, None].float(), (1, 1, 1, 1))
    eroded = -torch.nn.functional.max_pool2d(-padded, 3, stride=1)[0, 0] > 0.5
    edge = mask & ~eroded
    return torch.where(edge, red.expand_as(out), out)


def preview_pseudo_anomalies(
    datamodule: FewAnomalyDataModule | str | Path | dict[str, Any],
    out_png: str | Path,
    num_samples: int = 16,
    epoch: int = 0,
    columns: int = 4,
    cell_size: int = 192,
    source: str | None = None,
) -> Path:
    """Write a PNG grid of generated pseudo anomalies: each sample and, next to it, its pasted mask in red.

    The samples are those of training (same seed, epoch and indices): with several sources, ``num_samples`` is
    split evenly among them, in the order RPAG, SmoothBlend, Perlin.

    Args:
        datamodule (FewAnomalyDataModule | str | Path | dict[str, Any]): Few-anomaly datamodule (set up if
            needed), the path of a split manifest to replay, or a ``{"class_path", "init_args"}`` dict.
        out_png (str | Path): Output PNG file.
        num_samples (int): Pseudo anomalies to show. Defaults to ``16``.
        epoch (int): Epoch whose pseudo anomalies to show (they change every epoch). Defaults to ``0``.
        columns (int): Samples per row. Defaults to ``4``.
        cell_size (int): Side of each image in the grid, in pixels. Defaults to ``192``.
        source (str | None): ``"rpag"``, ``"smoothblend"``, ``"perlin"``, ``"both"`` or a ``+``-joined set;
            ``None``: the datamodule's ``pseudo_anomaly_source``. Defaults to ``None``.

    Returns:
        Path: The written PNG.

    Raises:
        ValueError: If RPAG samples are asked for and the split has no known anomaly to paste.
    """
    datamodule = _build(datamodule)
    source = datamodule.pseudo_anomaly_source if source is None else source
    parts = source_parts(source)
    if datamodule.selection is None:
        datamodule.setup()
    share = {part: num_samples // len(parts) + (index < num_samples % len(parts)) for index, part in enumerate(parts)}
    counts = {name: share.get(name, 0) for name in GENERATORS}
    train_set = FewAnomalyTrainSet(
        datamodule.train_data,
        seed=datamodule.seed,
        num_rpag=counts[RPAG],
        num_smoothblend=counts[SMOOTHBLEND],
        num_perlin=counts[PERLIN],
        paste_in_foreground=datamodule._paste_in_foreground(),
        perlin_texture=datamodule.perlin_texture,
    )
    if RPAG in parts and train_set.num_rpag == 0:
        msg = (
            f"{datamodule.name} has no known anomaly to paste (n_anomalies={datamodule.n_anomalies}); "
            "set n_anomalies >= 1 to preview RPAG pseudo anomalies, or source='smoothblend' or 'perlin' (from normal "
            "images)."
        )
        raise ValueError(msg)
    cells = []
    for index in range(train_set.num_pseudo):
        image, mask, _, _ = train_set.generate(epoch, index)
        image = tvf.resize_image(image, [cell_size, cell_size], antialias=True).clamp(0.0, 1.0)
        mask = tvf.resize_mask(mask[None].to(torch.uint8), [cell_size, cell_size])[0] > 0
        cells += [image, _overlay(image, mask)]
    grid = make_grid(cells, nrow=2 * columns, padding=4, pad_value=1.0)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    array = (grid.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    Image.fromarray(array).save(out_png)
    return out_png
