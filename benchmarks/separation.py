"""Does the push separate the anomalous fibers? Test fibers against the learned boundaries, per level.

    python -m benchmarks.separation                    # BGAD and NFAD (0.4.0 defaults), both settings, seed 0
    python -m benchmarks.separation --seed 1 --settings one_class --categories grass
    python -m benchmarks.separation --configs bgad_rpag_perlin --settings one_class   # any study configuration

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
``benchmarks/results/localisation/separation.json`` (key ``setting/config/category/seedN``), and the JSON is rendered
as a table next to it (``separation.md``; ``--report`` renders it again without training).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from statistics import fmean
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


SHARES = tuple(Separation().shares())  # the table's columns are the diagnostic's own share names


def _percentages(levels: list[dict[str, Any]]) -> str:
    """One table cell per level: the three shares in %, ``normal < b_n / anomalous < b_n / anomalous < b_a``."""
    return " | ".join(
        "/".join("-" if level[share] is None else f"{100 * level[share]:.1f}" for share in SHARES) for level in levels
    )


def render_table(results: dict[str, Any]) -> str:
    """Markdown of ``results`` (the JSON this module writes): one row per cell, then one per (setting, config, seed)
    with each share averaged over its categories (every category weighs the same, as in the study's means).

    Raises:
        ValueError: if ``results`` is not an object, a key is not ``setting/config/category/seedN``, a cell lacks
            ``b_n`` or ``levels``, or cells of one group differ in level count.
    """
    groups: dict[tuple[str, str, str], list[list[dict[str, Any]]]] = defaultdict(list)
    levels = 0
    lines = []
    if not isinstance(results, dict):
        raise ValueError(f"separation results must be a JSON object of cells, not {type(results).__name__}")
    for key in sorted(results):
        parts = key.split("/")
        if len(parts) != 4:
            raise ValueError(f"separation key {key!r} is not setting/config/category/seedN")
        setting, config, category, seed = parts
        try:
            cell, b_n_values = results[key]["levels"], results[key]["b_n"]
        except (KeyError, TypeError) as error:
            raise ValueError(f"separation cell {key!r} lacks 'levels' or 'b_n' ({error!r})") from error
        groups[setting, config, seed].append(cell)
        levels = max(levels, len(cell))
        b_n = ", ".join(f"{value:.3f}" for value in b_n_values)
        lines.append(f"| {setting} | {config} | {category} | {seed} | {_percentages(cell)} | {b_n} |")
    for (setting, config, seed), cells in groups.items():
        if len({len(cell) for cell in cells}) != 1:
            raise ValueError(f"cells of {setting}/{config}/{seed} have different numbers of levels")
        means = [
            {
                share: fmean(values) if (values := [c[i][share] for c in cells if c[i][share] is not None]) else None
                for share in SHARES
            }
            for i in range(len(cells[0]))
        ]
        lines.append(f"| {setting} | {config} | **mean of {len(cells)}** | {seed} | {_percentages(means)} | |")
    header = [
        "Per level (level 0 is the finest: strides 4, 8, 16 at the default layers), % of the test set's normal fibers",
        "below `b_n` / anomalous fibers below `b_n` / anomalous fibers below `b_a`, and `b_n` per level. A mean row",
        "averages its categories' shares. Command: `python -m benchmarks.separation --seed S` (see its docstring;",
        "other study configurations: `--configs`, e.g. `--configs bgad_rpag_perlin --settings one_class`).",
        "",
        "| setting | config | category | seed | " + " | ".join(f"level {i}" for i in range(levels)) + " | b_n |",
        "|---" * (levels + 5) + "|",
    ]
    return "\n".join(header + lines) + "\n"


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
    parser.add_argument("--report", action="store_true", help="only render --output's JSON as its .md table")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    try:
        results: dict[str, Any] = json.loads(args.output.read_text()) if args.output.is_file() else {}  # keep others
    except json.JSONDecodeError as error:
        parser.error(f"--output: {args.output} is not valid JSON ({error}); fix it or pass another file")
    if args.report:
        if not results:
            parser.error(f"--report: {args.output} does not exist or holds no cells; run without --report first")
        try:
            table = render_table(results)
        except ValueError as error:
            parser.error(f"--report: {args.output}: {error}")
        args.output.with_suffix(".md").write_text(table)
        return
    for setting in args.settings.split(","):
        for config in args.configs.split(","):
            for category in args.categories.split(","):
                key = f"{setting}/{config}/{category}/seed{args.seed}"
                results[key] = measure(config, category, args.seed, setting)
                print(key, json.dumps(results[key]), flush=True)
                args.output.parent.mkdir(parents=True, exist_ok=True)
                args.output.write_text(json.dumps(results, indent=1) + "\n")  # after every cell: a stop keeps the rest
    args.output.with_suffix(".md").write_text(render_table(results))


if __name__ == "__main__":
    main()
