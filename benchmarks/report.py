"""Tables and plots from a benchmark's ``results.csv``: markdown (mean ± std over seeds) and PNG figures.

Aggregation rules (also printed in the markdown):

* a per-category cell is the mean ± sample standard deviation (ddof=1) over the seeds of that
  (model, category, split);
* a "mean" cell first averages the categories (and, one-class, the seen types) **within each seed**, then
  gives mean ± std over the seeds. A seed enters only if all its cells of that row succeeded;
* "BGAD vs X" compares per-seed paired differences (every model sees the same split for a given seed):
  *wins* if the mean difference is above its standard deviation over seeds and above 0.005, *loses* if below
  minus that, else *tie*.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.worker import METRICS

METRIC_LABELS = {"image_AUROC": "image AUROC", "pixel_AUROC": "pixel AUROC", "pixel_AUPRO": "AUPRO"}
COLUMNS = (
    "key",
    "suite",
    "model",
    "label",
    "category",
    "setting",
    "seen_defect_type",
    "n_anomalies",
    "seed",
    "kind",
    "budget_s",
    "epochs",
    "status",
    "error",
    *METRICS,
    "train_s",
    "epoch_s",
    "t_first_s",
    "t_epoch_s",
    "test_s",
    "ms_per_image",
    "peak_rss_mb",
    "device",
    "n_train_normal",
    "n_train_anomalies",
    "n_test",
    "n_test_anomalous",
    "shared_training",
    "job_id",
    "job_s",
    "job_cpu_s",
    "config_hash",
    "manifest",
    "finished_at",
)
REFERENCE = "bgad"
TIE_MARGIN = 0.005


def read_results(path: str | Path) -> pd.DataFrame:
    """Read a ``results.csv`` (missing columns are added empty)."""
    frame = pd.read_csv(path, dtype={"category": str, "seen_defect_type": str, "error": str})
    for column in COLUMNS:
        if column not in frame.columns:
            frame[column] = np.nan
    frame["seen_defect_type"] = frame["seen_defect_type"].where(frame["seen_defect_type"].notna(), None)
    return frame


def calibration_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of calibration fits (timings only, no metrics)."""
    return frame[frame["kind"] == "calibration"]


def result_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of trained and tested cells (everything but calibrations)."""
    return frame[frame["kind"] != "calibration"]


# ------------------------------------------------------------------------------------------------------------
# Numbers
# ------------------------------------------------------------------------------------------------------------
def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count of the finite ``values``."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return math.nan, math.nan, 0
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return float(np.mean(finite)), std, len(finite)


def format_cell(mean: float, std: float, count: int, expected: int | None = None, digits: int = 3) -> str:
    """``0.912 ± 0.013``; ``0.912`` for a single value; ``—`` for none; ``(n=2)`` if seeds are missing."""
    if count == 0 or not math.isfinite(mean):
        return "—"
    text = f"{mean:.{digits}f}" if count == 1 else f"{mean:.{digits}f} ± {std:.{digits}f}"
    if expected is not None and count < expected:
        text += f" (n={count})"
    return text


def _ok(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["status"] == "ok"]


def _cell_values(frame: pd.DataFrame, metric: str) -> list[float]:
    return [float(v) for v in _ok(frame)[metric]]


def per_seed_means(frame: pd.DataFrame, metric: str, units: Sequence[Any], unit_columns: Sequence[str]) -> list[float]:
    """Mean over ``units`` (e.g. categories) within each seed; seeds with a missing/failed unit are skipped."""
    means = []
    for _seed, group in frame.groupby("seed"):
        ok = _ok(group)
        values = []
        for unit in units:
            unit = unit if isinstance(unit, tuple) else (unit,)
            mask = np.ones(len(ok), dtype=bool)
            for column, value in zip(unit_columns, unit, strict=True):
                mask &= (ok[column] == value).to_numpy() if value is not None else ok[column].isna().to_numpy()
            selected = ok[mask][metric]
            if len(selected) != 1 or not math.isfinite(float(selected.iloc[0])):
                values = None
                break
            values.append(float(selected.iloc[0]))
        if values:
            means.append(float(np.mean(values)))
    return means


# ------------------------------------------------------------------------------------------------------------
# Selections
# ------------------------------------------------------------------------------------------------------------
def model_order(frame: pd.DataFrame, models: Sequence[str] | None = None) -> list[str]:
    """Models in suite order if given, else in order of appearance."""
    present = list(dict.fromkeys(frame["model"]))
    if models:
        return [m for m in models if m in present] + [m for m in present if m not in models]
    return present


def multi_class_rows(frame: pd.DataFrame, n_anomalies: int) -> pd.DataFrame:
    """Rows of the multi-class setting at the headline anomaly count."""
    return frame[(frame["setting"] == "multi_class") & (frame["n_anomalies"] == n_anomalies)]


def one_class_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of the one-class setting (unseen defect types only in test)."""
    return frame[frame["setting"] == "one_class"]


