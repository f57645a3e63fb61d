"""The benchmark worker: a child process that runs jobs sent by :mod:`benchmarks.run`.

Why a long-lived child process and not one process per job: importing torch + anomalib costs about 13 s
of CPU here, which alone would eat a third of the 60-minute CPU budget of the ``embedded`` suite. The
runner therefore starts one worker per model (jobs are ordered model-major) and sends it jobs through a
pipe. The isolation is kept where it matters:

* a Python exception inside a job is caught here and reported as that job's failure; the worker goes on;
* a hard crash (segfault, out-of-memory kill, ``os._exit``) or a job over its time limit ends the worker;
  the runner records the job as failed (with the tail of the worker's log) and starts a fresh worker;
* peak memory is measured per job: the kernel's resident-set high-water mark (``VmHWM``) is reset through
  ``/proc/self/clear_refs`` before each job and read after it. It includes the worker's baseline (the
  imported libraries, ~0.5 GB), like a standalone ``anomalib train`` process would.

The default job runner drives ``anomalib.engine.Engine`` directly (see :mod:`benchmarks.run` for why not
``BenchmarkJob``); a calibration job (``kind: calibration``, see :mod:`benchmarks.budget`) only fits and times
its epochs. A model spec with ``runner: module:function`` replaces both with any callable taking the job
payload and returning one result dict per row (used by the tests' stub models).
"""

from __future__ import annotations

import importlib
import logging
import os
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks.memory import peak_rss_mib, reset_peak_rss

logger = logging.getLogger(__name__)

METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO")
# Inference timing: at most this many test images are timed (excluding data loading).
MAX_TIMED_IMAGES = 16


# ------------------------------------------------------------------------------------------------------------
# Default runner: anomalib's Engine
# ------------------------------------------------------------------------------------------------------------
def _import(path: str) -> Any:
    module_name, sep, attribute = path.replace(":", ".").rpartition(".")
    if not sep:
        msg = f"'{path}' is not an import path (module.Name or module:name)."
        raise ValueError(msg)
    return getattr(importlib.import_module(module_name), attribute)


def build_metrics() -> list[Any]:
    """The same anomalib metrics for every model: image AUROC, pixel AUROC, AUPRO (FPR limit 0.3)."""
    from anomalib.metrics import AUPRO, AUROC

    return [
        AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
        AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False, fpr_limit=0.3),
    ]


def _min_max(values: Any) -> Any:
    """Map ``values`` linearly onto [0, 1] (float64 arithmetic): a monotone map, so AUROC/AUPRO are unchanged."""
    import torch

    values = values.double()
    low, high = values.min(), values.max()
    span = high - low
    if not bool(torch.isfinite(span)) or float(span) == 0.0:
        return torch.full_like(values, 0.5, dtype=torch.float32)
    return ((values - low) / span).float()


def compute_metrics(predictions: list[Any]) -> dict[str, float]:
    """anomalib's AUROC/AUPRO over a whole test split from raw prediction batches.

    The raw scores are first mapped linearly onto [0, 1] over the split. anomalib's metrics (torchmetrics
    underneath) apply a sigmoid to scores outside [0, 1], which saturates for e.g. PaDiM's distances (every
    score becomes 1.0 and AUROC 0.5); anomalib's own post-processor avoids that with min-max statistics from
    the validation split, but clamps to [0, 1], which ties scores outside the validation range. A linear map
    over the evaluated split itself does neither and leaves every rank, hence every AUROC/AUPRO, unchanged.
    """
    from types import SimpleNamespace

    import torch

    scores = torch.cat([b.pred_score.reshape(-1) for b in predictions])
    labels = torch.cat([b.gt_label.reshape(-1) for b in predictions]).int()
    maps = torch.cat([b.anomaly_map.reshape(b.anomaly_map.shape[0], *b.anomaly_map.shape[-2:]) for b in predictions])
    masks = torch.cat([b.gt_mask.reshape(b.gt_mask.shape[0], *b.gt_mask.shape[-2:]) for b in predictions]).int()
    if not bool(torch.isfinite(scores).all()) or not bool(torch.isfinite(maps).all()):
        msg = "the model produced NaN/Inf scores or anomaly maps"
        raise FloatingPointError(msg)
    batch = SimpleNamespace(pred_score=_min_max(scores), gt_label=labels, anomaly_map=_min_max(maps), gt_mask=masks)
    return metric_values(batch, build_metrics())


def pixel_metrics(anomaly_maps: Any, masks: Any) -> dict[str, float]:
    """Pixel AUROC and AUPRO of ``(N, H, W)`` anomaly maps and masks, scored as :func:`compute_metrics` scores them."""
    from types import SimpleNamespace

    batch = SimpleNamespace(anomaly_map=_min_max(anomaly_maps), gt_mask=masks.int())
    return metric_values(batch, [metric for metric in build_metrics() if metric.fields[0] == "anomaly_map"])


