"""Benchmark suites: the YAML schema, command-line overrides and the expansion into jobs and result rows.

A suite file (``benchmarks/suites/<name>.yaml``) names a dataset, a set of models and a set of settings.
It expands into **rows** (one result each: model x category x setting x seed) and **jobs** (one training
run each, executed by :mod:`benchmarks.worker`):

* a model that trains on the labeled anomalies (``train_anomalies: true``: BGAD, BGAD-dagger, supervised
  SuperSimpleNet) gets one job per row, because every setting changes its training data;
* a model that does not (NFAD, BGAD-w/o, PatchCore, PaDiM, CFLOW, unsupervised SuperSimpleNet) sees the same
  normal training images in every setting, so it is trained **once** per (category, seed) and that one model
  is tested on the test split of every setting it is listed for. Only the test set differs between its rows.
  With ``train_once: true`` it is trained once per category and tested on the splits of every seed too;
* a model with training-time budgets (``budgets_s``) gets one job per budget as well, and one **calibration**
  job per category that times its epochs (see :mod:`benchmarks.budget`); the runner turns each budget into an
  epoch count with the calibration measured in the same run.

Every row's split comes from a split manifest of :mod:`anomalib_bgad.data` stored under
``<results>/splits/<category>/<split>/seed<k>.json``: the first job that needs a split writes it, every later
job (any model) replays it with ``FewAnomaly*.from_manifest``, so all models see exactly the same images.

Schema (see ``benchmarks/suites/embedded.yaml`` for a commented example)::

    suite: name                    # results go to benchmarks/results/<suite>/
    title: str
    description: str               # free text at the top of the markdown
    shrunk: str                    # what was reduced from the paper protocol (markdown), shown in the header
    notes: str                     # hand-written closing note (markdown), shown under the computed one
    command: str                   # the command that produced the committed results
    dataset:
      datamodule: anomalib_bgad.data.FewAnomalyMVTecAD
      root: path                   # relative to the current directory
      embedded: {...}              # optional: generate_embedded_dataset(root, **embedded) before running
      categories: [..]
      args: {...}                  # extra datamodule init args (batch sizes, workers, pseudo anomalies)
    image_size: 256
    backbone: tf_efficientnet_lite0   # injected as init_args.backbone unless a model sets its own
    offline: true                  # HF_HUB_OFFLINE=1 and the offline weights installed into a HF cache
    seeds: [0, 1, 2]
    threads: 2                     # torch threads per job
    parallel: 1                    # jobs run at the same time (one worker process each)
    job_timeout: 1800              # seconds; a job running longer is killed and recorded as failed
    headline_n: 10                 # optional: the multi-class anomaly count of the main tables (default: that of
                                   # settings.multi_class)
    report: settings               # settings (default: per-setting tables) | time_to_accuracy
    time_to_accuracy:              # only for report: time_to_accuracy
      reference: bgad_reference    # optional: the converged run every budget is compared with
      compare_to: patchcore        # optional: the peer of the "vs" column
      tolerance: 0.01              # "within tolerance of the reference"
      highlight_budget_s: 150      # optional: a budget marked in the plot (the demo's)
    settings:
      multi_class: {n_anomalies: 10, models: [...]}                  # models: optional subset
      one_class: {n_anomalies: 10, seen_defect_types: [..] | all, models: [...]}
      sweep: {n_anomalies: [0, 1, 5, 10], models: [...],             # multi-class at several counts
              zero_from: {bgad: bgad_wo}}    # optional: a model's 0-anomaly point is another's (same training)
    models:
      <name>:
        label: str
        class_path: anomalib_bgad.Bgad
        init_args: {...}
        max_epochs: 1              # or, instead, training-time budgets:
        budgets_s: [30, 150]       # seconds of training per category; one job per budget (and seed)
        budget_seeds: {150: [0]}   # optional: a budget's own seeds (default: the model's)
        calibration_epochs: 3      # epochs of the calibration fit (default 3; at least 2)
        seeds: [0, 1, 2]           # optional: the model's seeds, a subset of the suite's (default: all)
        train_anomalies: false
        train_once: false          # true: one training per category (the model's first seed), tested on the split
                                   # of every seed; for models without anomalies in training whose result hardly
                                   # depends on the seed (PatchCore, PaDiM): their training images are the same
        datamodule_args: {...}     # optional per-model datamodule args that do not change the split (batch size)
        note: str                  # shown next to the model in the tables (e.g. a different backbone)
        runner: module:function    # optional: run the job with this callable instead of anomalib's Engine
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SETTING_KINDS = ("multi_class", "one_class", "sweep")
DEFAULT_DATAMODULE = "anomalib_bgad.data.FewAnomalyMVTecAD"
REPORTS = ("settings", "time_to_accuracy")
# A row's kind: a trained and tested cell, or the calibration fit of a model with training-time budgets.
CELL = "cell"
CALIBRATION = "calibration"
DEFAULT_CALIBRATION_EPOCHS = 3
# Model keys that choose which jobs run, not what one job computes: left out of the configuration hash (the
# budget and the calibration epochs enter the hash of the rows they concern).
SCHEDULING_KEYS = ("budgets_s", "budget_seeds", "seeds", "calibration_epochs")


class SuiteError(ValueError):
    """A suite file or an override is invalid."""


def load_suite(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a suite YAML and apply ``key.path=value`` overrides (values parsed as YAML).

    Args:
        path (str | Path): Suite file.
        overrides (list[str] | None): E.g. ``["dataset.root=/data/MVTecAD", "models.bgad.max_epochs=2"]``.

    Returns:
        dict[str, Any]: The suite, validated, with defaults filled in.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"Suite file '{path}' does not exist. Suites live in benchmarks/suites/*.yaml."
        raise SuiteError(msg)
    suite = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    for item in overrides or []:
        apply_override(suite, item)
    return validate_suite(suite, source=str(path))


def apply_override(suite: dict[str, Any], item: str) -> None:
    """Set ``a.b.c=value`` in ``suite`` (intermediate mappings are created; ``value`` is parsed as YAML)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        msg = f"Override '{item}' must look like key.path=value, e.g. models.bgad.max_epochs=2."
        raise SuiteError(msg)
    parts = key.strip().split(".")
    node = suite
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = yaml.safe_load(raw)


