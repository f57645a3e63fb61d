"""Image borders after the padding: where normal anomaly maps peak, per level, and what the padding costs.

    python -m benchmarks.border                       # BGAD (0.3.0 default), one-class grass and gravel, seed 0
    python -m benchmarks.border --timing-only         # only the padded / unpadded inference time
    python -m benchmarks.border --configs bgad_border32,nfad_border32 --categories brick,grass,gravel --seed 1 \
        --no-timing                                   # BGAD and NFAD on seed 1's split, no timing

For each (configuration, category) of the localisation study's one-class split this trains the model as the study
does (12 epochs, same manifest), then on the normal test images reports:

- the share of images whose anomaly-map maximum lies in the outer ``ring`` pixels, and per feature level the share
  whose distance map ``d_k = b_n,k - ln_k`` peaks on the outermost grid positions, with the mean ``d_k`` there and
  inside (a level whose border positions are less likely than its interior shows ``mean_d_edge > mean_d_interior``);
- image AUROC of several image scores on the same maps: the map's maximum (the model's), the maximum after
  subtracting the mean map of the normal training images (position-centred), the maximum over the interior only,
  and the mean of the map's highest 1, 2 and 5 % of pixels (``image_score_top_share`` 0.01, 0.02 and 0.05).

It also times ``BgadModel``'s eager forward with ``border_padding`` 32 and 0, interleaved, on random weights.
Results are merged into ``benchmarks/results/localisation/border.json`` (what a run measures replaces its keys).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from anomalib_bgad.models.bgad.image_score import top_share_mean
from benchmarks.timing import Entry, time_interleaved

LITE0 = "tf_efficientnet_lite0"
STUDY = Path("benchmarks/studies/localisation.yaml")
OUTPUT = Path("benchmarks/results/localisation")
TOP_PERCENTS = (1, 2, 5)  # image scores: the mean of the map's highest 1, 2 and 5 % of pixels


def edge_mask(height: int, width: int, ring: int) -> torch.Tensor:
    """``(height, width)`` boolean mask of the outer ``ring`` rows and columns."""
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[:ring] = mask[-ring:] = True
    mask[:, :ring] = mask[:, -ring:] = True
    return mask


def border_statistics(
    level_distances: list[torch.Tensor],
    anomaly_maps: torch.Tensor,
    labels: torch.Tensor,
    train_mean_map: torch.Tensor,
    ring: int = 16,
) -> dict[str, Any]:
    """Where normal maps peak and the image AUROC of several image scores.

    Args:
        level_distances (list[torch.Tensor]): ``d_k`` per level, each ``(N, H_k, W_k)``, for the test images.
        anomaly_maps (torch.Tensor): ``(N, H, W)`` anomaly maps of the test images.
        labels (torch.Tensor): ``(N,)``, 1 for anomalous.
        train_mean_map (torch.Tensor): ``(H, W)`` mean anomaly map of the normal training images.
        ring (int): Border width in pixels of the anomaly map. Defaults to ``16``.

    Returns:
        dict[str, Any]: The shares, per-level means and AUROCs described in the module docstring.
    """
    from sklearn.metrics import roc_auc_score

    normal = labels == 0
    edge = edge_mask(*anomaly_maps.shape[-2:], ring)
    peaks = anomaly_maps[normal].flatten(1).argmax(1)
    result: dict[str, Any] = {
        "n_test": len(labels),
        "n_normal": int(normal.sum()),
        "ring_px": ring,
        "ring_share_of_area": edge.float().mean().item(),
        "normal_map_max_in_ring": edge.flatten()[peaks].float().mean().item(),
        "levels": [],
    }
    for distance in level_distances:
        level_edge = edge_mask(*distance.shape[-2:], 1)
        normal_distance = distance[normal]
        level_peaks = normal_distance.flatten(1).argmax(1)
        result["levels"].append(
            {
                "grid": list(distance.shape[-2:]),
                "edge_share_of_positions": level_edge.float().mean().item(),
                "normal_peak_on_edge": level_edge.flatten()[level_peaks].float().mean().item(),
                "mean_d_edge": normal_distance[:, level_edge].mean().item(),
                "mean_d_interior": normal_distance[:, ~level_edge].mean().item(),
            }
        )
    scores = {
        "max": anomaly_maps.amax((1, 2)),
        "position_centred_max": (anomaly_maps - train_mean_map).amax((1, 2)),
        "interior_max": anomaly_maps[:, ~edge].amax(1),
        **{f"top{percent}%_mean": top_share_mean(anomaly_maps, percent / 100) for percent in TOP_PERCENTS},
    }
    result["image_AUROC"] = {name: float(roc_auc_score(labels.numpy(), s.numpy())) for name, s in scores.items()}
    return result


def train_study_cell(config: str, category: str, seed: int, work: Path, setting: str = "one_class") -> tuple[Any, Any]:
    """Train ``config`` of the localisation study on its ``setting`` split of ``category`` and ``seed``, as the
    study does (same manifest, epochs and seed), on the CPU; the trained Lightning module and its datamodule."""
    from benchmarks.study import _job, load_study, split_rows
    from benchmarks.worker import _start_training, build_engine

    study = load_study(STUDY, [f"seeds=[{seed}]"])
    (row,) = [r for r in split_rows(study, OUTPUT) if r["study_setting"] == setting and r["category"] == category]
    job = _job(study, config, row, work)
    model, datamodule = _start_training(job)
    build_engine("cpu", int(job["model"]["max_epochs"]), Path(job["work_dir"]), []).fit(model, datamodule=datamodule)
    return model, datamodule


def measure(config: str, category: str, seed: int, ring: int) -> dict[str, Any]:
    """Train ``config`` on the study's one-class split of ``category`` and ``seed``; :func:`border_statistics`."""
    model, datamodule = train_study_cell(config, category, seed, Path("results/studies/border"))
    net = model.model.eval()
    normal_train, distances, maps, labels = [], [], [], []
    with torch.no_grad():
        for batch in datamodule.train_dataloader():
            keep = batch.gt_label == 0
            if keep.any():
                normal_train.append(net(model.pre_processor(batch.image[keep])).anomaly_map[:, 0])
        for batch in datamodule.test_dataloader():
            images = model.pre_processor(batch.image)  # BgadModel.forward's eval path, keeping the levels' maps
            normalized = net.normalized_maps(images)
            distances.append([net.boundary.distance(k, level) for k, level in enumerate(normalized)])
            maps.append(net.anomaly_map_generator(normalized, net.boundary, images.shape[-2:])[:, 0])
            labels.append(batch.gt_label.int())
    level_distances = [torch.cat([d[k] for d in distances]) for k in range(len(distances[0]))]
    train_mean = torch.cat(normal_train).mean(0)
    return border_statistics(level_distances, torch.cat(maps), torch.cat(labels), train_mean, ring)


