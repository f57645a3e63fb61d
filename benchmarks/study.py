"""A study: training configurations x scoring variants x categories x seeds x settings, one table at the end.

Where the benchmark suites (:mod:`benchmarks.run`) compare finished models, a study compares *choices*: the
training schedule behind BGAD's defaults, the score, the features, the push on seen defect types. Every cell
trains one configuration once on one split and scores it with every scoring variant of the configuration
(scoring variants change only how the anomaly map and the image score are computed, so they share the trained
weights).

Usage::

    python -m benchmarks.study --config benchmarks/studies/defaults.yaml                 # CPU, one cell at a time
    python -m benchmarks.study --config ... --set accelerator=gpu --set parallel=12      # on a GPU
    python -m benchmarks.study --config ... --report-only                                # tables from results.csv

Splits are made once per (category, seed, setting) before any cell runs, written as split manifests and
replayed by every configuration, so all of them train and test on the same images. Results are appended to
``results.csv`` as cells finish (a study cut short keeps what it measured); ``results.md`` gives, per setting,
configuration and scoring, the mean over categories with the standard deviation over seeds, and per category.
Metrics are anomalib's AUROC/AUPRO on the raw predictions (:func:`benchmarks.worker.compute_metrics`).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import yaml

from benchmarks.report import format_cell, mean_std
from benchmarks.worker import METRICS

COLUMNS = (
    "config",
    "scoring",
    "setting",
    "category",
    "seed",
    "status",
    *METRICS,
    "epochs",
    "train_s",
    "test_s",
    "device",
    "error",
)


def _set(config: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to a nested dict."""
    path, _, text = assignment.partition("=")
    *parents, leaf = path.split(".")
    node = config
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = yaml.safe_load(text)


def load_study(path: str | Path, assignments: Sequence[str] = ()) -> dict[str, Any]:
    """Read a study YAML and apply ``--set`` assignments.

    Raises:
        ValueError: If a configuration names a setting the study does not define.
    """
    study = yaml.safe_load(Path(path).read_text())
    for assignment in assignments:
        _set(study, assignment)
    for name, config in study["configs"].items():
        unknown = set(config.get("settings", study["settings"])) - set(study["settings"])
        if unknown:
            msg = f"config '{name}' names unknown settings {sorted(unknown)}; defined: {sorted(study['settings'])}."
            raise ValueError(msg)
    return study


def split_rows(study: dict[str, Any], output: Path) -> list[dict[str, Any]]:
    """One row per (setting, category, seed): the split every configuration replays."""
    rows = []
    for setting, spec in study["settings"].items():
        for category in study["dataset"]["categories"]:
            for seed in study["seeds"]:
                seen = (spec.get("seen_defect_types") or {}).get(category, [None])[0]
                rows.append(
                    {
                        "setting": "one_class" if seen else "multi_class",
                        "study_setting": setting,
                        "category": category,
                        "seed": seed,
                        "n_anomalies": spec["n_anomalies"],
                        "seen_defect_type": seen,
                        "manifest": str(output / "splits" / setting / category / f"seed{seed}.json"),
                    }
                )
    return rows


SCORING_KEYS = ("sigma", "level_aggregation", "image_score_top_share")