def validate_suite(suite: dict[str, Any], source: str = "<suite>") -> dict[str, Any]:
    """Check the suite's structure and fill defaults; raise :class:`SuiteError` naming the problem."""
    suite = copy.deepcopy(suite)
    for required in ("suite", "dataset", "models", "settings"):
        if required not in suite:
            msg = f"{source}: missing top-level key '{required}'."
            raise SuiteError(msg)
    dataset = suite["dataset"]
    if not isinstance(dataset, dict) or "root" not in dataset or not dataset.get("categories"):
        msg = f"{source}: dataset needs 'root' and a non-empty 'categories' list."
        raise SuiteError(msg)
    dataset.setdefault("datamodule", DEFAULT_DATAMODULE)
    dataset.setdefault("args", {})
    dataset["categories"] = [str(c) for c in dataset["categories"]]
    suite.setdefault("title", f"Benchmark '{suite['suite']}'")
    for key in ("description", "shrunk", "notes", "command"):
        suite.setdefault(key, "")
    suite.setdefault("image_size", 256)
    suite.setdefault("backbone", None)
    suite.setdefault("offline", False)
    suite.setdefault("seeds", [0])
    suite["seeds"] = [int(s) for s in suite["seeds"]]
    suite.setdefault("threads", 2)
    suite.setdefault("parallel", 1)
    suite.setdefault("job_timeout", 3600)
    suite.setdefault("accelerator", "cpu")
    models = suite["models"]
    if not isinstance(models, dict) or not models:
        msg = f"{source}: 'models' must be a non-empty mapping name -> spec."
        raise SuiteError(msg)
    for name, spec in models.items():
        if not isinstance(spec, dict) or ("class_path" not in spec and "runner" not in spec):
            msg = f"{source}: model '{name}' needs a 'class_path' (or a 'runner')."
            raise SuiteError(msg)
        spec.setdefault("label", name)
        spec.setdefault("init_args", {})
        spec.setdefault("train_anomalies", False)
        spec.setdefault("note", "")
        _validate_schedule(name, spec, suite["seeds"], source)
    settings = suite["settings"]
    # The main tables show the multi-class setting at its anomaly count (10 in the paper).
    suite.setdefault("headline_n", int((settings.get("multi_class") or {}).get("n_anomalies", 10)))
    unknown = sorted(set(settings) - set(SETTING_KINDS))
    if unknown:
        msg = f"{source}: unknown setting(s) {unknown}; use {list(SETTING_KINDS)}."
        raise SuiteError(msg)
    for kind, spec in settings.items():
        if spec is None:
            settings[kind] = spec = {}
        chosen = spec.get("models")
        if chosen is not None:
            missing = sorted(set(chosen) - set(models))
            if missing:
                msg = f"{source}: settings.{kind}.models names unknown model(s) {missing}."
                raise SuiteError(msg)
        aliases = spec.get("zero_from") or {}
        missing = sorted((set(aliases) | set(aliases.values())) - set(models))
        if missing:
            msg = f"{source}: settings.{kind}.zero_from names unknown model(s) {missing}."
            raise SuiteError(msg)
    suite.setdefault("report", "settings")
    if suite["report"] not in REPORTS:
        msg = f"{source}: unknown report '{suite['report']}'; use one of {list(REPORTS)}."
        raise SuiteError(msg)
    options = suite.setdefault("time_to_accuracy", {}) or {}
    suite["time_to_accuracy"] = options
    for key in ("reference", "compare_to"):
        if options.get(key) is not None and options[key] not in models:
            msg = (
                f"{source}: time_to_accuracy.{key} names unknown model '{options[key]}'; the suite has {list(models)}."
            )
            raise SuiteError(msg)
    options.setdefault("tolerance", 0.01)
    return suite


