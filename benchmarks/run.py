"""Run a benchmark suite: models x categories x settings x seeds, resumable, one table at the end.

Usage::

    python -m benchmarks.run --config benchmarks/suites/embedded.yaml           # run (or resume) the suite
    python -m benchmarks.run --config benchmarks/suites/mvtec.yaml --root /data/MVTecAD
    python -m benchmarks.run --config ... --list                                # print the jobs, run nothing
    python -m benchmarks.run --config ... --models bgad,nfad --seeds 0          # a slice of the grid
    python -m benchmarks.run --config ... --set models.bgad.max_epochs=2        # any suite key
    python -m benchmarks.run --config ... --report-only                         # tables/plots from results.csv

Outputs in ``benchmarks/results/<suite>/`` (``--output``): ``results.csv`` (one row per cell, failed cells
with their error), ``results.md`` (mean ± std over seeds per category and mean, cost, computed win/loss
summary), ``plots/*.png``, ``splits/`` (the split manifests every model replays), ``attempts.jsonl`` (every
attempt, the resume log) and ``run_info.json`` (command, versions, machine). Scratch files (worker logs,
Lightning folders, the offline Hugging Face cache) go to ``results/benchmarks/<suite>/`` (``--work-dir``).

Resuming: a cell whose latest attempt succeeded with the same configuration hash is never recomputed; failed
cells are retried unless ``--no-retry-failed``. Changing a model's or the dataset's settings in the suite file
changes the hash of the affected cells, which then run again.

Why not ``anomalib benchmark``: it refuses models from outside anomalib (``UnknownModelError``, and still
exits 0), and cannot carry our few-anomaly datamodule. Why not ``anomalib.pipelines.benchmark.job.BenchmarkJob``
either, although it accepts our objects: it builds its ``Engine`` with no trainer settings (epochs only via a
model's ``trainer_arguments``, which would mean subclassing every peer), runs under ``hide_output``, always
validates on the test split during ``fit``, and trains once per result, whereas the unsupervised peers here
are trained once and tested on several splits. The runner therefore drives ``anomalib.engine.Engine``
directly per job (``benchmarks.worker.engine_runner``): anomalib's ``Engine``, datamodule machinery, models,
pre-processors and metrics (``AUROC``, ``AUPRO``), with the epochs, seeds and split manifests under our
control.

Isolation: jobs run in a worker process (``python -m benchmarks.worker``, one per model, restarted after a
crash); an exception fails that job only, a crash or a timeout kills the worker and fails that job only;
everything else continues.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import platform
import select
import shlex
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.environment import cpu_model, package_versions
from benchmarks.suite import Job, SuiteError, expand, job_payload, load_suite

REPO_ROOT = Path(__file__).resolve().parents[1]
ROW_FIELDS = report.COLUMNS
LOG_TAIL_LINES = 6


# ------------------------------------------------------------------------------------------------------------
# Result store
# ------------------------------------------------------------------------------------------------------------
class ResultStore:
    """``attempts.jsonl`` (append-only log of every attempt) and ``results.csv`` (latest result per cell)."""

    def __init__(self, results_dir: Path) -> None:
        self.results_dir = results_dir
        self.attempts_path = results_dir / "attempts.jsonl"
        self.csv_path = results_dir / "results.csv"
        self.latest: dict[str, dict[str, Any]] = {}
        if self.attempts_path.is_file():
            for line in self.attempts_path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    record = json.loads(line)
                    self.latest[record["key"]] = record

    def is_done(self, key: str, config_hash: str, retry_failed: bool) -> bool:
        """Whether the cell needs no new attempt."""
        record = self.latest.get(key)
        if record is None or record.get("config_hash") != config_hash:
            return False
        return record.get("status") == "ok" or not retry_failed

    def add(self, records: Sequence[dict[str, Any]]) -> None:
        """Append attempts (flushed at once, so an interrupted run keeps every finished cell)."""
        self.results_dir.mkdir(parents=True, exist_ok=True)
        with self.attempts_path.open("a", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, sort_keys=True) + "\n")
                self.latest[record["key"]] = record
            handle.flush()
            os.fsync(handle.fileno())

    def write_csv(self, jobs: Sequence[Job]) -> list[dict[str, Any]]:
        """Rewrite ``results.csv``: the latest current-configuration attempt of every cell of ``jobs``."""
        rows = []
        for job in jobs:
            for row in job.rows:
                record = self.latest.get(row.key)
                if record is not None and record.get("config_hash") == row.config_hash:
                    rows.append(record)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        partial = self.csv_path.with_suffix(".csv.partial")
        with partial.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(ROW_FIELDS), extrasaction="ignore")
            writer.writeheader()
            for record in rows:
                writer.writerow({key: _csv_value(record.get(key)) for key in ROW_FIELDS})
        os.replace(partial, self.csv_path)
        return rows


def _relative(path: str | None, base: Path) -> str | None:
    """``path`` relative to ``base`` when inside it (committed results stay valid when the repo moves)."""
    if not path:
        return path
    try:
        return Path(path).resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return path


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else value


# ------------------------------------------------------------------------------------------------------------
# Worker management
# ------------------------------------------------------------------------------------------------------------
class WorkerCrashedError(RuntimeError):
    """The worker process died or timed out during a job."""


class Worker:
    """A ``python -m benchmarks.worker`` process: jobs as JSON lines on its stdin, results on its stdout."""

    def __init__(self, name: str, log_path: Path, environment: dict[str, str]) -> None:
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.worker", str(log_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, **environment},
            text=True,
            encoding="utf-8",
        )

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process.poll() is None

    def run(self, payload: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
        """Send a job and wait for its results; raise :class:`WorkerCrashedError` on death or timeout."""
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            self.process.stdin.write(json.dumps(payload) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError) as error:
            raise WorkerCrashedError(self._death_message()) from error
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([self.process.stdout], [], [], 0.5)
            if ready:
                line = self.process.stdout.readline()
                if line:
                    return json.loads(line)
                self.process.wait(10)
                raise WorkerCrashedError(self._death_message())
            if time.monotonic() > deadline:
                self.kill()
                raise WorkerCrashedError(f"timeout: the job ran longer than {timeout:.0f} s and was killed")

    def _death_message(self) -> str:
        code = self.process.poll()
        reason = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        tail = _tail(self.log_path, LOG_TAIL_LINES)
        return f"worker process died ({reason}); log tail: {tail}" if tail else f"worker process died ({reason})"

    def close(self) -> None:
        """End the worker's input so that it exits; kill it if it does not."""
        if self.alive():
            try:
                assert self.process.stdin is not None
                self.process.stdin.close()
                self.process.wait(15)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                pass
        self.kill()

    def kill(self) -> None:
        """Kill the worker (its own pid only) and reap it."""
        if self.alive():
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        for stream in (self.process.stdin, self.process.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return " / ".join(line.strip() for line in text[-lines:] if line.strip())[-600:]


def run_jobs(
    jobs: Sequence[Job],
    parallel: int,
    payload_for: Callable[[Job], dict[str, Any]],
    environment: dict[str, str],
    log_dir: Path,
    timeout: float,
    on_result: Callable[[Job, list[dict[str, Any]], float, list[Job]], None],
) -> None:
    """Run ``jobs`` in order on ``parallel`` worker slots; ``on_result`` is called (serialised) after each job.

    A slot keeps its worker while consecutive jobs use the same model and starts a fresh one otherwise or after
    a crash. A crashed or timed-out job yields failed results for its rows; the other jobs go on.
    """
    queue = deque(jobs)
    lock = threading.Lock()
    stop = threading.Event()
    live: dict[int, Worker] = {}

    def slot(index: int) -> None:
        worker: Worker | None = None
        try:
            while not stop.is_set():
                with lock:
                    if not queue:
                        return
                    job = queue.popleft()
                if worker is not None and (worker.name != job.model or not worker.alive()):
                    worker.close()
                    worker = None
                if worker is None:
                    worker = Worker(job.model, log_dir / f"{job.model}.{index}.log", environment)
                    live[index] = worker
                start = time.monotonic()
                try:
                    results = worker.run(payload_for(job), timeout)
                except WorkerCrashedError as error:
                    worker.kill()
                    worker = None
                    results = [{"key": row.key, "status": "failed", "error": str(error)} for row in job.rows]
                elapsed = time.monotonic() - start
                if stop.is_set():
                    return
                with lock:
                    on_result(job, results, elapsed, list(queue))
        finally:
            if worker is not None:
                worker.close()

    threads = [threading.Thread(target=slot, args=(i,), name=f"bench-slot-{i}", daemon=True) for i in range(parallel)]
    for thread in threads:
        thread.start()
    try:
        while any(thread.is_alive() for thread in threads):
            for thread in threads:
                thread.join(0.2)
    except KeyboardInterrupt:
        stop.set()
        for worker in list(live.values()):
            worker.kill()
        raise


# ------------------------------------------------------------------------------------------------------------
# Environment and run information
# ------------------------------------------------------------------------------------------------------------
def worker_environment(suite: dict[str, Any], work_dir: Path) -> dict[str, str]:
    """Variables for the workers: offline Hugging Face hub with the shipped backbone weights, thread counts."""
    threads = str(suite["threads"])
    environment = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])),
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "PYTHONWARNINGS": "ignore",
    }
    if suite.get("offline"):
        environment["HF_HUB_OFFLINE"] = "1"
        environment["HF_HUB_CACHE"] = os.environ.get("HF_HUB_CACHE") or str((work_dir / "hf_cache").resolve())
    return environment