def apply_scoring(model: Any, scoring: dict[str, Any]) -> None:
    """Score a trained ``Bgad`` with a scoring variant from now on; keys the variant leaves out keep the model's own.

    Other models (PatchCore, PaDiM) keep their own scoring: for them only the empty variant ``{}`` is valid.

    Args:
        model (Any): The trained model, an ``anomalib_bgad.Bgad`` or a peer.
        scoring (dict[str, Any]): Values for any of :data:`SCORING_KEYS`; ``{}`` restores the model's init args.

    Raises:
        ValueError: For a key that is not a scoring setting, naming it, or any key for a model that is not BGAD.
    """
    from anomalib_bgad import Bgad
    from anomalib_bgad.models.bgad.anomaly_map import AnomalyMapGenerator
    from anomalib_bgad.models.bgad.image_score import ImageScore

    if not isinstance(model, Bgad):
        if scoring:
            msg = f"scoring variants apply to BGAD only; {type(model).__name__} got {scoring}."
            raise ValueError(msg)
        return
    unknown = sorted(set(scoring) - set(SCORING_KEYS))
    if unknown:
        msg = f"scoring keys {unknown} are not scoring settings; a scoring variant may set {list(SCORING_KEYS)}."
        raise ValueError(msg)
    options = {key: scoring.get(key, model.hparams[key]) for key in SCORING_KEYS}
    top_share = options.pop("image_score_top_share")
    model.model.anomaly_map_generator = AnomalyMapGenerator(**options).to(model.device)
    model.model.image_score = ImageScore(top_share)


def _job(study: dict[str, Any], config_name: str, row: dict[str, Any], work: Path) -> dict[str, Any]:
    config = study["configs"][config_name]
    return {
        "model": {
            "class_path": config.get("class_path", "anomalib_bgad.Bgad"),
            "init_args": config.get("init_args", {}),
            "train_anomalies": config.get("train_anomalies", True),
            "datamodule_args": config.get("datamodule_args", {}),
            "max_epochs": config.get("max_epochs", 1),
        },
        "scorings": config.get("scorings", {"default": {}}),
        "dataset": study["dataset"],
        "image_size": study["image_size"],
        "accelerator": study.get("accelerator", "cpu"),
        "threads": study.get("threads", 2),
        "seed": row["seed"],
        "category": row["category"],
        "rows": [row],
        "work_dir": str(work / f"{config_name}-{row['study_setting']}-{row['category']}-{row['seed']}"),
        "config": config_name,
    }