def table_for(
    frame: pd.DataFrame,
    metric: str,
    units: Sequence[Any],
    unit_columns: Sequence[str],
    unit_labels: Sequence[str],
    models: Sequence[str],
    labels: dict[str, str],
    n_seeds: int | dict[str, int],
) -> str:
    """Markdown table: one row per model, one column per unit plus the mean over units.

    ``n_seeds`` is the expected seed count, for all models or per model: fewer successful seeds are flagged.
    """
    header = "| model | " + " | ".join(unit_labels) + " | **mean** |"
    lines = [header, "|---" * (len(unit_labels) + 2) + "|"]
    for model in models:
        rows = frame[frame["model"] == model]
        if rows.empty:
            continue
        expected = n_seeds.get(model) if isinstance(n_seeds, dict) else n_seeds
        cells = []
        for unit in units:
            unit_tuple = unit if isinstance(unit, tuple) else (unit,)
            mask = np.ones(len(rows), dtype=bool)
            for column, value in zip(unit_columns, unit_tuple, strict=True):
                mask &= (rows[column] == value).to_numpy()
            selected = rows[mask]
            if selected.empty:
                cells.append("—")
            elif _ok(selected).empty:
                cells.append("failed")
            else:
                cells.append(format_cell(*mean_std(_cell_values(selected, metric)), expected=expected))
        mean = format_cell(*mean_std(per_seed_means(rows, metric, units, unit_columns)), expected=expected)
        lines.append(f"| {labels.get(model, model)} | " + " | ".join(cells) + f" | **{mean}** |")
    return "\n".join(lines)


def with_sweep_aliases(frame: pd.DataFrame, aliases: dict[str, str] | None) -> pd.DataFrame:
    """Add stand-in rows for the sweep: ``{model: other}`` copies ``other``'s multi-class rows at 0 anomalies.

    With no anomaly, BGAD trains exactly like BGAD w/o (normal images, ML + pull loss), so its 0-anomaly point
    is BGAD w/o's instead of a second identical training. Stand-ins keep ``alias_of`` = the source model.
    """
    frame = frame.copy()
    frame["alias_of"] = None
    extra = []
    for model, source in (aliases or {}).items():
        own = frame[(frame["model"] == model) & (frame["setting"] == "multi_class") & (frame["n_anomalies"] == 0)]
        if not own.empty:
            continue
        rows = frame[(frame["model"] == source) & (frame["setting"] == "multi_class") & (frame["n_anomalies"] == 0)]
        if rows.empty:
            continue
        rows = rows.copy()
        rows["model"] = model
        rows["alias_of"] = source
        extra.append(rows)
    return pd.concat([frame, *extra], ignore_index=True) if extra else frame