def _versions() -> dict[str, str]:
    packages = ("anomalib", "anomalib-bgad", "torch", "torchvision", "lightning", "timm", "FrEIA")
    return {"python": platform.python_version(), **package_versions(packages)}


def _machine(accelerator: str) -> str:
    cpu = cpu_model(default=platform.processor() or platform.machine())
    memory = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kib / 1024**2:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{platform.system()} {platform.machine()}, {cpu}, {cores} cores{memory}, accelerator {accelerator}"


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


# ------------------------------------------------------------------------------------------------------------
# Progress
# ------------------------------------------------------------------------------------------------------------
def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def estimate_remaining(pending: Sequence[Job], durations: dict[str, list[float]]) -> float | None:
    """Seconds left: each pending job costs the mean duration of finished jobs of its model (else of all)."""
    every = [d for values in durations.values() for d in values]
    if not every:
        return None
    overall = sum(every) / len(every)
    return sum(
        sum(durations[job.model]) / len(durations[job.model]) if durations.get(job.model) else overall
        for job in pending
    )


def _summary(records: Sequence[dict[str, Any]]) -> str:
    parts = []
    for record in records:
        if record.get("status") == "ok":
            parts.append(
                f"{record['setting']}{'/' + record['seen_defect_type'] if record.get('seen_defect_type') else ''}"
                f" n={record['n_anomalies']}: img {record.get('image_AUROC', math.nan):.3f}"
                f" pix {record.get('pixel_AUROC', math.nan):.3f} pro {record.get('pixel_AUPRO', math.nan):.3f}"
            )
        else:
            parts.append(f"FAILED {record['key']}: {str(record.get('error', ''))[:160]}")
    return "; ".join(parts)