def metric_values(batch: Any, metrics: list[Any]) -> dict[str, float]:
    """Each metric's value on ``batch``, a whole split at once; NaN where a metric is undefined."""
    import math

    results = {}
    for metric in metrics:
        metric.update(batch)
        value = float(metric.compute())
        results[metric.name if hasattr(metric, "name") else str(metric)] = value if math.isfinite(value) else math.nan
    return results


def build_model(job: dict[str, Any]) -> Any:
    """Instantiate the job's model with the suite's image size and anomalib's pre-processing only.

    No post-processor, evaluator or visualizer: the raw predictions are scored by :func:`compute_metrics`.
    AUROC/AUPRO need no threshold, so no validation pass is needed during training either (with
    ``val_split_mode=same_as_test`` it would score the test set once per epoch).
    """
    spec = job["model"]
    cls = _import(spec["class_path"])
    size = (job["image_size"], job["image_size"])
    return cls(
        **spec.get("init_args", {}),
        pre_processor=cls.configure_pre_processor(image_size=size),
        post_processor=False,
        evaluator=False,
        visualizer=False,
    )


def build_datamodule(job: dict[str, Any], row: dict[str, Any]) -> Any:
    """The row's few-anomaly datamodule: replayed from its manifest if one exists, else made and recorded."""
    dataset = job["dataset"]
    cls = _import(dataset["datamodule"])
    runtime = {
        **dataset.get("args", {}),
        **(job["model"].get("datamodule_args") or {}),
        "root": dataset["root"],
        "train_on_anomalies": bool(job["model"].get("train_anomalies", False)),
    }
    manifest = Path(row["manifest"])
    if manifest.is_file():
        return cls.from_manifest(manifest, **runtime)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    return cls(
        category=job["category"],
        setting=row["setting"],
        n_anomalies=row["n_anomalies"],
        seen_defect_type=row["seen_defect_type"],
        seed=row.get("seed", job["seed"]),
        manifest_path=manifest,
        **runtime,
    )


def _split_counts(datamodule: Any) -> dict[str, int]:
    manifest = datamodule.manifest
    test = datamodule.test_data.samples
    return {
        "n_train_normal": len(manifest.train_images),
        "n_train_anomalies": len(manifest.train_anomalies),
        "n_test": len(test),
        "n_test_anomalous": int((test.label_index == 1).sum()),
    }


def time_inference(model: Any, datamodule: Any) -> float:
    """Milliseconds per image of ``model(images)`` (pre-processing + model, no data loading), eval batch size."""
    import torch

    batches = []
    count = 0
    for batch in datamodule.test_dataloader():
        batches.append(batch.image)
        count += batch.image.shape[0]
        if count >= MAX_TIMED_IMAGES:
            break
    model.eval()
    with torch.no_grad():
        model(batches[0][:1])  # warm-up (lazy initialisation, allocator)
        start = time.perf_counter()
        for images in batches:
            model(images)
        elapsed = time.perf_counter() - start
    return 1000.0 * elapsed / max(count, 1)


def _start_training(job: dict[str, Any]) -> tuple[Any, Any]:
    """Threads and seed for the job, then its model and the datamodule of its first row."""
    import torch
    from lightning.pytorch import seed_everything

    torch.set_num_threads(max(1, int(job.get("threads", 1))))
    seed_everything(job["seed"], workers=True)
    return build_model(job), build_datamodule(job, job["rows"][0])


def build_engine(accelerator: str, max_epochs: int, work_dir: Path, callbacks: list[Any], **trainer_args: Any) -> Any:
    """anomalib's ``Engine`` for measuring: no logger, progress bar or model summary, no validation during ``fit``.

    ``work_dir`` (Lightning's root folder) is emptied first; ``trainer_args`` go to the Trainer as well.
    """
    import shutil

    from anomalib.engine import Engine

    shutil.rmtree(work_dir, ignore_errors=True)
    return Engine(
        accelerator=accelerator,
        devices=1,
        max_epochs=max_epochs,
        default_root_dir=work_dir,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        **trainer_args,
    )


