"""How BGAD's feature levels combine into the image score, on unseen defect types.

    python -m benchmarks.levels                        # BGAD and NFAD (0.4.0 defaults), one-class, seed 0
    python -m benchmarks.levels --seed 1 --categories grass

For each (configuration, category) of the localisation study's one-class split this trains the model as the study
does (12 epochs, same manifest), then scores the test images with the default image score (the mean of the map's
highest 1 %, :mod:`anomalib_bgad.models.bgad.image_score`) taken on different maps built from the same levels:

- ``map``: the model's anomaly map, the mean over levels of the upsampled, smoothed ``d_k = b_n,k - ln_k``;
- ``level0`` ... ``levelK-1``: each level's own upsampled, smoothed ``d_k``;
- ``level_mean``: the mean over the levels of each level's own score (each level ranks its own highest pixels);
- ``standardized_map``: the mean over levels of ``d_k / s_k``, with ``s_k`` the spread of the normal training
  fibers of level ``k``, their median ``ln`` minus ``b_n,k``: each level's distance in units of how far its
  typical normal fiber lies above its boundary, so that no level dominates the mean by its scale alone.

It reports image AUROC for each, pixel AUROC and AUPRO of ``map`` and ``standardized_map`` (the two that are
anomaly maps), and ``s_k``. The question it answers: the push of the known anomalies raises one level's distances
far more than the others' (at stride 4 on grass, seed 0, the anomalous images' mean maximum ``d`` is 0.47 against
0.25 without the anomalies); is the image-AUROC gap to NFAD on unseen types in how the levels are combined?
Results are merged into ``benchmarks/results/localisation/levels.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from anomalib_bgad.models.bgad.image_score import top_share_mean
from benchmarks.border import OUTPUT, train_study_cell
from benchmarks.worker import pixel_metrics

TOP_SHARE = 0.01  # the package's default image score


def level_maps(net: Any, normalized: list[torch.Tensor], image_size: tuple[int, int]) -> list[torch.Tensor]:
    """Each level's upsampled, smoothed ``d_k`` as the model's anomaly map computes it, ``(N, H, W)`` each.

    The model's ``mean`` map is the mean of these (upsampling and smoothing are linear).
    """
    generator = net.anomaly_map_generator
    upsampled = generator.upsampled_levels(normalized, net.boundary, image_size)
    return [generator.smooth(level)[:, 0] for level in upsampled]


def combined_maps(maps: list[torch.Tensor], spreads: torch.Tensor) -> dict[str, torch.Tensor]:
    """The two anomaly maps made of all levels, ``(N, H, W)`` each: ``map`` and ``standardized_map``."""
    return {"map": torch.stack(maps).mean(0), "standardized_map": standardized_map(maps, spreads)}


def image_scores(
    maps: list[torch.Tensor], combined: dict[str, torch.Tensor], top_share: float = TOP_SHARE
) -> dict[str, Any]:
    """The image scores of the module docstring from per-level maps ``(N, H, W)`` and :func:`combined_maps`."""
    per_level = [top_share_mean(level_map, top_share) for level_map in maps]
    return {
        "map": top_share_mean(combined["map"], top_share),
        **{f"level{level}": score for level, score in enumerate(per_level)},
        "level_mean": torch.stack(per_level).mean(0),
        "standardized_map": top_share_mean(combined["standardized_map"], top_share),
    }


def standardized_map(maps: list[torch.Tensor], spreads: torch.Tensor) -> torch.Tensor:
    """The mean over levels of ``map_k / s_k``, ``(N, H, W)``."""
    return torch.stack([level_map / spread for level_map, spread in zip(maps, spreads.tolist(), strict=True)]).mean(0)


def measure(config: str, category: str, seed: int) -> dict[str, Any]:
    """Train ``config`` on the study's one-class split; image AUROC of every score, pixel metrics of both maps."""
    from sklearn.metrics import roc_auc_score

    model, datamodule = train_study_cell(config, category, seed, Path("results/studies/levels"))
    net = model.model.eval()
    train_ln: list[list[torch.Tensor]] = []
    maps: list[list[torch.Tensor]] = []
    labels, masks = [], []
    with torch.no_grad():
        for batch in datamodule.train_dataloader():
            keep = batch.gt_label == 0
            if keep.any():
                train_ln.append(
                    [level.flatten() for level in net.normalized_maps(model.pre_processor(batch.image[keep]))]
                )
        for batch in datamodule.test_dataloader():
            images = model.pre_processor(batch.image)
            maps.append(level_maps(net, net.normalized_maps(images), tuple(images.shape[-2:])))
            labels.append(batch.gt_label.int())
            masks.append(batch.gt_mask.bool())
    medians = torch.stack([torch.cat([b[k] for b in train_ln]).median() for k in range(net.num_levels)])
    spreads = medians - net.boundary.b_n
    levels = [torch.cat([b[k] for b in maps]) for k in range(net.num_levels)]
    y, mask = torch.cat(labels), torch.cat(masks).reshape(-1, *levels[0].shape[-2:])
    combined = combined_maps(levels, spreads)
    scores = image_scores(levels, combined)
    return {
        "spread": spreads.tolist(),
        "image_AUROC": {name: float(roc_auc_score(y.numpy(), s.numpy())) for name, s in scores.items()},
        **{name: pixel_metrics(anomaly_map, mask) for name, anomaly_map in combined.items()},
    }


def main(argv: list[str] | None = None) -> None:
    """Command-line interface."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs", default="bgad_border32,nfad_border32", help="comma-separated (default: %(default)s)"
    )
    parser.add_argument("--categories", default="brick,grass,gravel", help="comma-separated (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="the study split's seed (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=OUTPUT / "levels.json", help="JSON file (default: %(default)s)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    results: dict[str, Any] = json.loads(args.output.read_text()) if args.output.is_file() else {}  # keep other keys
    for config in args.configs.split(","):
        for category in args.categories.split(","):
            key = f"{config}/{category}/seed{args.seed}"
            results[key] = measure(config, category, args.seed)
            print(key, json.dumps(results[key]), flush=True)
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(results, indent=1) + "\n")  # after every cell: a stop keeps the rest


if __name__ == "__main__":
    main()