def _validate_schedule(name: str, spec: dict[str, Any], suite_seeds: list[int], source: str) -> None:
    """Check and normalise a model's seeds, training-time budgets and epochs (in place)."""
    where = f"{source}: model '{name}'"
    seeds = spec.get("seeds")
    if seeds is None:
        spec["seeds"] = list(suite_seeds)
    else:
        spec["seeds"] = [int(seed) for seed in seeds]
        unknown = sorted(set(spec["seeds"]) - set(suite_seeds))
        if unknown or not spec["seeds"]:
            msg = f"{where}: seeds must be a non-empty subset of the suite's seeds {suite_seeds}, got {seeds}."
            raise SuiteError(msg)
    if spec.get("train_once") and (spec["train_anomalies"] or spec.get("budgets_s") is not None):
        msg = f"{where}: train_once needs train_anomalies: false and no budgets_s (one training serves every seed)."
        raise SuiteError(msg)
    budgets = spec.get("budgets_s")
    if budgets is None:
        for key in ("budget_seeds", "calibration_epochs"):
            if key in spec:
                msg = f"{where}: '{key}' needs 'budgets_s' (training-time budgets)."
                raise SuiteError(msg)
        spec.setdefault("max_epochs", 1)
        return
    if "max_epochs" in spec:
        msg = (
            f"{where}: give either 'max_epochs' or 'budgets_s', not both (a budget sets the epochs from the "
            "calibration)."
        )
        raise SuiteError(msg)
    try:
        spec["budgets_s"] = [float(budget) for budget in budgets]
    except (TypeError, ValueError):
        spec["budgets_s"] = []
    if not spec["budgets_s"] or not all(math.isfinite(b) and b > 0 for b in spec["budgets_s"]):
        msg = f"{where}: budgets_s must be a non-empty list of seconds > 0, got {budgets!r}."
        raise SuiteError(msg)
    if len(set(spec["budgets_s"])) != len(spec["budgets_s"]):
        msg = f"{where}: budgets_s lists a budget twice: {budgets}."
        raise SuiteError(msg)
    per_budget = {}
    for budget, seeds in (spec.get("budget_seeds") or {}).items():
        if float(budget) not in spec["budgets_s"]:
            msg = f"{where}: budget_seeds names budget {budget}, which is not in budgets_s {budgets}."
            raise SuiteError(msg)
        chosen = [int(seed) for seed in seeds or []]
        if not chosen or set(chosen) - set(spec["seeds"]):
            msg = f"{where}: budget_seeds[{budget}] must be a non-empty subset of the model's seeds {spec['seeds']}."
            raise SuiteError(msg)
        per_budget[float(budget)] = chosen
    spec["budget_seeds"] = per_budget
    epochs = spec.setdefault("calibration_epochs", DEFAULT_CALIBRATION_EPOCHS)
    if not isinstance(epochs, int) or epochs < 2:
        msg = f"{where}: calibration_epochs must be an integer >= 2 (the first epoch and a later one), got {epochs!r}."
        raise SuiteError(msg)


def budget_seeds(spec: dict[str, Any], budget_s: float) -> list[int]:
    """The seeds of one budget of a validated model spec."""
    return list(spec["budget_seeds"].get(budget_s, spec["seeds"]))


@dataclass(frozen=True)
class Split:
    """One few-anomaly split of a category (shared by every model and stored as one manifest per seed)."""

    setting: str  # multi_class | one_class
    n_anomalies: int
    seen_defect_type: str | None = None

    @property
    def split_id(self) -> str:
        """Folder name of the split, e.g. ``multi_class_n10`` or ``one_class_crack_n10``."""
        seen = f"_{self.seen_defect_type}" if self.seen_defect_type else ""
        return f"{self.setting}{seen}_n{self.n_anomalies}"


