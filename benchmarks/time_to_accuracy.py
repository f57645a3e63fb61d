"""The time-to-accuracy report: accuracy after fixed training budgets, against peers and a converged reference.

Built from a suite with ``report: time_to_accuracy`` (``benchmarks/suites/time_to_accuracy.yaml``). Each
*entry* of the tables is a model at one budget (``bgad`` at 150 s), or a model without budgets at its own
training time (PatchCore, PaDiM, the reference). Aggregation follows :mod:`benchmarks.report`: the categories
are averaged within each seed, then mean ± sample std over seeds.

Computed columns:

* **train s**: the training seconds each cell actually took (``Engine.fit`` wall time), mean ± std over cells;
  the budget is only what the epoch count was chosen for (see :mod:`benchmarks.budget`);
* **vs reference**: mean of the entry minus mean of the reference (each over its own seeds), image AUROC and
  AUPRO; *within* when neither is below the reference by more than ``time_to_accuracy.tolerance``;
* **vs <peer>**: the per-seed paired difference to ``time_to_accuracy.compare_to`` (same splits), with
  :func:`benchmarks.report.verdict`'s wins / ties / loses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import report
from benchmarks.budget import Calibration, format_budget
from benchmarks.report import METRIC_LABELS, METRICS, format_cell, mean_std, per_seed_means
from benchmarks.suite import budget_seeds

TARGET_METRICS = ("image_AUROC", "pixel_AUPRO")  # the metrics "within the tolerance of the reference" is about
TIME_TICKS_S = (1, 3, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)  # x ticks of the plot (log scale)


@dataclass(frozen=True)
class Entry:
    """A row of the tables: a model at one training budget, or a model without budgets."""

    model: str
    budget_s: float | None = None

    @property
    def name(self) -> str:
        """Unique name, e.g. ``bgad@150s`` or ``patchcore``."""
        return self.model if self.budget_s is None else f"{self.model}@{self.budget_s:g}s"


def entries(suite: dict[str, Any]) -> list[Entry]:
    """Every entry of the suite, in suite order, budgets ascending, the reference last."""
    reference = suite["time_to_accuracy"].get("reference")
    found = [
        Entry(model, budget)
        for model, spec in suite["models"].items()
        if model != reference
        for budget in sorted(spec.get("budgets_s") or [None], key=lambda b: -1 if b is None else b)
    ]
    return found + ([Entry(reference)] if reference else [])


def expected_seeds(suite: dict[str, Any], entry: Entry) -> int:
    """How many seeds the suite runs for ``entry``."""
    spec = suite["models"][entry.model]
    return len(spec["seeds"] if entry.budget_s is None else budget_seeds(spec, entry.budget_s))


def entry_label(suite: dict[str, Any], entry: Entry) -> str:
    """``BGAD, 150 s`` / ``PatchCore``."""
    label = suite["models"][entry.model].get("label", entry.model)
    return label if entry.budget_s is None else f"{label}, {format_budget(entry.budget_s)}"


def cells(frame: pd.DataFrame, suite: dict[str, Any]) -> pd.DataFrame:
    """The tested cells of the headline split, with an ``entry`` column and ``model`` replaced by it.

    With ``model`` holding the entry name, :mod:`benchmarks.report`'s per-model functions work per entry.
    """
    rows = report.multi_class_rows(report.result_rows(frame), int(suite.get("headline_n", 10))).copy()
    budgets = pd.to_numeric(rows["budget_s"], errors="coerce")
    rows["entry"] = [
        Entry(model, None if math.isnan(budget) else float(budget)).name
        for model, budget in zip(rows["model"], budgets, strict=True)
    ]
    rows["base_model"] = rows["model"]
    rows["model"] = rows["entry"]
    return rows


def _mean(rows: pd.DataFrame, metric: str, categories: Sequence[str]) -> tuple[float, float, int]:
    return mean_std(per_seed_means(rows, metric, categories, ["category"]))


def _epochs_text(rows: pd.DataFrame) -> str:
    values = sorted({int(v) for v in pd.to_numeric(rows["epochs"], errors="coerce").dropna()})
    if not values:
        return "—"
    return str(values[0]) if len(values) == 1 else f"{values[0]}–{values[-1]}"


def summary_table(frame: pd.DataFrame, suite: dict[str, Any]) -> pd.DataFrame:
    """One row per entry: epochs, measured train seconds, metrics (mean ± std over seeds), computed comparisons.

    Returns:
        pd.DataFrame: Columns ``entry, model, budget_s, label, epochs, train_s, train_s_std, seeds,
        expected_seeds``, ``<metric>`` and ``<metric>_std`` per metric, ``delta_<metric>`` (to the reference) and
        ``vs_<metric>_diff/_std/_verdict`` (to the compared peer) per target metric, and ``within`` (bool or
        None when there is no reference result). Entries without any result are left out.
    """
    options = suite["time_to_accuracy"]
    categories = list(suite["dataset"]["categories"])
    data = cells(frame, suite)
    reference = options.get("reference")
    peer = options.get("compare_to")
    ref_rows = data[data["model"] == reference] if reference else data.iloc[0:0]
    ref_means = {metric: _mean(ref_rows, metric, categories)[0] for metric in METRICS}
    records = []
    for entry in entries(suite):
        rows = data[data["model"] == entry.name]
        if rows.empty:
            continue
        ok = rows[rows["status"] == "ok"]
        train = mean_std(list(pd.to_numeric(ok["train_s"], errors="coerce")))
        record: dict[str, Any] = {
            "entry": entry.name,
            "model": entry.model,
            "budget_s": entry.budget_s,
            "label": entry_label(suite, entry),
            "model_label": suite["models"][entry.model].get("label", entry.model),
            "epochs": _epochs_text(ok),
            "train_s": train[0],
            "train_s_std": train[1],
            "train_n": train[2],
            "expected_seeds": expected_seeds(suite, entry),
        }
        counts = []
        for metric in METRICS:
            mean, std, count = _mean(rows, metric, categories)
            record[metric], record[f"{metric}_std"] = mean, std
            counts.append(count)
        record["seeds"] = min(counts)
        within = []
        for metric in TARGET_METRICS:
            delta = record[metric] - ref_means[metric] if entry.model != reference else math.nan
            record[f"delta_{metric}"] = delta
            if math.isfinite(delta):
                within.append(delta >= -float(options["tolerance"]))
        record["within"] = all(within) if len(within) == len(TARGET_METRICS) else None
        for metric in TARGET_METRICS:
            diff, std, verdict = math.nan, math.nan, "n/a"
            if peer and entry.model != peer:
                _, _, diff, std, _ = report.paired_difference(data, metric, entry.name, peer, categories, ["category"])
                verdict = report.verdict(diff, std)
            record[f"vs_{metric}_diff"], record[f"vs_{metric}_std"], record[f"vs_{metric}_verdict"] = (
                diff,
                std,
                verdict,
            )
        records.append(record)
    return pd.DataFrame(records)


def _signed(value: float) -> str:
    return f"{value:+.3f}" if math.isfinite(value) else "—"


def _summary_markdown(table: pd.DataFrame, suite: dict[str, Any]) -> str:
    options = suite["time_to_accuracy"]
    tolerance = float(options["tolerance"])
    peer = options.get("compare_to")
    peer_label = suite["models"][peer].get("label", peer) if peer else None
    header = (
        "| model | budget | epochs | train s (measured) | seeds | image AUROC | pixel AUROC | AUPRO "
        f"| Δ reference (image AUROC / AUPRO) | within {tolerance:g} of reference |"
    )
    if peer:
        header += f" vs {peer_label} (image AUROC / AUPRO) |"
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for row in table.to_dict("records"):
        has_budget = row["budget_s"] is not None and math.isfinite(row["budget_s"])
        budget = format_budget(row["budget_s"]) if has_budget else "—"
        expected = int(row["expected_seeds"])
        metrics = [format_cell(row[m], row[f"{m}_std"], int(row["seeds"]), expected) for m in METRICS]
        train = format_cell(row["train_s"], row["train_s_std"], int(row["train_n"]), digits=0)
        deltas = " / ".join(_signed(row[f"delta_{m}"]) for m in TARGET_METRICS)
        within = "—" if row["within"] is None else ("yes" if row["within"] else "no")
        cells_text = [row["model_label"], budget, row["epochs"], train, f"{int(row['seeds'])}/{expected}", *metrics]
        cells_text += ["—" if deltas == "— / —" else deltas, within]
        if peer:
            versus = [
                f"{row[f'vs_{m}_verdict']} {_signed(row[f'vs_{m}_diff'])}" if row[f"vs_{m}_verdict"] != "n/a" else "—"
                for m in TARGET_METRICS
            ]
            cells_text.append("—" if set(versus) == {"—"} else " / ".join(versus))
        lines.append("| " + " | ".join(cells_text) + " |")
    return "\n".join(lines)


def calibration_table(frame: pd.DataFrame, suite: dict[str, Any]) -> str:
    """Markdown: per (model, category) the calibration's epoch times and the epochs each budget became."""
    rows = report.calibration_rows(frame)
    lines = [
        "| model | category | device | first epoch s | later epoch s | measured epochs s | epochs per budget |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, spec in suite["models"].items():
        for category in suite["dataset"]["categories"]:
            selected = rows[(rows["model"] == model) & (rows["category"] == category)]
            if selected.empty:
                continue
            row = selected.iloc[-1]
            label = spec.get("label", model)
            if row["status"] != "ok":
                lines.append(f"| {label} | {category} | — | failed | | | |")
                continue
            calibration = Calibration(float(row["t_first_s"]), float(row["t_epoch_s"]))
            budgets = ", ".join(
                f"{format_budget(b)}: {calibration.epochs_for(b)}" for b in sorted(spec.get("budgets_s") or [])
            )
            epochs = str(row["epoch_s"]).strip("[]").replace(",", ", ").replace("  ", " ")
            lines.append(
                f"| {label} | {category} | {row['device'] if isinstance(row['device'], str) else '—'} "
                f"| {calibration.t_first_s:.1f} | {calibration.t_epoch_s:.1f} | {epochs} | {budgets} |"
            )
    return "\n".join(lines)


def render_markdown(
    frame: pd.DataFrame,
    suite: dict[str, Any],
    run_info: dict[str, Any] | None = None,
    plots: Sequence[str] = (),
) -> str:
    """The full markdown report of a time-to-accuracy suite."""
    run_info = run_info or {}
    options = suite["time_to_accuracy"]
    categories = list(suite["dataset"]["categories"])
    table = summary_table(frame, suite)
    data = cells(frame, suite)
    out = report.title_lines(suite)
    out += [
        "Every metric: categories averaged within each seed, then mean ± sample std over the seeds "
        "(`seeds` = seeds with every category; `(n=k)` marks fewer than the suite runs). Budgets are seconds of "
        "training per category; each became an epoch count through a calibration fit of the same model on the "
        "same category, measured in the same run on the same machine (table below), so training is the same "
        "for a seed on any machine. `train s` is the training time each cell actually took. Metrics are "
        "anomalib's `AUROC` (image, pixel) and `AUPRO` (FPR limit 0.3) on the raw scores of the final model; "
        "all models of a seed are tested on the same images (split manifests in `splits/`).",
        "",
    ]
    out += report.provenance_lines(suite, run_info)
    reference = options.get("reference")
    if reference:
        spec = suite["models"][reference]
        ref_rows = data[data["model"] == reference]
        devices = sorted({str(d) for d in ref_rows["device"].dropna()})
        out += [
            f"**Reference:** {spec.get('label', reference)}: {spec.get('max_epochs')} epochs, init args "
            f"`{spec.get('init_args')}`, seeds {spec['seeds']}"
            + (f", trained on {', '.join(devices)}" if devices else ", not run yet")
            + (f"; command `{options['reference_command']}`" if options.get("reference_command") else "")
            + ".",
            "",
        ]
    peer = options.get("compare_to")
    if peer:
        out += [
            f"**vs {suite['models'][peer].get('label', peer)}:** per-seed paired difference on the same splits; "
            f"*wins*/*loses* when the mean difference exceeds its std over seeds and {report.TIE_MARGIN}, "
            "else *ties*.",
            "",
        ]
    out += ["## Accuracy after each training budget (mean over categories)", ""]
    out += [_summary_markdown(table, suite) if not table.empty else "No results yet.", ""]
    labels = {entry.name: entry_label(suite, entry) for entry in entries(suite)}
    expected = {entry.name: expected_seeds(suite, entry) for entry in entries(suite)}
    names = [entry.name for entry in entries(suite)]
    out += ["## Per category", ""]
    for metric in METRICS:
        out += [f"### {METRIC_LABELS[metric]}", ""]
        out += [report.table_for(data, metric, categories, ["category"], categories, names, labels, expected), ""]
    if plots:
        out += ["## Plot", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    out += ["## Calibration", "", calibration_table(frame, suite), ""]
    out += report.closing_lines(suite, frame)
    return "\n".join(out).rstrip() + "\n"


# ------------------------------------------------------------------------------------------------------------
# Plot
# ------------------------------------------------------------------------------------------------------------
def _curve(rows: pd.DataFrame, metric: str, categories: Sequence[str]) -> tuple[float, float, float, int]:
    """Mean train seconds, mean and std of ``metric`` over seeds, seed count."""
    train = float(np.mean(pd.to_numeric(rows[rows["status"] == "ok"]["train_s"], errors="coerce")))
    mean, std, count = _mean(rows, metric, categories)
    return train, mean, std, count


def make_plots(frame: pd.DataFrame, suite: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write ``time_to_accuracy.png``: one panel per metric, accuracy against measured training seconds (log x).

    Models with budgets are lines with a ± std band over seeds (hollow markers: fewer seeds than the model's
    fullest budget); models without budgets are single markers at their own training time; the reference is a
    dashed line with the tolerance band under it; the highlighted budget is a dotted vertical line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = cells(frame, suite)
    if data.empty or data["status"].ne("ok").all():
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    options = suite["time_to_accuracy"]
    reference = options.get("reference")
    categories = list(suite["dataset"]["categories"])
    colour_labels = {name: spec.get("label", name) for name, spec in suite["models"].items()}
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, len(METRICS), figsize=(5.4 * len(METRICS), 4.4))
    for axis, metric in zip(axes, METRICS, strict=True):
        values, seconds = [], []
        for model, spec in suite["models"].items():
            colour = colours(report.colour_index(model, colour_labels))
            label = spec.get("label", model)
            if model == reference:
                rows = data[data["model"] == model]
                if rows.empty or not (rows["status"] == "ok").any():
                    continue
                train, mean, _, count = _curve(rows, metric, categories)
                if count:
                    tolerance = float(options["tolerance"])
                    devices = ", ".join(sorted({str(d) for d in rows["device"].dropna()})) or "?"
                    label = f"{label}: {train:.0f} s on {devices}"
                    axis.axhline(mean, color=colour, linestyle="--", linewidth=1.5, label=label)
                    axis.axhspan(mean - tolerance, mean, color=colour, alpha=0.12)
                    values.append(mean - tolerance)
                continue
            points = []
            for budget in sorted(spec.get("budgets_s") or [None], key=lambda b: -1 if b is None else b):
                rows = data[data["model"] == Entry(model, budget).name]
                if not rows.empty and (rows["status"] == "ok").any():
                    points.append(_curve(rows, metric, categories))
            points = [p for p in points if p[3] > 0]
            if not points:
                continue
            xs, means, stds, counts = (np.array(column, dtype=float) for column in zip(*points, strict=True))
            values += list(means - stds)
            seconds += list(xs)
            if spec.get("budgets_s"):
                axis.plot(xs, means, color=colour, linewidth=1.5, label=label)
                axis.fill_between(xs, means - stds, means + stds, color=colour, alpha=0.18, linewidth=0)
                full = counts >= counts.max()
                axis.scatter(xs[full], means[full], color=colour, s=28, zorder=3)
                axis.scatter(xs[~full], means[~full], facecolors="white", edgecolors=colour, s=28, zorder=3)
            else:
                axis.errorbar(xs, means, yerr=stds, fmt="D", color=colour, capsize=3, markersize=7, label=label)
        highlight = options.get("highlight_budget_s")
        if highlight and seconds and min(seconds) <= float(highlight) <= max(seconds):
            axis.axvline(float(highlight), color="grey", linestyle=":", linewidth=1)
            label = f" {format_budget(float(highlight))}"
            axis.text(float(highlight), 0.02, label, transform=axis.get_xaxis_transform(), color="grey", fontsize=8)
        axis.set_xscale("log")
        low, high = axis.get_xlim()
        ticks = [t for t in TIME_TICKS_S if low <= t <= high]
        axis.set_xticks(ticks, [format_budget(t) for t in ticks], fontsize=8)
        axis.minorticks_off()
        finite = [v for v in values if math.isfinite(v)]
        if finite:
            axis.set_ylim(max(0.0, min(finite) - 0.03), min(1.0, axis.get_ylim()[1] + 0.01))
        axis.set_title(METRIC_LABELS[metric])
        axis.set_xlabel("training seconds per category (measured)")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("mean over categories (± std over seeds)")
    report.figure_legend(
        fig, axes[0], "Accuracy against training time (hollow marker: fewer seeds; band under the reference: tolerance)"
    )
    path = out_dir / "time_to_accuracy.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]