def padding_cost(rounds: int = 7) -> dict[str, float]:
    """Eager ``BgadModel`` forward, ms per 256 x 256 image, ``border_padding`` 32 and 0, interleaved; medians.

    Also the ratio of the fastest rounds (the least contended) and the 1-minute load average before and after:
    above about 2 on 2 cores another job shared the machine, and the ratios are not the padding's alone.
    """
    from anomalib_bgad.models.bgad.torch_model import BgadModel

    def forwards(model: torch.nn.Module, images: torch.Tensor, repeats: int) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                for _ in range(repeats):
                    model(images)

        return run

    load_before = os.getloadavg()[0]
    models = {padding: BgadModel(pre_trained=False, border_padding=padding).eval() for padding in (32, 0)}
    entries = {}
    for batch in (1, 8):
        images = torch.rand(batch, 3, 256, 256)
        repeats = 8 // batch  # 8 images per timed call at every batch size
        for padding, model in models.items():
            call = forwards(model, images, repeats)
            entries[(padding, batch)] = Entry(LITE0, f"BGAD border {padding}", "torch eager", batch * repeats, call)
    loads = time_interleaved(list(entries.values()), rounds)
    result = {"load_average_1min_before": load_before, "load_average_1min_after": loads[-1]}
    for batch in (1, 8):
        padded, plain = entries[(32, batch)], entries[(0, batch)]
        result |= {f"batch{batch}_ms_border32": padded.median, f"batch{batch}_ms_border0": plain.median}
        result[f"batch{batch}_ratio"] = padded.median / plain.median
        result[f"batch{batch}_ratio_of_minima"] = padded.minimum / plain.minimum
    return result


def main(argv: list[str] | None = None) -> None:
    """Command-line interface."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs", default="bgad_border32", help="study configurations, comma-separated (default: %(default)s)"
    )
    parser.add_argument("--categories", default="grass,gravel", help="comma-separated (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="the study split's seed (default: %(default)s)")
    parser.add_argument(
        "--ring", type=int, default=16, help="border width in pixels of the anomaly map (default: %(default)s)"
    )
    parser.add_argument("--timing-only", action="store_true", help="only time the padded and unpadded forward")
    parser.add_argument("--no-timing", action="store_true", help="skip the timing (the stored padding_cost stays)")
    parser.add_argument(
        "--output",
        type=Path,
        default=OUTPUT / "border.json",
        help="JSON file; keys this run measures replace those already there (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    results: dict[str, Any] = json.loads(args.output.read_text()) if args.output.is_file() else {}  # keep other keys
    if args.timing_only and args.no_timing:
        parser.error("--timing-only and --no-timing exclude each other")
    if not args.no_timing:
        results["padding_cost"] = padding_cost()
        print(json.dumps(results["padding_cost"], indent=1), flush=True)
    if not args.timing_only:
        for config in args.configs.split(","):
            for category in args.categories.split(","):
                key = f"{config}/{category}/seed{args.seed}"
                results[key] = measure(config, category, args.seed, args.ring)
                print(key, json.dumps(results[key], indent=1), flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