def sweep_table(
    frame: pd.DataFrame,
    metric: str,
    models: Sequence[str],
    labels: dict[str, str],
    categories: Sequence[str],
    n_seeds: int,
) -> str:
    """Markdown table: models x anomaly counts (multi-class), mean over categories, mean ± std over seeds."""
    rows = frame[frame["setting"] == "multi_class"]
    counts = sorted({int(n) for n in rows["n_anomalies"].dropna()})
    lines = ["| model | " + " | ".join(f"{n} anomalies" for n in counts) + " |", "|---" * (len(counts) + 1) + "|"]
    for model in models:
        per_model = rows[rows["model"] == model]
        if per_model.empty:
            continue
        cells = []
        for n in counts:
            at_n = per_model[per_model["n_anomalies"] == n]
            if at_n.empty:
                cells.append("—")
                continue
            cell = format_cell(*mean_std(per_seed_means(at_n, metric, categories, ["category"])), n_seeds)
            if "alias_of" in at_n and at_n["alias_of"].notna().any():
                cell += f" ({labels.get(at_n['alias_of'].iloc[0], at_n['alias_of'].iloc[0])})"
            cells.append(cell)
        lines.append(f"| {labels.get(model, model)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_difference(
    frame: pd.DataFrame,
    metric: str,
    model: str,
    other: str,
    units: Sequence[Any],
    unit_columns: Sequence[str],
) -> tuple[float, float, float, float, int]:
    """Mean of ``model`` and ``other`` and the mean ± std of their per-seed difference (paired by seed)."""
    a = {s: m for s, m in _seed_means_by_seed(frame[frame["model"] == model], metric, units, unit_columns).items()}
    b = {s: m for s, m in _seed_means_by_seed(frame[frame["model"] == other], metric, units, unit_columns).items()}
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return math.nan, math.nan, math.nan, math.nan, 0
    diffs = [a[s] - b[s] for s in seeds]
    mean_diff, std_diff, count = mean_std(diffs)
    return float(np.mean([a[s] for s in seeds])), float(np.mean([b[s] for s in seeds])), mean_diff, std_diff, count


def _seed_means_by_seed(
    frame: pd.DataFrame, metric: str, units: Sequence[Any], unit_columns: Sequence[str]
) -> dict[int, float]:
    out = {}
    for seed, group in frame.groupby("seed"):
        means = per_seed_means(group, metric, units, unit_columns)
        if means:
            out[int(seed)] = means[0]
    return out


def verdict(mean_diff: float, std_diff: float) -> str:
    """``wins`` / ``loses`` / ``tie`` from a paired difference (see the module docstring)."""
    if not math.isfinite(mean_diff):
        return "n/a"
    margin = max(std_diff if math.isfinite(std_diff) else 0.0, TIE_MARGIN)
    if mean_diff > margin:
        return "wins"
    if mean_diff < -margin:
        return "loses"
    return "tie"


# ------------------------------------------------------------------------------------------------------------
# Markdown
# ------------------------------------------------------------------------------------------------------------
def _units_multi(frame: pd.DataFrame, categories: Sequence[str]) -> list[str]:
    present = set(frame["category"])
    return [c for c in categories if c in present]


def _units_one(frame: pd.DataFrame, categories: Sequence[str]) -> list[tuple[str, str]]:
    pairs = {(c, s) for c, s in zip(frame["category"], frame["seen_defect_type"], strict=True) if s}
    return [(c, s) for c in categories for s in sorted(s for cc, s in pairs if cc == c)]


