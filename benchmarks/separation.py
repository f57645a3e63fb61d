"""Does the push separate the anomalous fibers? Test fibers against the learned boundaries, per level.

    python -m benchmarks.separation                    # BGAD and NFAD (0.4.0 defaults), both settings, seed 0
    python -m benchmarks.separation --seed 1 --settings one_class --categories grass

For each (setting, configuration, category) of the localisation study this trains the model on the study's split
as the study does (12 epochs, same manifest), then counts, over every fiber of the test set and per feature level,
the shares that :class:`anomalib_bgad.models.bgad.boundary_plot.Separation` defines (the numbers the boundary
histogram's legend gives after ``anomalib test``):

- ``normal_below_b_n``: normal fibers with ``ln < b_n`` (training puts about ``beta`` = 1 % of the normal training
  fibers there);
- ``anomalous_below_b_n`` and ``anomalous_below_b_a``: fibers inside the ground-truth masks (downsampled by nearest
  neighbour, as in training) below ``b_n`` and below ``b_a = b_n - tau``, where the push (paper Eq. 8) sends the
  known anomalies.

With known types (``multi_class``) the test defects are of the types trained on; in ``one_class`` every test defect
is of a type never seen. NFAD has no push: its shares say what the flow alone separates. Results are merged into
``benchmarks/results/localisation/separation.json`` (key ``setting/config/category/seedN``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from anomalib_bgad.models.bgad.boundary_plot import Separation, anomalous_positions
from benchmarks.border import OUTPUT, train_study_cell


def count_test_set(net: Any, pre_processor: Any, batches: Any) -> list[Separation]:
    """Per level, :class:`Separation` of every test fiber of ``batches`` against ``net``'s boundary."""
    b_n, b_a = net.boundary.b_n.tolist(), net.boundary.b_a.tolist()
    counts = [Separation() for _ in range(net.num_levels)]
    with torch.no_grad():
        for batch in batches:
            for level, values in enumerate(net.normalized_maps(pre_processor(batch.image))):
                anomalous = anomalous_positions(values.shape, batch.gt_mask, batch.gt_label, values.device)
                counts[level] += Separation.count(values, anomalous, b_n[level], b_a[level])
    return counts


def measure(config: str, category: str, seed: int, setting: str) -> dict[str, Any]:
    """Train ``config`` on the study's ``setting`` split; ``b_n``, ``b_a`` and per level the fibers of each class and
    the shares of :meth:`Separation.shares`."""
    model, datamodule = train_study_cell(config, category, seed, Path("results/studies/separation"), setting)
    net = model.model.eval()
    counts = count_test_set(net, model.pre_processor, datamodule.test_dataloader())
    return {
        "b_n": net.boundary.b_n.tolist(),
        "b_a": net.boundary.b_a.tolist(),
        "levels": [{"normal": level.normal, "anomalous": level.anomalous, **level.shares()} for level in counts],
    }


def main(argv: list[str] | None = None) -> None:
    """Command-line interface."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs", default="bgad_border32,nfad_border32", help="comma-separated (default: %(default)s)"
    )
    parser.add_argument(
        "--settings", default="multi_class,one_class", help="study settings, comma-separated (default: %(default)s)"
    )
    parser.add_argument("--categories", default="brick,grass,gravel", help="comma-separated (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="the study split's seed (default: %(default)s)")
    parser.add_argument(
        "--output", type=Path, default=OUTPUT / "separation.json", help="JSON file (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    results: dict[str, Any] = json.loads(args.output.read_text()) if args.output.is_file() else {}  # keep other keys
    for setting in args.settings.split(","):
        for config in args.configs.split(","):
            for category in args.categories.split(","):
                key = f"{setting}/{config}/{category}/seed{args.seed}"
                results[key] = measure(config, category, args.seed, setting)
                print(key, json.dumps(results[key]), flush=True)
                args.output.parent.mkdir(parents=True, exist_ok=True)
                args.output.write_text(json.dumps(results, indent=1) + "\n")  # after every cell: a stop keeps the rest


if __name__ == "__main__":
    main()
