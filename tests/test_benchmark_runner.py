"""The benchmark runner (benchmarks/run.py): resume, failure isolation, table generation, suite wiring.

The fast tests run a two-cell grid through the real runner and worker processes with stub models (a
``runner: module:function`` model spec), so they exercise the scheduling, the result store and the report
without training anything. The slow test runs real anomalib models on a tiny generated tree.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from benchmarks import report
from benchmarks.run import ResultStore, estimate_remaining, main
from benchmarks.suite import Job, SuiteError, expand, load_suite

REPO_ROOT = Path(__file__).resolve().parents[1]
SUITES = REPO_ROOT / "benchmarks" / "suites"

STUB_MODULE = '''
"""Stub benchmark runners for tests: no training, deterministic metrics, a counter of calls."""
import os
from pathlib import Path


def _count(job):
    log = Path(os.environ["BENCH_STUB_LOG"])
    with log.open("a") as handle:
        handle.write(job["job_id"] + "\\n")


def good(job):
    _count(job)
    return _metrics(job)


def _metrics(job):
    base = {"brick": 0.9, "grass": 0.8}[job["category"]] + 0.01 * job["seed"]
    return [
        {
            "key": row["key"],
            "status": "ok",
            "image_AUROC": base,
            "pixel_AUROC": base - 0.1,
            "pixel_AUPRO": base - 0.2,
            "train_s": 1.5,
            "test_s": 0.5,
            "ms_per_image": 3.0,
        }
        for row in job["rows"]
    ]


def flaky(job):
    _count(job)
    if job["category"] == "grass":
        raise RuntimeError("stub failure on grass")
    return _metrics(job)


def crash(job):
    _count(job)
    if job["category"] == "grass":
        os._exit(3)  # a hard crash: the worker process dies
    return _metrics(job)


def budgeted(job):
    """Calibration: first epoch 10 s, later epochs 5 s; a budgeted cell reports the epochs it was given."""
    _count(job)
    if job["kind"] == "calibration":
        if job["category"] == os.environ.get("BENCH_STUB_FAIL_CALIBRATION"):
            raise RuntimeError("stub calibration failure")
        row = job["rows"][0]
        return [{"key": row["key"], "status": "ok", "t_first_s": 10.0, "t_epoch_s": 5.0, "epoch_s": [10.0, 5.0]}]
    epochs = job["model"]["max_epochs"]
    return [{**result, "epochs": epochs, "train_s": 10.0 + 5.0 * (epochs - 1)} for result in _metrics(job)]
'''


@pytest.fixture
def stub_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stub module importable by the worker processes (through PYTHONPATH) and a call log."""
    package = tmp_path / "stubpkg"
    package.mkdir()
    (package / "bench_stub.py").write_text(STUB_MODULE)
    monkeypatch.setenv("PYTHONPATH", str(package))
    log = tmp_path / "calls.log"
    monkeypatch.setenv("BENCH_STUB_LOG", str(log))
    return log