@dataclass
class Row:
    """One result: a model tested on one split of one category with one seed (and budget), or a calibration."""

    model: str
    category: str
    split: Split
    seed: int
    config_hash: str
    budget_s: float | None = None
    kind: str = CELL

    @property
    def key(self) -> str:
        """Stable identity used for resuming."""
        key = f"{self.model}|{self.category}|{self.split.split_id}|seed{self.seed}"
        if self.kind == CALIBRATION:
            return f"{key}|calibration"
        return key if self.budget_s is None else f"{key}|budget{self.budget_s:g}s"


@dataclass
class Job:
    """One training run (one model, category, seed and budget), tested on one or more splits; or a calibration."""

    model: str
    category: str
    seed: int
    rows: list[Row] = field(default_factory=list)
    budget_s: float | None = None
    kind: str = CELL

    @property
    def job_id(self) -> str:
        """Unique, filesystem-friendly name."""
        split = self.rows[0].split.split_id if len(self.rows) == 1 else "shared"
        job_id = f"{self.model}__{self.category}__{split}__seed{self.seed}"
        if self.kind == CALIBRATION:
            return f"{job_id}__calibration"
        return job_id if self.budget_s is None else f"{job_id}__budget{self.budget_s:g}s"


def list_defect_types(root: str | Path, category: str) -> list[str]:
    """Defect types of an MVTec-format category (``<root>/<category>/test/<type>`` except ``good``)."""
    test_dir = Path(root) / category / "test"
    if not test_dir.is_dir():
        msg = (
            f"Cannot list the defect types of '{category}': '{test_dir}' does not exist. "
            "Point dataset.root at your copy (--root) or list settings.one_class.seen_defect_types explicitly."
        )
        raise SuiteError(msg)
    return sorted(p.name for p in test_dir.iterdir() if p.is_dir() and p.name not in {"good", "ok"})


def model_splits(suite: dict[str, Any], model: str, category: str) -> list[Split]:
    """The splits ``model`` is evaluated on for ``category``, in a stable order, without duplicates."""
    splits: list[Split] = []
    settings = suite["settings"]

    def wanted(kind: str) -> bool:
        spec = settings.get(kind)
        return spec is not None and (spec.get("models") is None or model in spec["models"])

    if wanted("multi_class"):
        splits.append(Split("multi_class", int(settings["multi_class"].get("n_anomalies", suite["headline_n"]))))
    if wanted("one_class"):
        spec = settings["one_class"]
        seen = spec.get("seen_defect_types", "all")
        if seen == "all" or seen is None:
            seen = list_defect_types(suite["dataset"]["root"], category)
        elif isinstance(seen, dict):  # per-category lists
            seen = seen.get(category, [])
        splits.extend(Split("one_class", int(spec.get("n_anomalies", suite["headline_n"])), str(s)) for s in seen)
    if wanted("sweep"):
        counts = settings["sweep"].get("n_anomalies", [])
        # A model whose 0-anomaly point is taken from another model (identical training) skips n = 0.
        stand_in = model in (settings["sweep"].get("zero_from") or {})
        splits.extend(Split("multi_class", int(n)) for n in counts if not (stand_in and int(n) == 0))
    unique: list[Split] = []
    for split in splits:
        if split not in unique:
            unique.append(split)
    return unique


def _digest(payload: Any) -> str:
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def row_config_hash(
    suite: dict[str, Any],
    model: str,
    split: Split,
    budget_s: float | None = None,
    calibration_epochs: int | None = None,
) -> str:
    """Hash of everything that determines a row's result; a changed hash makes a stored result stale.

    The model's scheduling keys (:data:`SCHEDULING_KEYS`) are left out, so that adding a budget or a seed
    keeps the other rows; a row's own budget, or a calibration's epoch count, is part of its hash.
    """
    dataset = suite["dataset"]
    payload = {
        "model": {key: value for key, value in suite["models"][model].items() if key not in SCHEDULING_KEYS},
        "dataset": {key: dataset.get(key) for key in ("datamodule", "root", "embedded", "args")},
        "image_size": suite["image_size"],
        "backbone": suite["backbone"],
        "split": [split.setting, split.n_anomalies, split.seen_defect_type],
    }
    if budget_s is not None:
        payload["budget_s"] = budget_s
    if calibration_epochs is not None:
        payload["calibration_epochs"] = calibration_epochs
    return _digest(payload)


def calibration_job(suite: dict[str, Any], model: str, category: str, split: Split) -> Job:
    """The calibration fit of a model with budgets on one category: its first seed, its first split."""
    spec = suite["models"][model]
    seed = spec["seeds"][0]
    epochs = int(spec["calibration_epochs"])
    config_hash = row_config_hash(suite, model, split, calibration_epochs=epochs)
    row = Row(model, category, split, seed, config_hash, kind=CALIBRATION)
    return Job(model, category, seed, [row], kind=CALIBRATION)