# ------------------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------------------
def _split_list(text: str | None) -> list[str] | None:
    return [item.strip() for item in text.split(",") if item.strip()] if text else None


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Train and test a grid of models x categories x settings x seeds; write CSV, markdown, plots.",
    )
    parser.add_argument("--config", required=True, help="suite file, e.g. benchmarks/suites/embedded.yaml")
    parser.add_argument("--root", help="dataset root (overrides dataset.root), e.g. your MVTec AD copy")
    parser.add_argument("--output", help="results folder (default: benchmarks/results/<suite>)")
    parser.add_argument("--work-dir", help="scratch folder (default: results/benchmarks/<suite>)")
    parser.add_argument("--models", help="comma-separated subset of the suite's models")
    parser.add_argument("--categories", help="comma-separated subset of the categories")
    parser.add_argument("--seeds", help="comma-separated subset of the seeds")
    parser.add_argument("--settings", help="comma-separated subset of the settings (multi_class,one_class,sweep)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override any suite key (repeatable)"
    )
    parser.add_argument("--list", action="store_true", help="print the jobs and which are done; run nothing")
    parser.add_argument("--report-only", action="store_true", help="only rebuild results.md and plots")
    parser.add_argument("--no-retry-failed", action="store_true", help="keep failed cells instead of retrying")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return parser