def write_suite(tmp_path: Path, runner: str, **extra) -> Path:
    """A two-cell grid: one stub model x two categories x one setting x one seed."""
    suite = {
        "suite": "stub",
        "title": "Stub suite",
        "dataset": {"root": str(tmp_path / "no_data"), "categories": ["brick", "grass"]},
        "seeds": [0],
        "threads": 1,
        "job_timeout": 120,
        "settings": {"multi_class": {"n_anomalies": 10}},
        "models": {"bgad": {"label": "BGAD", "runner": runner, "train_anomalies": True}},
        **extra,
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def run(tmp_path: Path, suite: Path, *extra: str) -> int:
    return main(
        [
            "--config",
            str(suite),
            "--output",
            str(tmp_path / "out"),
            "--work-dir",
            str(tmp_path / "work"),
            "--no-plots",
            *extra,
        ]
    )


def calls(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


# ------------------------------------------------------------------------------------------------------------
# Runner: resume and failure isolation
# ------------------------------------------------------------------------------------------------------------
def test_resume_recomputes_nothing(tmp_path: Path, stub_env: Path) -> None:
    suite = write_suite(tmp_path, "bench_stub:good")
    assert run(tmp_path, suite) == 0
    assert len(calls(stub_env)) == 2
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    assert list(results["status"]) == ["ok", "ok"]
    assert sorted(results["category"]) == ["brick", "grass"]
    first_csv = (tmp_path / "out" / "results.csv").read_text()

    assert run(tmp_path, suite) == 0
    assert len(calls(stub_env)) == 2, "the second run must not run any job again"
    assert (tmp_path / "out" / "results.csv").read_text() == first_csv
    assert "0.900" in (tmp_path / "out" / "results.md").read_text()


def test_changed_configuration_makes_cells_stale(tmp_path: Path, stub_env: Path) -> None:
    suite = write_suite(tmp_path, "bench_stub:good")
    assert run(tmp_path, suite) == 0
    assert run(tmp_path, suite, "--set", "models.bgad.max_epochs=7") == 0
    assert len(calls(stub_env)) == 4, "a changed model setting must invalidate the stored cells"


def test_failed_cell_is_recorded_and_the_other_completes(tmp_path: Path, stub_env: Path) -> None:
    suite = write_suite(tmp_path, "bench_stub:flaky")
    assert run(tmp_path, suite) == 1, "a failed cell makes the exit code 1"
    results = pd.read_csv(tmp_path / "out" / "results.csv").set_index("category")
    assert results.loc["brick", "status"] == "ok"
    assert results.loc["brick", "image_AUROC"] == pytest.approx(0.9)
    assert results.loc["grass", "status"] == "failed"
    assert "RuntimeError: stub failure on grass" in results.loc["grass", "error"]
    assert math.isnan(results.loc["grass", "image_AUROC"])
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "## Failures" in markdown and "stub failure on grass" in markdown

    # Rerun: the finished cell stays, the failed one is retried (and fails again), unless told not to.
    run(tmp_path, suite)
    assert calls(stub_env) == [
        "bgad__brick__multi_class_n10__seed0",
        "bgad__grass__multi_class_n10__seed0",
        "bgad__grass__multi_class_n10__seed0",
    ]
    run(tmp_path, suite, "--no-retry-failed")
    assert len(calls(stub_env)) == 3


def test_hard_crash_of_the_worker_fails_only_that_cell(tmp_path: Path, stub_env: Path) -> None:
    # grass crashes the worker process; brick is listed first in the grid, so run grass first via the order.
    suite = write_suite(tmp_path, "bench_stub:crash")
    data = yaml.safe_load(suite.read_text())
    data["dataset"]["categories"] = ["grass", "brick"]
    suite.write_text(yaml.safe_dump(data))
    assert run(tmp_path, suite) == 1
    results = pd.read_csv(tmp_path / "out" / "results.csv").set_index("category")
    assert results.loc["grass", "status"] == "failed"
    assert "worker process died (exit code 3)" in results.loc["grass", "error"]
    assert results.loc["brick", "status"] == "ok", "a fresh worker must run the next cell"


def test_parallel_slots_run_every_job_exactly_once(tmp_path: Path, stub_env: Path) -> None:
    suite = write_suite(tmp_path, "bench_stub:good", parallel=2, seeds=[0, 1])
    assert run(tmp_path, suite) == 0
    assert sorted(calls(stub_env)) == sorted(
        f"bgad__{category}__multi_class_n10__seed{seed}" for category in ("brick", "grass") for seed in (0, 1)
    )
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    assert len(results) == 4 and set(results["status"]) == {"ok"}
    assert run(tmp_path, suite) == 0
    assert len(calls(stub_env)) == 4


def test_progress_lines_show_index_total_and_eta(
    tmp_path: Path, stub_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    del stub_env
    assert run(tmp_path, write_suite(tmp_path, "bench_stub:good")) == 0
    out = capsys.readouterr().out
    assert "[1/2] bgad brick seed0" in out and "ETA" in out
    assert "[2/2] bgad grass seed0" in out


def write_budget_suite(tmp_path: Path, budgets: list[float]) -> Path:
    """The stub grid with training-time budgets for BGAD and a PatchCore stub at its own training time."""
    suite = write_suite(tmp_path, "bench_stub:good", report="time_to_accuracy")
    data = yaml.safe_load(suite.read_text())
    data["models"] = {
        "bgad": {"label": "BGAD", "runner": "bench_stub:budgeted", "train_anomalies": True, "budgets_s": budgets},
        "patchcore": {"label": "PatchCore", "runner": "bench_stub:good"},
    }
    data["time_to_accuracy"] = {"compare_to": "patchcore"}
    suite.write_text(yaml.safe_dump(data))
    return suite


def test_budgets_become_epochs_through_a_calibration_run_first(
    tmp_path: Path, stub_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = write_budget_suite(tmp_path, [12, 30])
    assert run(tmp_path, suite, "--list") == 0
    # 2 budgets x 2 categories x 12 s and 30 s
    assert "Budgeted training: 1m24s in all, 1m24s still to run; not included: 2 calibration job(s)" in (
        capsys.readouterr().out
    )
    assert calls(stub_env) == []
    assert run(tmp_path, suite) == 0
    assert calls(stub_env)[:2] == [
        "bgad__brick__multi_class_n10__seed0__calibration",
        "bgad__grass__multi_class_n10__seed0__calibration",
    ]
    assert len(calls(stub_env)) == 2 + 4 + 2
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    cells = results[(results.model == "bgad") & (results.kind == "cell")].set_index(["category", "budget_s"])
    # Calibration: first epoch 10 s, later epochs 5 s -> 12 s: 1 + floor(2 / 5) = 1 epoch; 30 s: 1 + 4 = 5 epochs.
    assert cells.loc[("brick", 12), "epochs"] == 1 and cells.loc[("grass", 30), "epochs"] == 5
    assert cells.loc[("grass", 30), "train_s"] == 30 and cells["t_first_s"].eq(10).all()
    calibrations = results[results.kind == "calibration"]
    assert len(calibrations) == 2 and calibrations["t_epoch_s"].eq(5).all()
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "| BGAD | brick | cpu, 1 threads | 10.0 | 5.0 | 10.0, 5.0 | 12 s: 1, 30 s: 5 |" in markdown
    assert "| BGAD | 30 s | 5 | 30 ± 0 | 1/1 | 0.850 | 0.750 | 0.650 | — | — | tie +0.000 / tie +0.000 |" in markdown

    # Resume: nothing to do. A new budget runs only its own cells, with the stored calibration.
    assert run(tmp_path, suite) == 0
    assert len(calls(stub_env)) == 8
    assert run(tmp_path, write_budget_suite(tmp_path, [12, 30, 60])) == 0
    assert calls(stub_env)[8:] == [
        "bgad__brick__multi_class_n10__seed0__budget60s",
        "bgad__grass__multi_class_n10__seed0__budget60s",
    ]


def test_a_failed_calibration_fails_only_its_budgeted_cells(
    tmp_path: Path, stub_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BENCH_STUB_FAIL_CALIBRATION", "grass")
    assert run(tmp_path, write_budget_suite(tmp_path, [12])) == 1
    results = pd.read_csv(tmp_path / "out" / "results.csv").set_index("key")
    failed = results.loc["bgad|grass|multi_class_n10|seed0|budget12s"]
    assert failed["status"] == "failed"
    assert "the calibration of bgad on grass failed: RuntimeError: stub calibration failure" in failed["error"]
    assert results.loc["bgad|brick|multi_class_n10|seed0|budget12s", "status"] == "ok"
    assert "bgad__grass__multi_class_n10__seed0__budget12s" not in calls(stub_env), "nothing to train without epochs"


# ------------------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------------------
HAND_WRITTEN_CSV = """\
key,model,label,category,setting,seen_defect_type,n_anomalies,seed,status,error,image_AUROC,pixel_AUROC,pixel_AUPRO,train_s,ms_per_image,peak_rss_mb,job_id
a,bgad,BGAD,brick,multi_class,,10,0,ok,,0.90,0.95,0.80,10,2.0,900,j1
b,bgad,BGAD,brick,multi_class,,10,1,ok,,0.80,0.93,0.70,12,2.0,900,j2
c,bgad,BGAD,brick,multi_class,,10,2,ok,,1.00,0.97,0.90,14,2.0,900,j3
d,bgad,BGAD,grass,multi_class,,10,0,ok,,0.70,0.90,0.60,10,2.0,900,j4
e,bgad,BGAD,grass,multi_class,,10,1,ok,,0.60,0.90,0.60,10,2.0,900,j5
f,bgad,BGAD,grass,multi_class,,10,2,ok,,0.80,0.90,0.60,10,2.0,900,j6
g,patchcore,PatchCore,brick,multi_class,,10,0,ok,,0.50,0.80,0.50,1,1.0,700,k1
h,patchcore,PatchCore,brick,multi_class,,10,1,ok,,0.50,0.80,0.50,1,1.0,700,k2
i,patchcore,PatchCore,brick,multi_class,,10,2,ok,,0.50,0.80,0.50,1,1.0,700,k3
j,patchcore,PatchCore,grass,multi_class,,10,0,ok,,0.60,0.80,0.50,1,1.0,700,k4
k,patchcore,PatchCore,grass,multi_class,,10,1,failed,RuntimeError: boom,,,,,,,k5
l,patchcore,PatchCore,grass,multi_class,,10,2,ok,,0.70,0.80,0.50,1,1.0,700,k6
"""


def hand_suite() -> dict:
    return {
        "suite": "hand",
        "title": "Hand-written",
        "dataset": {"categories": ["brick", "grass"]},
        "seeds": [0, 1, 2],
        "headline_n": 10,
        "models": {"bgad": {"label": "BGAD"}, "patchcore": {"label": "PatchCore"}},
    }


def test_table_mean_std_formatting_from_a_hand_written_csv(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    path.write_text(HAND_WRITTEN_CSV)
    frame = report.read_results(path)
    markdown = report.render_markdown(frame, hand_suite(), {"command": "python -m benchmarks.run --config x"})
    image_table = markdown.split("### image AUROC")[1].split("###")[0]
    # brick 0.9/0.8/1.0 -> 0.900 ± 0.100; grass 0.7/0.6/0.8 -> 0.700 ± 0.100;
    # mean per seed (0.8, 0.7, 0.9) -> 0.800 ± 0.100
    assert "| BGAD | 0.900 ± 0.100 | 0.700 ± 0.100 | **0.800 ± 0.100** |" in image_table
    # PatchCore grass: seed 1 failed -> 0.6/0.7 over 2 seeds, flagged; the mean uses seeds 0 and 2 only:
    # (0.5+0.6)/2=0.55, (0.5+0.7)/2=0.6 -> 0.575 ± 0.035
    assert "| PatchCore | 0.500 ± 0.000 | 0.650 ± 0.071 (n=2) | **0.575 ± 0.035 (n=2)** |" in image_table
    assert "`python -m benchmarks.run --config x`" in markdown
    assert "| `k` | RuntimeError: boom |" in markdown
    # Computed verdicts: BGAD - PatchCore per seed on image AUROC: seed0 0.8-0.55=0.25, seed2 0.9-0.6=0.3
    assert "BGAD wins over: PatchCore on image AUROC (0.850 vs 0.575, +0.275 ± 0.035, 2 seeds)" in markdown


def test_format_cell_and_verdict() -> None:
    assert report.format_cell(*report.mean_std([0.8, 0.9, 1.0])) == "0.900 ± 0.100"
    assert report.format_cell(*report.mean_std([0.8])) == "0.800"
    assert report.format_cell(*report.mean_std([])) == "—"
    assert report.format_cell(*report.mean_std([0.8, 0.9]), expected=3) == "0.850 ± 0.071 (n=2)"
    assert report.verdict(0.05, 0.01) == "wins"
    assert report.verdict(-0.05, 0.01) == "loses"
    assert report.verdict(0.01, 0.02) == "tie"
    assert report.verdict(0.003, 0.0) == "tie"


def cell(model: str, seed: int, value: float, **fields) -> dict:
    """A successful brick cell of ``results.csv`` (multi-class, 10 anomalies) whose three metrics are ``value``."""
    row = {"model": model, "category": "brick", "setting": "multi_class", "n_anomalies": 10, "seed": seed}
    row |= {"status": "ok", **dict.fromkeys(report.METRICS, value), **fields}
    return {"key": "|".join(str(v) for v in row.values()), **row}


def as_frame(tmp_path: Path, rows: list[dict]) -> pd.DataFrame:
    """Write ``rows`` as ``results.csv`` and read it back as the report does."""
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    return report.read_results(tmp_path / "results.csv")


def test_sweep_and_one_class_tables_and_plots(tmp_path: Path) -> None:
    rows = []
    for seed in (0, 1):
        for n in (0, 5, 10):
            rows += [
                cell(model, seed, value, n_anomalies=n) for model, value in (("bgad", 0.7 + 0.02 * n), ("nfad", 0.8))
            ]
        for model, value in (("bgad", 0.85), ("nfad", 0.9)):
            one_class = {"setting": "one_class", "seen_defect_type": "crack", "image_AUROC": value + 0.01 * seed}
            rows.append(cell(model, seed, value, **one_class))
    frame = as_frame(tmp_path, rows)
    suite = {
        "suite": "s",
        "dataset": {"categories": ["brick"]},
        "seeds": [0, 1],
        "models": {"bgad": {"label": "BGAD"}, "nfad": {"label": "NFAD"}},
    }
    markdown = report.render_markdown(frame, suite)
    assert "| model | 0 anomalies | 5 anomalies | 10 anomalies |" in markdown
    assert "| BGAD | 0.700 ± 0.000 | 0.800 ± 0.000 | 0.900 ± 0.000 |" in markdown
    assert "| BGAD | 0.855 ± 0.007 | **0.855 ± 0.007** |" in markdown  # one-class brick/crack
    assert "BGAD loses to: NFAD on image AUROC (0.855 vs 0.905" in markdown  # one-class
    plots = report.make_plots(frame, suite, tmp_path / "plots")
    assert sorted(p.name for p in plots) == ["multi_class.png", "one_class.png", "sweep.png"]
    assert all(p.stat().st_size > 5000 for p in plots)


def test_sweep_zero_point_can_come_from_an_identically_trained_model(tmp_path: Path) -> None:
    points = (("bgad_wo", 0, 0.6), ("bgad", 5, 0.7), ("bgad", 10, 0.8), ("bgad_wo", 10, 0.65))
    frame = as_frame(
        tmp_path, [cell(model, seed, value, n_anomalies=n) for seed in (0, 1) for model, n, value in points]
    )
    suite = {
        "suite": "s",
        "dataset": {"categories": ["brick"]},
        "seeds": [0, 1],
        "settings": {"sweep": {"n_anomalies": [0, 5, 10], "zero_from": {"bgad": "bgad_wo"}}},
        "models": {"bgad": {"label": "BGAD"}, "bgad_wo": {"label": "BGAD w/o"}},
    }
    markdown = report.render_markdown(frame, suite)
    assert "| BGAD | 0.600 ± 0.000 (BGAD w/o) | 0.700 ± 0.000 | 0.800 ± 0.000 |" in markdown
    assert "| BGAD w/o | 0.600 ± 0.000 | — | 0.650 ± 0.000 |" in markdown
    assert "BGAD image AUROC): 0: 0.600 ± 0.000, 5: 0.700 ± 0.000, 10: 0.800 ± 0.000" in markdown


# ------------------------------------------------------------------------------------------------------------
# Suites and grid expansion
# ------------------------------------------------------------------------------------------------------------
def test_unsupervised_models_train_once_per_category_and_seed(tmp_path: Path) -> None:
    suite = load_suite(
        SUITES / "embedded.yaml",
        ["dataset.embedded=null", f"dataset.root={tmp_path}", "seeds=[0]", "dataset.categories=[brick]"],
    )
    jobs = expand(suite)
    # BGAD trains on anomalies: one job per split. multi-class (10), one-class brick/crack, sweep 1 and 5
    # (0 comes from BGAD w/o, 10 is the multi-class run).
    bgad = [job for job in jobs if job.model == "bgad"]
    assert all(len(job.rows) == 1 for job in bgad)
    assert sorted(job.rows[0].split.split_id for job in bgad) == [
        "multi_class_n1",
        "multi_class_n10",
        "multi_class_n5",
        "one_class_crack_n10",
    ]
    # PatchCore does not: one job, tested on every split it is listed for.
    (patchcore,) = [job for job in jobs if job.model == "patchcore"]
    assert [row.split.split_id for row in patchcore.rows] == [
        "multi_class_n10",
        "one_class_crack_n10",
        "multi_class_n0",
        "multi_class_n1",
        "multi_class_n5",
    ]
    # CFLOW is not swept; BGAD-dagger (supervised) is not swept either.
    (cflow,) = [job for job in jobs if job.model == "cflow"]
    assert [row.split.split_id for row in cflow.rows] == ["multi_class_n10", "one_class_crack_n10"]
    assert len([job for job in jobs if job.model == "bgad_dagger"]) == 2
    # Every model has a multi-class row for every category and seed of the full suite, and every model but the
    # SmoothBlend rows (multi-class only) a one-class row.
    full = load_suite(SUITES / "embedded.yaml", ["dataset.embedded=null"])
    rows = [row for job in expand(full) for row in job.rows]
    multi_class_only = {"bgad_smoothblend", "bgad_rpag_smoothblend"}
    assert multi_class_only <= set(full["models"])
    for model in full["models"]:
        for setting in ("multi_class_n10", "one_class"):
            found = [r for r in rows if r.model == model and r.split.split_id.startswith(setting)]
            expected = 0 if (setting == "one_class" and model in multi_class_only) else 3 * 3
            assert len(found) == expected, (model, setting)


def test_every_suite_file_is_valid_and_names_the_paper_protocol() -> None:
    for name in ("embedded", "mvtec", "btad"):
        suite = load_suite(SUITES / f"{name}.yaml")
        assert suite["suite"] == name
        assert {
            "bgad",
            "nfad",
            "bgad_wo",
            "bgad_dagger",
            "patchcore",
            "padim",
            "cflow",
            "ssn",
            "ssn_supervised",
        } <= set(suite["models"])
        assert len(suite["seeds"]) == 3
    for name in ("mvtec", "btad"):
        suite = load_suite(SUITES / f"{name}.yaml")
        assert suite["image_size"] == 256 and suite["backbone"] == "tf_efficientnet_b6"
        assert suite["settings"]["multi_class"]["n_anomalies"] == 10


def test_suite_errors_are_explained(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("suite: x\ndataset: {root: r, categories: [a]}\nmodels: {m: {label: M}}\nsettings: {}\n")
    with pytest.raises(SuiteError, match="model 'm' needs a 'class_path'"):
        load_suite(path)
    with pytest.raises(SuiteError, match=r"key\.path=value"):
        load_suite(SUITES / "embedded.yaml", ["no_equals_sign"])
    suite = load_suite(SUITES / "embedded.yaml", ["dataset.embedded=null"])
    with pytest.raises(SuiteError, match="Unknown model"):
        expand(suite, models=["nope"])


def test_result_store_keeps_the_latest_attempt(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.add([{"key": "k", "status": "failed", "config_hash": "h", "error": "x"}])
    store.add([{"key": "k", "status": "ok", "config_hash": "h"}])
    reopened = ResultStore(tmp_path)
    assert reopened.is_done("k", "h", retry_failed=True)
    assert not reopened.is_done("k", "other-hash", retry_failed=True)
    assert len((tmp_path / "attempts.jsonl").read_text().splitlines()) == 2
    assert json.loads((tmp_path / "attempts.jsonl").read_text().splitlines()[0])["status"] == "failed"


def test_eta_uses_per_model_durations() -> None:
    pending = [Job("a", "brick", 0), Job("b", "brick", 0), Job("c", "brick", 0)]
    assert estimate_remaining(pending, {}) is None
    assert estimate_remaining(pending, {"a": [10.0, 20.0], "b": [40.0]}) == pytest.approx(15 + 40 + 70 / 3)


# ------------------------------------------------------------------------------------------------------------
# End to end with real anomalib models (slow)
# ------------------------------------------------------------------------------------------------------------
# A paper-protocol suite shrunk to the tiny tree: offline backbone, 64 px, one seed, a 2-block BGAD for one epoch.
TINY_OVERRIDES = (
    "backbone=tf_efficientnet_lite0",
    "offline=true",
    "accelerator=cpu",
    "threads=1",
    "image_size=64",
    "seeds=[0]",
    "dataset.args.num_workers=0",
    "settings.multi_class.n_anomalies=2",
    "models.bgad.max_epochs=1",
    "models.bgad.init_args.phase1_epochs=0",
    "models.bgad.init_args.coupling_blocks=2",
)


def cli(config: Path, tmp_path: Path, overrides: tuple[str, ...] | list[str], *extra: str) -> list[str]:
    """``benchmarks.run`` arguments: the suite, output and scratch folders in ``tmp_path``, ``--set`` overrides."""
    args = ["--config", str(config), "--output", str(tmp_path / "out"), "--work-dir", str(tmp_path / "work"), *extra]
    return args + [arg for item in overrides for arg in ("--set", item)]


@pytest.mark.slow
def test_mvtec_suite_wiring_on_a_tiny_tree(tmp_path: Path, tiny_mvtec_root: Path) -> None:
    """The paper-protocol suite, pointed at a tiny tree with the offline backbone: trains, tests, resumes."""
    overrides = [
        *TINY_OVERRIDES,
        "dataset.categories=[brick]",
        "dataset.args.train_batch_size=8",
        "dataset.args.eval_batch_size=8",
        "settings.one_class={n_anomalies: 2, seen_defect_types: [crack]}",
        "settings.sweep.n_anomalies=[0, 2]",
    ]
    args = cli(SUITES / "mvtec.yaml", tmp_path, overrides, "--root", str(tiny_mvtec_root), "--models", "bgad,padim")
    assert main(args) == 0
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    assert set(results["status"]) == {"ok"}
    # BGAD: one job per split; PaDiM: trained once, tested on the 3 splits.
    assert sorted(results[results.model == "bgad"]["n_anomalies"]) == [0, 2, 2]
    padim = results[results.model == "padim"]
    assert len(padim) == 3 and padim["job_id"].nunique() == 1
    assert results[["image_AUROC", "pixel_AUROC", "pixel_AUPRO"]].notna().all().all()
    assert ((results.peak_rss_mb > 100) & (results.ms_per_image > 0)).all()
    # The split manifests are shared: BGAD and PaDiM were tested on the same images.
    manifests = sorted((tmp_path / "out" / "splits" / "brick").glob("*/seed0.json"))
    assert [p.parent.name for p in manifests] == ["multi_class_n0", "multi_class_n2", "one_class_crack_n2"]
    for name in ("multi_class_n2", "one_class_crack_n2"):
        rows = results[results.manifest == f"splits/brick/{name}/seed0.json"]
        assert rows["n_test"].nunique() == 1 and len(rows) == 2
    assert (tmp_path / "out" / "results.md").is_file()
    # Resume: nothing left to do.
    assert main(args) == 0
    assert len(pd.read_csv(tmp_path / "out" / "results.csv")) == 3 + 3


def make_tiny_btad(mvtec_root: Path, target: Path) -> Path:
    """BTAD layout (``01/train/ok``, ``test/ok``, ``test/ko``, ``ground_truth/ko``) from the tiny MVTec tree."""
    import shutil

    source, category = mvtec_root / "brick", target / "01"
    for split, folder in (("train", "ok"), ("test", "ok")):
        (category / split / folder).mkdir(parents=True)
        for image in sorted((source / split / "good").glob("*.png")):
            shutil.copy(image, category / split / folder / image.name)
    (category / "test" / "ko").mkdir(parents=True)
    (category / "ground_truth" / "ko").mkdir(parents=True)
    for defect_dir in sorted(p for p in (source / "test").iterdir() if p.name != "good"):
        for image in sorted(defect_dir.glob("*.png")):
            name = f"{defect_dir.name}_{image.stem}.png"
            shutil.copy(image, category / "test" / "ko" / name)
            mask = source / "ground_truth" / defect_dir.name / f"{image.stem}_mask.png"
            shutil.copy(mask, category / "ground_truth" / "ko" / name)
    return target


@pytest.mark.slow
def test_btad_suite_wiring_on_a_tiny_tree(tmp_path: Path, tiny_mvtec_root: Path) -> None:
    """The BTAD suite (FewAnomalyBTAD, one defect type: no one-class setting) on a tiny BTAD-format tree."""
    root = make_tiny_btad(tiny_mvtec_root, tmp_path / "btad")
    suite = load_suite(SUITES / "btad.yaml")
    assert "one_class" not in suite["settings"]
    extra = ["--root", str(root), "--models", "bgad", "--categories", "01", "--settings", "multi_class"]
    args = cli(SUITES / "btad.yaml", tmp_path, TINY_OVERRIDES, *extra)
    assert main([*args, "--no-plots"]) == 0
    (row,) = pd.read_csv(tmp_path / "out" / "results.csv").to_dict("records")
    assert row["status"] == "ok" and row["n_train_anomalies"] == 2
    assert row["n_test"] == 3 + 10 - 2
    assert row["manifest"] == "splits/01/multi_class_n2/seed0.json"
    manifest = json.loads((tmp_path / "out" / row["manifest"]).read_text())
    assert manifest["datamodule"] == "anomalib_bgad.data.FewAnomalyBTAD"


def test_module_docstring_explains_the_engine_choice() -> None:
    import benchmarks.run as run_module

    doc = run_module.__doc__ or ""
    assert "BenchmarkJob" in doc and "UnknownModelError" in doc


@pytest.mark.skipif(sys.platform != "linux", reason="peak RSS reset needs /proc")
def test_peak_rss_reset_is_per_job() -> None:
    from benchmarks.memory import peak_rss_mib, reset_peak_rss

    assert reset_peak_rss()
    before = peak_rss_mib()
    block = bytearray(200 * 1024 * 1024)
    block[::4096] = b"x" * len(block[::4096])
    assert peak_rss_mib() > before + 150
    del block
    assert reset_peak_rss()
    assert peak_rss_mib() < before + 100