def expand(
    suite: dict[str, Any],
    models: list[str] | None = None,
    categories: list[str] | None = None,
    seeds: list[int] | None = None,
) -> list[Job]:
    """Expand a suite into jobs: calibrations first, then training jobs (model-major, category, budget, seed).

    A calibration job is listed for every (model, category) with a budgeted job in the selection, whatever
    the seed filter: every budget of every seed needs it.

    Args:
        suite (dict[str, Any]): Validated suite.
        models (list[str] | None): Only these models. Defaults to all.
        categories (list[str] | None): Only these categories. Defaults to all.
        seeds (list[int] | None): Only these seeds. Defaults to all.

    Returns:
        list[Job]: Jobs, each with its rows.
    """
    for name, allowed, known in (
        ("model", models, list(suite["models"])),
        ("category", categories, suite["dataset"]["categories"]),
        ("seed", seeds, suite["seeds"]),
    ):
        unknown = sorted(set(allowed or []) - set(known), key=str)
        if unknown:
            msg = f"Unknown {name}(s) {unknown}; the suite has {known}."
            raise SuiteError(msg)
    calibrations: list[Job] = []
    jobs: list[Job] = []
    for model, spec in suite["models"].items():
        if models and model not in models:
            continue
        for category in suite["dataset"]["categories"]:
            if categories and category not in categories:
                continue
            splits = model_splits(suite, model, category)
            if not splits:
                continue
            model_jobs = []
            if spec.get("train_once"):
                chosen = [seed for seed in spec["seeds"] if seeds is None or seed in seeds]
                rows = [
                    Row(model, category, split, seed, row_config_hash(suite, model, split))
                    for seed in chosen
                    for split in splits
                ]
                jobs.extend([Job(model, category, spec["seeds"][0], rows)] if rows else [])
                continue
            for budget in spec.get("budgets_s") or [None]:
                for seed in spec["seeds"] if budget is None else budget_seeds(spec, budget):
                    if seeds is not None and seed not in seeds:
                        continue
                    rows = [
                        Row(model, category, split, seed, row_config_hash(suite, model, split, budget), budget)
                        for split in splits
                    ]
                    if spec["train_anomalies"]:
                        model_jobs.extend(Job(model, category, seed, [row], budget) for row in rows)
                    else:
                        model_jobs.append(Job(model, category, seed, rows, budget))
            if model_jobs and spec.get("budgets_s"):
                calibrations.append(calibration_job(suite, model, category, splits[0]))
            jobs.extend(model_jobs)
    return calibrations + jobs


def manifest_path(results_dir: str | Path, category: str, split: Split, seed: int) -> Path:
    """Where the split manifest of (category, split, seed) is stored."""
    return Path(results_dir) / "splits" / category / split.split_id / f"seed{seed}.json"


def job_payload(suite: dict[str, Any], job: Job, results_dir: Path, work_dir: Path) -> dict[str, Any]:
    """Everything the worker needs to run ``job``, as plain JSON-friendly data."""
    spec = copy.deepcopy(suite["models"][job.model])
    init_args = dict(spec.get("init_args") or {})
    if suite.get("backbone") and "backbone" not in init_args and spec.get("inject_backbone", True):
        init_args["backbone"] = suite["backbone"]
    spec["init_args"] = init_args
    dataset = suite["dataset"]
    return {
        "job_id": job.job_id,
        "suite": suite["suite"],
        "model_name": job.model,
        "model": spec,
        "category": job.category,
        "seed": job.seed,
        "image_size": int(suite["image_size"]),
        "accelerator": suite["accelerator"],
        "threads": int(suite["threads"]),
        "dataset": {
            "datamodule": dataset["datamodule"],
            "root": str(Path(dataset["root"]).resolve()),
            "args": dict(dataset.get("args") or {}),
        },
        "work_dir": str((work_dir / "jobs" / job.job_id).resolve()),
        "kind": job.kind,
        "budget_s": job.budget_s,
        "calibration_epochs": spec.get("calibration_epochs") if job.kind == CALIBRATION else None,
        "rows": [
            {
                "key": row.key,
                "seed": row.seed,
                "setting": row.split.setting,
                "n_anomalies": row.split.n_anomalies,
                "seen_defect_type": row.split.seen_defect_type,
                "manifest": str(manifest_path(results_dir, job.category, row.split, row.seed).resolve()),
                "config_hash": row.config_hash,
            }
            for row in job.rows
        ],
    }