def headline_table(
    frame: pd.DataFrame,
    models: Sequence[str],
    labels: dict[str, str],
    categories: Sequence[str],
    headline_n: int,
    n_seeds: int,
) -> str:
    """One row per model: mean over categories of each metric (multi-class, one-class), plus cost."""
    multi = multi_class_rows(frame, headline_n)
    one = one_class_rows(frame)
    multi_units = _units_multi(multi, categories)
    one_units = _units_one(one, categories)
    header = (
        f"| model | multi-class ({headline_n}): image AUROC | pixel AUROC | AUPRO "
        "| one-class (unseen only): image AUROC | pixel AUROC | AUPRO | train s | ms/image | peak RSS MB |"
    )
    lines = [header, "|---" * 10 + "|"]
    for model in models:
        cells = []
        for rows, units, columns in (
            (multi, multi_units, ["category"]),
            (one, one_units, ["category", "seen_defect_type"]),
        ):
            per_model = rows[rows["model"] == model]
            for metric in METRICS:
                if per_model.empty or not units:
                    cells.append("—")
                else:
                    cells.append(format_cell(*mean_std(per_seed_means(per_model, metric, units, columns)), n_seeds))
        cost = _ok(multi[multi["model"] == model])
        if cost.empty:
            cost = _ok(frame[frame["model"] == model])
        for column, digits in (("train_s", 0), ("ms_per_image", 1), ("peak_rss_mb", 0)):
            values = [float(v) for v in cost[column] if pd.notna(v)]
            cells.append(f"{np.mean(values):.{digits}f}" if values else "—")
        lines.append(f"| {labels.get(model, model)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cost_table(frame: pd.DataFrame, models: Sequence[str], labels: dict[str, str]) -> str:
    """Per model: train seconds, inference ms/image, peak RSS, number of successful and failed cells."""
    lines = [
        "| model | train s (mean ± std) | ms/image | peak RSS MB | cells ok | cells failed |",
        "|---|---|---|---|---|---|",
    ]
    for model in models:
        rows = frame[frame["model"] == model]
        ok = _ok(rows)
        # One training per job: count a shared training once.
        per_job = ok.drop_duplicates("job_id") if "job_id" in ok else ok
        train = format_cell(*mean_std(list(per_job["train_s"])), digits=1)
        ms = format_cell(*mean_std(list(per_job["ms_per_image"])), digits=1)
        rss = format_cell(*mean_std(list(per_job["peak_rss_mb"])), digits=0)
        failed = int((rows["status"] != "ok").sum())
        lines.append(f"| {labels.get(model, model)} | {train} | {ms} | {rss} | {len(ok)} | {failed} |")
    return "\n".join(lines)


def comparison_lines(
    frame: pd.DataFrame,
    models: Sequence[str],
    labels: dict[str, str],
    categories: Sequence[str],
    headline_n: int,
    reference: str = REFERENCE,
    sweep_aliases: dict[str, str] | None = None,
) -> list[str]:
    """Plain sentences: where the reference model (BGAD) wins, ties and loses, per setting and metric."""
    if reference not in set(frame["model"]):
        return [f"No `{reference}` results: nothing to compare."]
    blocks = []
    multi = multi_class_rows(frame, headline_n)
    one = one_class_rows(frame)
    settings = [
        (f"multi-class, {headline_n} anomalies", multi, _units_multi(multi, categories), ["category"]),
        ("one-class (unseen defect types only)", one, _units_one(one, categories), ["category", "seen_defect_type"]),
    ]
    ref_label = labels.get(reference, reference)
    for name, rows, units, columns in settings:
        if rows.empty or not units:
            continue
        outcome: dict[str, list[str]] = {"wins": [], "tie": [], "loses": []}
        for other in models:
            if other == reference or rows[rows["model"] == other].empty:
                continue
            for metric in METRICS:
                a, b, diff, std, count = paired_difference(rows, metric, reference, other, units, columns)
                result = verdict(diff, std)
                if result in outcome:
                    outcome[result].append(
                        f"{labels.get(other, other)} on {METRIC_LABELS[metric]} "
                        f"({a:.3f} vs {b:.3f}, {diff:+.3f} ± {std:.3f}, {count} seeds)"
                    )
        blocks.append(f"**{name}.**")
        for result, text in (("wins", "wins over"), ("loses", "loses to"), ("tie", "ties with")):
            if outcome[result]:
                blocks.append(f"- {ref_label} {text}: " + "; ".join(outcome[result]) + ".")
    sweep = with_sweep_aliases(frame, sweep_aliases)
    sweep = sweep[(sweep["setting"] == "multi_class") & (sweep["model"] == reference)]
    counts = sorted({int(n) for n in sweep["n_anomalies"].dropna()})
    if len(counts) > 1:
        trend = []
        for n in counts:
            at_n = sweep[sweep["n_anomalies"] == n]
            mean, std, count = mean_std(per_seed_means(at_n, "image_AUROC", categories, ["category"]))
            trend.append(f"{n}: {format_cell(mean, std, count)}")
        blocks.append(f"**anomaly count sweep** ({ref_label} image AUROC): " + ", ".join(trend) + ".")
    return blocks


def render_markdown(
    frame: pd.DataFrame,
    suite: dict[str, Any],
    run_info: dict[str, Any] | None = None,
    plots: Sequence[str] = (),
) -> str:
    """The full markdown report of a suite's results."""
    frame = result_rows(frame)
    run_info = run_info or {}
    categories = list(suite["dataset"]["categories"])
    n_seeds = len(suite["seeds"])
    headline_n = int(suite.get("headline_n", 10))
    models = model_order(frame, list(suite["models"]))
    labels = {name: spec.get("label", name) for name, spec in suite["models"].items()}
    labels.update({m: m for m in models if m not in labels})
    notes = {name: spec.get("note", "") for name, spec in suite["models"].items() if spec.get("note")}
    out = title_lines(suite)
    out += [
        f"Every number: mean ± sample std over {n_seeds} seed(s) {suite['seeds']}; `—` not run, `failed` see the "
        'failures section, `(n=k)` only k seeds succeeded. A "mean" averages the categories within each seed '
        "first. Metrics are anomalib's `AUROC` (image, pixel) and `AUPRO` (FPR limit 0.3) on the raw scores of "
        "the final model; every model of a seed and setting is tested on exactly the same images (split "
        "manifests in `splits/`).",
        "",
    ]
    out += provenance_lines(suite, run_info)
    out += ["## Headline", "", headline_table(frame, models, labels, categories, headline_n, n_seeds), ""]
    if notes:
        out += ["Model notes:", ""] + [f"- **{labels[m]}**: {text}" for m, text in notes.items()] + [""]

    multi = multi_class_rows(frame, headline_n)
    if not multi.empty:
        out += [f"## Multi-class setting, {headline_n} known anomalies (drawn across defect types)", ""]
        units = _units_multi(multi, categories)
        for metric in METRICS:
            out += [f"### {METRIC_LABELS[metric]}", ""]
            out += [table_for(multi, metric, units, ["category"], units, models, labels, n_seeds), ""]
    one = one_class_rows(frame)
    if not one.empty:
        out += [
            "## One-class setting: known anomalies of one seen type, test set holds unseen types only",
            "",
            "Columns are category/seen type.",
            "",
        ]
        units = _units_one(one, categories)
        unit_labels = [f"{c}/{s}" for c, s in units]
        for metric in METRICS:
            out += [f"### {METRIC_LABELS[metric]}", ""]
            out += [
                table_for(one, metric, units, ["category", "seen_defect_type"], unit_labels, models, labels, n_seeds),
                "",
            ]
    sweep_frame = with_sweep_aliases(frame, (suite.get("settings", {}).get("sweep") or {}).get("zero_from"))
    sweep = sweep_frame[sweep_frame["setting"] == "multi_class"]
    if sweep["n_anomalies"].nunique() > 1:
        out += [
            "## Anomaly-count sweep (multi-class; mean over categories)",
            "",
            "Models that do not train on anomalies are trained once; only their test set changes with the count "
            "(the known anomalies leave the test set). A model name in parentheses marks a stand-in: with 0 "
            "anomalies that model trains identically (same data, same loss), so its cells are reused.",
            "",
        ]
        for metric in METRICS:
            out += [f"### {METRIC_LABELS[metric]}", ""]
            out += [sweep_table(sweep_frame, metric, models, labels, categories, n_seeds), ""]
    out += [
        "## Cost",
        "",
        "Per training job (a model that does not train on anomalies is trained once per category and seed and "
        "tested on every split). train s: `Engine.fit` wall time; ms/image: `model(images)` (pre-processing + "
        "model, no data loading) at the eval batch size; peak RSS: the worker process's high-water mark during "
        "the job (includes the ~0.5 GB of imported libraries).",
        "",
        cost_table(frame, models, labels),
        "",
    ]
    if plots:
        out += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    out += ["## Where BGAD wins and where it loses (computed)", ""]
    out += [
        "Paired by seed (same split for both models): *wins*/*loses* when the mean difference exceeds its "
        f"std over seeds and {TIE_MARGIN}; otherwise *ties*.",
        "",
    ]
    aliases = (suite.get("settings", {}).get("sweep") or {}).get("zero_from")
    out += [*comparison_lines(frame, models, labels, categories, headline_n, sweep_aliases=aliases), ""]
    out += closing_lines(suite, frame)
    return "\n".join(out).rstrip() + "\n"


def title_lines(suite: dict[str, Any]) -> list[str]:
    """Markdown: the suite's title, description and what was shrunk."""
    out = [f"# {suite.get('title') or suite['suite']}", ""]
    if suite.get("description"):
        out += [suite["description"].strip(), ""]
    if suite.get("shrunk"):
        out += ["**Shrunk for CPU (differences from the paper protocol):**", "", suite["shrunk"].strip(), ""]
    return out


def provenance_lines(suite: dict[str, Any], run_info: dict[str, Any]) -> list[str]:
    """Markdown: the command, versions, machine and compute of the run (from ``run_info.json``)."""
    out = []
    command = run_info.get("command") or suite.get("command")
    if command:
        out += [f"**Command:** `{command}`", ""]
    if run_info.get("versions"):
        out += ["**Versions:** " + ", ".join(f"{k} {v}" for k, v in run_info["versions"].items()), ""]
    if run_info.get("machine"):
        out += [f"**Machine:** {run_info['machine']}", ""]
    if run_info.get("compute"):
        out += [f"**Compute:** {run_info['compute']}", ""]
    return out


def closing_lines(suite: dict[str, Any], frame: pd.DataFrame) -> list[str]:
    """Markdown: the suite's hand-written notes and a table of the failed rows of ``frame``."""
    out = []
    if suite.get("notes"):
        out += ["## Notes", "", suite["notes"].strip(), ""]
    failed = frame[frame["status"] != "ok"]
    if not failed.empty:
        out += ["## Failures", "", "| cell | error |", "|---|---|"]
        for key, error in zip(failed["key"], failed["error"], strict=True):
            text = str(error).replace("|", "\\|").replace("\n", " ")
            out.append(f"| `{key}` | {text[:300]} |")
        out.append("")
    return out


# ------------------------------------------------------------------------------------------------------------
# Plots
# ------------------------------------------------------------------------------------------------------------
def colour_index(model: str, labels: dict[str, str]) -> int:
    """The same colour for a model in every plot: its position in the suite's model list."""
    order = list(labels)
    return (order.index(model) if model in order else len(order)) % 10


def figure_legend(fig: Any, axis: Any, title: str) -> None:
    """One legend for the figure, below the panels (it would hide bars inside them)."""
    handles, names = axis.get_legend_handles_labels()
    rows = math.ceil(len(names) / 5) if names else 0
    if names:
        fig.legend(handles, names, loc="lower center", ncol=min(5, len(names)), fontsize=8, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.05 * rows + 0.02, 1, 1))