def make_splits(study: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Write every split manifest once (the datamodule writes it at ``setup``), before any cell runs."""
    from benchmarks.worker import build_datamodule

    for row in rows:
        if not Path(row["manifest"]).is_file():
            job = {"dataset": study["dataset"], "model": {}, "seed": row["seed"], "category": row["category"]}
            build_datamodule(job, row).setup()


def run_cell(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Train one configuration on its first split, then score every split of the job with each scoring variant.

    A job holds one split, or, for ``train_once`` configurations (the peers, whose training images are the normal
    ones of the category whatever the seed and setting), every split of its category.
    """
    import shutil

    import torch

    from benchmarks.epoch_clock import EpochClock
    from benchmarks.worker import _start_training, build_datamodule, build_engine, compute_metrics, device_name

    def where(row: dict[str, Any]) -> dict[str, Any]:
        return {
            "config": job["config"],
            "setting": row["study_setting"],
            "category": row["category"],
            "seed": row["seed"],
        }

    try:
        model, datamodule = _start_training(job)
        clock = EpochClock()
        engine = build_engine(job["accelerator"], int(job["model"]["max_epochs"]), Path(job["work_dir"]), [clock])
        start = time.perf_counter()
        engine.fit(model, datamodule=datamodule)
        train_seconds = time.perf_counter() - start
    except Exception as error:  # a failed cell is recorded, the study goes on
        failed = {"status": "failed", "error": repr(error)[:500]}
        return [{**where(row), "scoring": name, **failed} for row in job["rows"] for name in job["scorings"]]
    results = []
    for index, row in enumerate(job["rows"]):
        if index:
            datamodule = build_datamodule(job, row)
        for name, scoring in job["scorings"].items():
            try:
                apply_scoring(model, scoring)
                start = time.perf_counter()
                predictions = engine.predict(model, datamodule=datamodule, return_predictions=True)
                metrics = compute_metrics(predictions)
                results.append(
                    {
                        **where(row),
                        "scoring": name,
                        "status": "ok",
                        **{metric: metrics[metric] for metric in METRICS},
                        "epochs": len(clock.ends),
                        "train_s": round(train_seconds, 2),
                        "test_s": round(time.perf_counter() - start, 2),
                        "device": device_name(job),
                    }
                )
            except Exception as error:  # one variant failing must not lose the others
                results.append({**where(row), "scoring": name, "status": "failed", "error": repr(error)[:500]})
    del model, engine
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    shutil.rmtree(job["work_dir"], ignore_errors=True)
    return results


def _init_worker(environment: dict[str, str]) -> None:
    os.environ.update(environment)


def _key(record: dict[str, Any]) -> tuple[str, str, str, str, str]:
    return (record["config"], record["scoring"], record["setting"], record["category"], str(record["seed"]))


def done_keys(results: list[dict[str, Any]]) -> set[tuple[str, str, str, str, str]]:
    """(configuration, scoring, setting, category, seed) of every ``ok`` row: what a rerun skips."""
    return {_key(r) for r in results if r["status"] == "ok"}


def plan_jobs(
    study: dict[str, Any], rows: list[dict[str, Any]], done: set[tuple[str, str, str, str, str]], work: Path
) -> list[dict[str, Any]]:
    """The jobs a run still needs: every (configuration, split) with a scoring variant not yet ``ok``.

    A job trains once and scores only its missing variants, so adding a scoring to a configuration measures it
    without writing the others twice. ``train_once`` configurations get one job per category for all its splits.
    """
    jobs = []
    for name, config in study["configs"].items():
        scorings = config.get("scorings", {"default": {}})
        todo = []
        for row in rows:
            if row["study_setting"] not in config.get("settings", study["settings"]):
                continue
            where = (row["study_setting"], row["category"], str(row["seed"]))
            missing = [scoring for scoring in scorings if (name, scoring, *where) not in done]
            if missing:
                todo.append((row, missing))
        groups = [[item] for item in todo]
        if config.get("train_once"):  # one training per category, tested on all its splits
            categories = dict.fromkeys(row["category"] for row, _ in todo)
            groups = [[item for item in todo if item[0]["category"] == category] for category in categories]
        for group in groups:
            job = _job(study, name, group[0][0], work)
            job["rows"] = [row for row, _ in group]
            missing = {scoring for _, names in group for scoring in names}
            job["scorings"] = {scoring: scorings[scoring] for scoring in scorings if scoring in missing}
            jobs.append(job)
    return jobs


def run_study(study: dict[str, Any], output: Path, parallel: int) -> None:
    """Run every cell not yet in ``results.csv`` (ok), ``parallel`` at a time, appending rows as they finish."""
    output.mkdir(parents=True, exist_ok=True)
    work = Path(study.get("work_dir", "results/studies")) / study["study"]
    root = Path(study["dataset"]["root"])
    if "embedded" in study["dataset"]:  # generates the categories that are missing; keeps those already there
        from anomalib_bgad.embedded import generate_embedded_dataset

        generate_embedded_dataset(root, categories=study["dataset"]["categories"], **study["dataset"]["embedded"])
    from benchmarks.worker import _install_offline_weights

    for config in study["configs"].values():  # the peers' timm backbones load offline from the HF cache
        _install_offline_weights(config.get("init_args", {}).get("backbone"))
    rows = split_rows(study, output)
    make_splits(study, rows)
    results_csv = output / "results.csv"
    done = done_keys(read_results(results_csv))
    jobs = plan_jobs(study, rows, done, work)
    print(f"[study] {len(jobs)} cells to run, {parallel} at a time", flush=True)
    environment = {"OMP_NUM_THREADS": str(study.get("threads", 2)), "HF_HUB_OFFLINE": "1"}
    new_file = not results_csv.exists()
    with (
        results_csv.open("a", newline="") as handle,
        ProcessPoolExecutor(
            parallel, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(environment,)
        ) as pool,
    ):
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        if new_file:
            writer.writeheader()
        futures = {pool.submit(run_cell, job): job for job in jobs}
        for count, future in enumerate(as_completed(futures), start=1):
            job = futures[future]
            try:
                records = future.result()
            except Exception as error:
                row = job["rows"][0]
                records = [
                    {"config": job["config"], "scoring": name, "setting": row["study_setting"],
                     "category": row["category"], "seed": row["seed"], "status": "failed", "error": repr(error)}
                    for name in job["scorings"]
                ]  # fmt: skip
            writer.writerows(r for r in records if _key(r) not in done)  # a train_once job may redo some
            handle.flush()
            summary = ", ".join(
                f"{r['scoring']} {r.get('image_AUROC', math.nan):.3f}/{r.get('pixel_AUROC', math.nan):.3f}/"
                f"{r.get('pixel_AUPRO', math.nan):.3f}"
                if r["status"] == "ok"
                else f"{r['scoring']} FAILED"
                for r in records
            )
            print(
                f"[study] {count}/{len(jobs)} {job['config']} {job['category']} seed {job['seed']}: {summary}",
                flush=True,
            )


def read_results(path: Path) -> list[dict[str, Any]]:
    """Rows of ``results.csv`` (empty when it does not exist)."""
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def config_order(study: dict[str, Any], key: tuple[str, str]) -> tuple[int, str, str]:
    """Sort key of a (configuration, scoring): the YAML's order; configurations it no longer has go last."""
    names = list(study["configs"])
    return (names.index(key[0]) if key[0] in names else len(names), key[0], key[1])


def render_report(study: dict[str, Any], results: list[dict[str, Any]]) -> str:
    """Markdown: per setting, configuration and scoring the mean over categories (± std over seeds, if more than one),
    then per category."""
    ok = [r for r in results if r["status"] == "ok"]
    lines = [f"# {study.get('title', study['study'])}", "", f"Command: `{study.get('command', '')}`", ""]
    if study.get("description"):
        lines += [study["description"].strip(), ""]
    categories = study["dataset"]["categories"]
    for setting in study["settings"]:
        rows = [r for r in ok if r["setting"] == setting]
        if not rows:
            continue
        lines += [f"## {setting}", ""]
        header = "| config | scoring | epochs | train s | " + " | ".join(METRICS) + " | "
        header += " | ".join(f"{c} {m}" for c in categories for m in ("img", "pix", "pro")) + " | cells |"
        lines += [header, "|" + "---|" * (4 + len(METRICS) + 3 * len(categories) + 1)]
        keys = sorted({(r["config"], r["scoring"]) for r in rows}, key=lambda k: config_order(study, k))
        for config, scoring in keys:
            cells = [r for r in rows if r["config"] == config and r["scoring"] == scoring]
            seeds = sorted({r["seed"] for r in cells})
            metric_text = []
            for metric in METRICS:
                seed_means = [
                    sum(float(r[metric]) for r in cells if r["seed"] == seed)
                    / sum(1 for r in cells if r["seed"] == seed)
                    for seed in seeds
                ]
                text = format_cell(*mean_std(seed_means))
                present = {r["category"] for r in cells}
                if len(present) < len(categories):  # a mean over fewer categories is not comparable: say so
                    text += f" ({len(present)}/{len(categories)} categories)"
                metric_text.append(text)
            per_category = []
            for category in categories:
                for metric in METRICS:
                    values = [float(r[metric]) for r in cells if r["category"] == category]
                    per_category.append(f"{sum(values) / len(values):.3f}" if values else "")
            epochs = sorted({r["epochs"] for r in cells})
            train = sum(float(r["train_s"]) for r in cells) / len(cells)
            lines.append(
                f"| {config} | {scoring} | {'/'.join(epochs)} | {train:.0f} | "
                + " | ".join(metric_text + per_category)
                + f" | {len(cells)} |"
            )
        lines.append("")

    lines += render_effects(study, ok)

    def cell(r: dict[str, Any]) -> tuple[str, ...]:
        return (r["config"], r["scoring"], r["setting"], r["category"], str(r["seed"]))

    rerun = {cell(r) for r in ok}  # a failed cell that a later run completed is not a failure any more
    failed = [r for r in results if r["status"] != "ok" and cell(r) not in rerun]
    if failed:
        lines += ["## Failed cells", ""]
        lines += [
            f"- {r['config']} / {r['scoring']} / {r['setting']} / {r['category']} / seed {r['seed']}: {r['error']}"
            for r in failed
        ]
    return "\n".join(lines) + "\n"


def render_effects(study: dict[str, Any], ok: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: every configuration and scoring minus the study's ``baseline``, paired by cell.

    A candidate run on fewer seeds than the baseline is compared on the cells (setting, category, seed) both have,
    so that seed-to-seed spread does not pass for an effect. Empty without a ``baseline: {config, scoring}``.
    """
    baseline = study.get("baseline")
    if not baseline:
        return []
    base_key = (baseline["config"], baseline.get("scoring", "mean"))
    by_cell = {(r["config"], r["scoring"], r["setting"], r["category"], r["seed"]): r for r in ok}
    lines = [
        f"## Effects against {base_key[0]} / {base_key[1]}",
        "",
        "Candidate minus baseline, mean over the cells (setting, category, seed) that both ran; the last column "
        "gives it per category (image AUROC / pixel AUROC / AUPRO).",
        "",
        "| setting | config | scoring | seeds | Δ " + " | Δ ".join(METRICS) + " | per category |",
        "|" + "---|" * (5 + len(METRICS)),
    ]
    keys = sorted({(c, sc) for c, sc, *_ in by_cell}, key=lambda k: config_order(study, k))
    for setting in study["settings"]:
        for config, scoring in keys:
            if (config, scoring) == base_key:
                continue
            pairs = [
                (r, by_cell[(*base_key, *cell)])
                for (c, sc, *cell), r in by_cell.items()
                if (c, sc) == (config, scoring) and cell[0] == setting and (*base_key, *cell) in by_cell
            ]
            if not pairs:
                continue
            deltas = {m: [float(r[m]) - float(b[m]) for r, b in pairs] for m in METRICS}
            per_category = []
            for category in study["dataset"]["categories"]:
                mine = [(r, b) for r, b in pairs if r["category"] == category]
                if mine:
                    values = [sum(float(r[m]) - float(b[m]) for r, b in mine) / len(mine) for m in METRICS]
                    per_category.append(f"{category} " + "/".join(f"{v:+.3f}" for v in values))
            seeds = ",".join(sorted({r["seed"] for r, _ in pairs}))
            lines.append(
                f"| {setting} | {config} | {scoring} | {seeds} | "
                + " | ".join(f"{sum(v) / len(v):+.3f}" for v in deltas.values())
                + f" | {'; '.join(per_category)} |"
            )
    return [*lines, ""]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="study YAML (benchmarks/studies/*.yaml)")
    parser.add_argument("--output", help="results folder (default: benchmarks/results/<study>)")
    parser.add_argument("--set", action="append", default=[], help="override a study key, e.g. accelerator=gpu")
    parser.add_argument("--configs", help="comma-separated configurations to run (default: all)")
    parser.add_argument("--report-only", action="store_true", help="write results.md from results.csv")
    args = parser.parse_args(argv)
    study = load_study(args.config, args.set)
    output = Path(args.output or Path("benchmarks/results") / study["study"])
    if not args.report_only:
        wanted = args.configs.split(",") if args.configs else list(study["configs"])
        subset = {**study, "configs": {name: config for name, config in study["configs"].items() if name in wanted}}
        run_study(subset, output, int(study.get("parallel", 1)))
    # The report covers every configuration of the study that has results, not only the ones just run.
    report = render_report(study, read_results(output / "results.csv"))
    (output / "results.md").write_text(report)
    (output / "study.json").write_text(json.dumps(study, indent=2, default=str))
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