def write_report(suite: dict[str, Any], results_dir: Path, plots: bool = True) -> Path | None:
    """Rebuild ``results.md`` (and the plots) from ``results.csv``; returns the markdown path."""
    csv_path = results_dir / "results.csv"
    if not csv_path.is_file():
        return None
    frame = report.read_results(csv_path)
    if frame.empty:
        return None
    info_path = results_dir / "run_info.json"
    run_info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    plot_paths = []
    if plots:
        plot_paths = [
            p.relative_to(results_dir).as_posix() for p in report.make_plots(frame, suite, results_dir / "plots")
        ]
    markdown = report.render_markdown(frame, suite, run_info, plot_paths)
    target = results_dir / "results.md"
    target.write_text(markdown, encoding="utf-8")
    return target


def _update_run_info(
    results_dir: Path,
    suite: dict[str, Any],
    command: str,
    store: ResultStore,
    jobs: list[Job],
    run_jobs_count: int,
    wall_seconds: float,
) -> None:
    """Write ``run_info.json``: command, versions, machine, compute (shown in the markdown header)."""
    rows = [store.latest[r.key] for j in jobs for r in j.rows if r.key in store.latest]
    seen_jobs: dict[str, float] = {}
    for record in rows:
        if record.get("job_id") and isinstance(record.get("job_s"), int | float):
            seen_jobs[record["job_id"]] = float(record["job_s"])
    info = {
        "suite": suite["suite"],
        "command": command,
        "versions": _versions(),
        "machine": _machine(suite["accelerator"]),
        "git_commit": _git_commit(),
        "updated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "compute": (
            f"{len(seen_jobs)} training jobs, {_duration(sum(seen_jobs.values()))} of job time in total "
            f"(sum of the jobs' wall times in their workers, library imports included); "
            f"{suite['parallel']} job(s) at a time, {suite['threads']} torch thread(s) each; the last invocation "
            f"ran {run_jobs_count} job(s) in {_duration(wall_seconds)} wall time"
        ),
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "run_info.json").write_text(json.dumps(info, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (1 if any cell failed)."""
    args = build_parser().parse_args(argv)
    overrides = list(args.set)
    if args.root:
        overrides.append(f"dataset.root={args.root}")
    try:
        suite = load_suite(args.config, overrides)
    except SuiteError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    results_dir = Path(args.output) if args.output else REPO_ROOT / "benchmarks" / "results" / suite["suite"]
    work_dir = Path(args.work_dir) if args.work_dir else REPO_ROOT / "results" / "benchmarks" / suite["suite"]
    if args.report_only:
        target = write_report(suite, results_dir, plots=not args.no_plots)
        print(f"Report: {target}" if target else f"No results in {results_dir}.")
        return 0

    embedded = suite["dataset"].get("embedded")
    if embedded and not args.list:
        from anomalib_bgad.embedded import generate_embedded_dataset

        print(f"Embedded dataset: generating/checking {suite['dataset']['root']} ({embedded}) ...", flush=True)
        generate_embedded_dataset(suite["dataset"]["root"], categories=suite["dataset"]["categories"], **embedded)
    try:
        full_grid = expand(suite)
        seeds = [int(s) for s in _split_list(args.seeds)] if args.seeds else None
        selected = suite
        if args.settings:
            kinds = _split_list(args.settings) or []
            unknown = sorted(set(kinds) - set(suite["settings"]))
            if unknown:
                raise SuiteError(f"Unknown setting(s) {unknown}; the suite has {list(suite['settings'])}.")
            selected = {**suite, "settings": {k: v for k, v in suite["settings"].items() if k in kinds}}
        jobs = expand(selected, _split_list(args.models), _split_list(args.categories), seeds)
    except SuiteError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    store = ResultStore(results_dir)
    retry = not args.no_retry_failed
    pending: list[Job] = []
    for job in jobs:
        todo = [row for row in job.rows if not store.is_done(row.key, row.config_hash, retry)]
        if todo:
            pending.append(Job(job.model, job.category, job.seed, todo))
    total_rows = sum(len(job.rows) for job in jobs)
    pending_rows = sum(len(job.rows) for job in pending)
    print(
        f"Suite '{suite['suite']}': {len(jobs)} jobs / {total_rows} cells selected; {total_rows - pending_rows} "
        f"cells already done, {len(pending)} jobs / {pending_rows} cells to run. Results: {results_dir}",
        flush=True,
    )
    if args.list:
        for index, job in enumerate(jobs, 1):
            states = ["done" if store.is_done(r.key, r.config_hash, retry) else "todo" for r in job.rows]
            print(
                f"  [{index}/{len(jobs)}] {job.job_id}: "
                + ", ".join(f"{r.split.split_id}={s}" for r, s in zip(job.rows, states, strict=True))
            )
        return 0

    command = "python -m benchmarks.run " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    environment = worker_environment(suite, work_dir)
    offline_backbone = suite.get("backbone") if suite.get("offline") else None
    labels = {name: spec["label"] for name, spec in suite["models"].items()}
    durations: dict[str, list[float]] = {}
    failed_cells = 0
    started = time.monotonic()
    finished = 0
    parallel = max(1, int(suite.get("parallel", 1)))

    def record(job: Job, results: list[dict[str, Any]], elapsed: float, remaining: list[Job]) -> None:
        nonlocal failed_cells, finished
        finished += 1
        durations.setdefault(job.model, []).append(elapsed)
        by_key = {result["key"]: result for result in results}
        records = []
        for row in job.rows:
            result = by_key.get(row.key, {"status": "failed", "error": "no result returned"})
            records.append(
                {
                    **result,
                    "key": row.key,
                    "suite": suite["suite"],
                    "model": row.model,
                    "label": labels[row.model],
                    "category": row.category,
                    "setting": row.split.setting,
                    "seen_defect_type": row.split.seen_defect_type,
                    "n_anomalies": row.split.n_anomalies,
                    "seed": row.seed,
                    "shared_training": len(job.rows) > 1,
                    "config_hash": row.config_hash,
                    "manifest": _relative(result.get("manifest"), results_dir),
                    "finished_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
            )
        failed_cells += sum(record["status"] != "ok" for record in records)
        store.add(records)
        store.write_csv(full_grid)
        estimate = estimate_remaining(remaining, durations)
        eta = _duration(estimate / parallel) if estimate is not None else "?"
        print(
            f"[{finished}/{len(pending)}] {job.model} {job.category} seed{job.seed} ({_duration(elapsed)}): "
            f"{_summary(records)} | elapsed {_duration(time.monotonic() - started)}, ETA {eta}",
            flush=True,
        )

    def payload_for(job: Job) -> dict[str, Any]:
        payload = job_payload(suite, job, results_dir, work_dir)
        payload["install_offline_weights"] = offline_backbone
        return payload

    try:
        run_jobs(
            pending,
            parallel,
            payload_for,
            environment,
            work_dir / "logs",
            float(suite["job_timeout"]),
            record,
        )
    except KeyboardInterrupt:
        print("Interrupted: finished cells are kept; rerun the same command to resume.", file=sys.stderr)
        failed_cells = -1
    store.write_csv(full_grid)
    _update_run_info(results_dir, suite, command, store, full_grid, finished, time.monotonic() - started)
    target = write_report(suite, results_dir, plots=not args.no_plots)
    print(f"Done in {_duration(time.monotonic() - started)}. Table: {target}; CSV: {store.csv_path}", flush=True)
    if failed_cells < 0:
        return 130
    if failed_cells:
        print(f"{failed_cells} cell(s) failed; see the Failures section of {target}.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