def _bar_plot(
    frame: pd.DataFrame,
    units: Sequence[Any],
    unit_columns: Sequence[str],
    unit_labels: Sequence[str],
    models: Sequence[str],
    labels: dict[str, str],
    title: str,
    path: Path,
) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in models if not frame[frame["model"] == m].empty]
    if not models or not units:
        return None
    groups = [*unit_labels, "mean"]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(5.2 * len(METRICS), 4.2), sharey=False)
    width = 0.8 / len(models)
    x = np.arange(len(groups))
    colours = plt.get_cmap("tab10")
    for axis, metric in zip(axes, METRICS, strict=True):
        lows = []
        for index, model in enumerate(models):
            rows = frame[frame["model"] == model]
            means, stds = [], []
            for unit in units:
                unit_tuple = unit if isinstance(unit, tuple) else (unit,)
                mask = np.ones(len(rows), dtype=bool)
                for column, value in zip(unit_columns, unit_tuple, strict=True):
                    mask &= (rows[column] == value).to_numpy()
                mean, std, _ = mean_std(_cell_values(rows[mask], metric))
                means.append(mean)
                stds.append(std)
            mean, std, _ = mean_std(per_seed_means(rows, metric, units, unit_columns))
            means.append(mean)
            stds.append(std)
            lows += [m for m in means if math.isfinite(m)]
            axis.bar(
                x + (index - (len(models) - 1) / 2) * width,
                np.nan_to_num(means, nan=0.0),
                width,
                yerr=np.nan_to_num(stds, nan=0.0),
                capsize=2,
                label=labels.get(model, model),
                color=colours(colour_index(model, labels)),
            )
        axis.set_title(METRIC_LABELS[metric])
        axis.set_xticks(x, groups, rotation=30 if len(groups) > 5 else 0, ha="right" if len(groups) > 5 else "center")
        if lows:
            axis.set_ylim(max(0.0, min(lows) - 0.05), 1.0)
        axis.grid(axis="y", alpha=0.3)
    figure_legend(fig, axes[0], title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _sweep_plot(
    frame: pd.DataFrame,
    models: Sequence[str],
    labels: dict[str, str],
    categories: Sequence[str],
    path: Path,
) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = frame[frame["setting"] == "multi_class"]
    counts = sorted({int(n) for n in rows["n_anomalies"].dropna()})
    if len(counts) < 2:
        return None
    fig, axes = plt.subplots(1, len(METRICS), figsize=(5.2 * len(METRICS), 4.0))
    colours = plt.get_cmap("tab10")
    for axis, metric in zip(axes, METRICS, strict=True):
        for model in models:
            per_model = rows[rows["model"] == model]
            xs, means, stds = [], [], []
            for n in counts:
                at_n = per_model[per_model["n_anomalies"] == n]
                mean, std, count = mean_std(per_seed_means(at_n, metric, categories, ["category"]))
                if count:
                    xs.append(n)
                    means.append(mean)
                    stds.append(std)
            if len(xs) < 2:
                continue
            axis.errorbar(
                xs,
                means,
                yerr=stds,
                marker="o",
                capsize=3,
                label=labels.get(model, model),
                color=colours(colour_index(model, labels)),
            )
        axis.set_title(METRIC_LABELS[metric])
        axis.set_xlabel("known anomalies (multi-class)")
        axis.set_xticks(counts)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("mean over categories")
    figure_legend(fig, axes[0], "Metric vs number of known anomalies (mean ± std over seeds)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_plots(frame: pd.DataFrame, suite: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write ``multi_class.png``, ``one_class.png`` and ``sweep.png`` (those with data) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = result_rows(frame)
    categories = list(suite["dataset"]["categories"])
    headline_n = int(suite.get("headline_n", 10))
    models = model_order(frame, list(suite["models"]))
    labels = {name: spec.get("label", name) for name, spec in suite["models"].items()}
    written = []
    multi = multi_class_rows(frame, headline_n)
    units = _units_multi(multi, categories)
    written.append(
        _bar_plot(
            multi,
            units,
            ["category"],
            units,
            models,
            labels,
            f"Multi-class, {headline_n} known anomalies (mean ± std over seeds)",
            out_dir / "multi_class.png",
        )
    )
    one = one_class_rows(frame)
    pairs = _units_one(one, categories)
    written.append(
        _bar_plot(
            one,
            pairs,
            ["category", "seen_defect_type"],
            [f"{c}/{s}" for c, s in pairs],
            models,
            labels,
            "One-class: unseen defect types only (mean ± std over seeds)",
            out_dir / "one_class.png",
        )
    )
    aliases = (suite.get("settings", {}).get("sweep") or {}).get("zero_from")
    written.append(_sweep_plot(with_sweep_aliases(frame, aliases), models, labels, categories, out_dir / "sweep.png"))
    return [path for path in written if path is not None]