def calibration_runner(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Fit the job's model for ``calibration_epochs`` epochs and time them (see :mod:`benchmarks.budget`).

    Same model, data, seed, threads and accelerator as the budgeted jobs it calibrates; nothing is tested.
    """
    import shutil

    from benchmarks.budget import Calibration
    from benchmarks.epoch_clock import EpochClock

    model, datamodule = _start_training(job)
    clock = EpochClock()
    engine = build_engine(job["accelerator"], int(job["calibration_epochs"]), Path(job["work_dir"]), [clock])
    start = time.perf_counter()
    engine.fit(model, datamodule=datamodule)
    train_seconds = time.perf_counter() - start
    calibration = Calibration.from_epochs(clock.durations_from(start))
    shutil.rmtree(job["work_dir"], ignore_errors=True)
    return [
        {
            "key": job["rows"][0]["key"],
            "status": "ok",
            "t_first_s": calibration.t_first_s,
            "t_epoch_s": calibration.t_epoch_s,
            "epoch_s": list(calibration.epoch_s),
            "epochs": len(clock.ends),
            "train_s": train_seconds,
            **_split_counts(datamodule),
        }
    ]


def engine_runner(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Train once with anomalib's Engine, then test on every row's split; one result per row.

    A row whose test fails is reported failed with its error; the other rows keep their results.
    """
    import shutil

    from benchmarks.epoch_clock import EpochClock

    model, first = _start_training(job)
    clock = EpochClock()
    epochs = int(job["model"].get("max_epochs", 1))
    engine = build_engine(job["accelerator"], epochs, Path(job["work_dir"]), [clock])
    start = time.perf_counter()
    engine.fit(model, datamodule=first)
    train_seconds = time.perf_counter() - start
    epoch_seconds = clock.durations_from(start)
    results = []
    ms_per_image = None
    for index, row in enumerate(job["rows"]):
        try:
            datamodule = first if index == 0 else build_datamodule(job, row)
            start = time.perf_counter()
            predictions = engine.predict(model, datamodule=datamodule, return_predictions=True)
            metrics = compute_metrics(predictions)
            test_seconds = time.perf_counter() - start
            if ms_per_image is None:
                ms_per_image = time_inference(model, datamodule)
            results.append(
                {
                    "key": row["key"],
                    "status": "ok",
                    **{name: metrics[name] for name in METRICS},
                    "train_s": train_seconds,
                    "epoch_s": epoch_seconds,
                    "epochs": len(clock.ends),
                    "test_s": test_seconds,
                    "ms_per_image": ms_per_image,
                    **_split_counts(datamodule),
                }
            )
        except Exception as error:  # one split failing must not lose the others
            results.append({"key": row["key"], "status": "failed", "error": _describe(error)})
    shutil.rmtree(job["work_dir"], ignore_errors=True)
    return results


# ------------------------------------------------------------------------------------------------------------
# Job execution and the worker loop
# ------------------------------------------------------------------------------------------------------------
def _describe(error: BaseException) -> str:
    """``Type: message`` plus the innermost frame, on one line."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    message = " ".join(str(error).split())
    return f"{type(error).__name__}: {message}{where}"


def _install_offline_weights(backbone: str | None) -> None:
    """Write the shipped weights of ``backbone`` into the Hugging Face cache (idempotent; no-op if none ship)."""
    if not backbone:
        return
    from anomalib_bgad.backbones import has_offline_weights, install_into_hf_cache

    if has_offline_weights(backbone):
        install_into_hf_cache(backbone, cache_dir=os.environ.get("HF_HUB_CACHE"))


def device_name(job: dict[str, Any]) -> str:
    """What the job trained on: the GPU's name, or ``cpu, N threads``."""
    if job.get("accelerator", "cpu") != "cpu":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name()
    return f"cpu, {job.get('threads', 1)} threads"


def run_job(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Run one job in this process; never raises: an exception becomes a failed result for every row."""
    exact_peak = reset_peak_rss()
    start = time.perf_counter()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    try:
        _install_offline_weights(job.get("install_offline_weights"))
        runner_path = job["model"].get("runner")
        if runner_path:
            runner = _import(runner_path)
        else:
            runner = calibration_runner if job.get("kind") == "calibration" else engine_runner
        results = list(runner(job))
    except Exception as error:  # recorded; the worker goes on
        traceback.print_exc()
        results = [{"key": row["key"], "status": "failed", "error": _describe(error)} for row in job["rows"]]
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_seconds = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    peak = peak_rss_mib()
    device = device_name(job)
    by_key = {result["key"]: result for result in results}
    budget = job.get("budget") or {}
    completed = []
    for row in job["rows"]:
        result = by_key.get(row["key"]) or {
            "key": row["key"],
            "status": "failed",
            "error": "the runner returned no result for this row",
        }
        result.setdefault("error", "")
        completed.append(
            {
                **result,
                "job_id": job["job_id"],
                "job_s": elapsed,
                "job_cpu_s": cpu_seconds,
                "peak_rss_mb": peak,
                "peak_rss_exact": exact_peak,
                "device": device,
                "config_hash": row["config_hash"],
                "manifest": row["manifest"],
                # A budgeted job: the calibration its epoch count came from.
                **{key: budget[key] for key in ("t_first_s", "t_epoch_s") if key in budget},
            }
        )
    return completed


def main(argv: list[str] | None = None) -> int:
    """Entry point of the worker process (``python -m benchmarks.worker LOG``).

    Reads one JSON job per line from stdin and answers each with one JSON line (the job's results) on the
    original stdout; everything else the libraries print goes to ``LOG``. Ends at end of input.
    """
    import json
    import warnings

    args = sys.argv[1:] if argv is None else argv
    log_path = args[0] if args else os.devnull
    protocol = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    log = open(log_path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives as long as the process
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    logging.basicConfig(level=logging.WARNING, stream=log)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        print(f"=== job {job['job_id']} ===", flush=True)
        protocol.write(json.dumps(run_job(job)) + "\n")
        protocol.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
