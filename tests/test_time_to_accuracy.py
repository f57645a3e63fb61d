"""The time-to-accuracy benchmark: budgets as epochs, its suite's jobs, its table and plot, and one real run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from benchmarks import report, time_to_accuracy
from benchmarks.budget import Calibration, format_budget
from benchmarks.run import main
from benchmarks.suite import CALIBRATION, SuiteError, expand, load_suite, validate_suite

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "suites" / "time_to_accuracy.yaml"


# ------------------------------------------------------------------------------------------------------------
# Budget -> epochs
# ------------------------------------------------------------------------------------------------------------
def test_budget_becomes_the_largest_epoch_count_that_fits() -> None:
    calibration = Calibration.from_epochs([26.0, 31.0, 33.0])
    assert (calibration.t_first_s, calibration.t_epoch_s) == (26.0, 32.0)
    # 1 + floor((budget - 26) / 32), at least 1
    assert [calibration.epochs_for(b) for b in (10, 30, 57.9, 58, 150, 600)] == [1, 1, 1, 2, 4, 18]
    for budget in (30, 60, 120, 150, 300, 600):
        epochs = calibration.epochs_for(budget)
        assert epochs == 1 or calibration.predicted_s(epochs) <= budget < calibration.predicted_s(epochs + 1)
    assert Calibration(20.0, 10.0).epochs_for(40.0) == 3, "a budget met exactly is used in full"


def test_calibration_and_budget_errors_name_the_value() -> None:
    with pytest.raises(ValueError, match="at least 2 timed epochs"):
        Calibration.from_epochs([12.0])
    with pytest.raises(ValueError, match=r"t_epoch_s must be a finite number > 0, got 0\.0"):
        Calibration(3.0, 0.0)
    with pytest.raises(ValueError, match="t_first_s must be a finite number >= 0"):
        Calibration(-1.0, 2.0)
    with pytest.raises(ValueError, match="budget must be a finite number of seconds > 0, got nan"):
        Calibration(3.0, 2.0).epochs_for(math.nan)


def test_epoch_clock_times_the_first_epoch_from_the_start_of_fit() -> None:
    from benchmarks.epoch_clock import EpochClock

    clock = EpochClock()
    clock.starts, clock.ends = [5.0, 11.0, 16.5], [10.0, 16.0, 21.5]
    assert clock.durations_from(2.0) == [8.0, 6.0, 5.5]
    assert clock.seconds == [5.0, 5.0, 5.0]


def test_format_budget() -> None:
    assert [format_budget(b) for b in (30, 60, 119, 120, 150, 600)] == [
        "30 s",
        "60 s",
        "119 s",
        "2 min",
        "2.5 min",
        "10 min",
    ]


# ------------------------------------------------------------------------------------------------------------
# The suite's jobs
# ------------------------------------------------------------------------------------------------------------
def committed_suite(*overrides: str) -> dict:
    return load_suite(SUITE, ["dataset.embedded=null", *overrides])


def test_suite_expands_into_calibrations_then_one_job_per_budget_and_seed() -> None:
    suite = committed_suite()
    jobs = expand(suite)
    kinds = [job.kind for job in jobs]
    budgeted = ("bgad", "bgad_border32", "nfad", "nfad_border32")
    assert kinds[:12] == [CALIBRATION] * 12 and CALIBRATION not in kinds[12:]
    assert [(job.model, job.category, job.seed) for job in jobs[:12]] == [
        (model, category, 0) for model in budgeted for category in ("brick", "grass", "gravel")
    ]
    count = {model: sum(job.model == model and job.kind != CALIBRATION for job in jobs) for model in suite["models"]}
    # BGAD 0.2.0 and 0.3.0: 2.5 min x 3 seeds and 30 s, 1, 5 min x seed 0, per category; NFAD 0.2.0 and 0.3.0:
    # 2.5 min x seed 0. PatchCore and PaDiM: one training per category, tested on the split of every seed.
    assert count == {
        "bgad": 3 * (3 + 3), "bgad_border32": 3 * (3 + 3), "nfad": 3 * 1, "nfad_border32": 3 * 1, "patchcore": 3,
        "padim": 3, "bgad_reference": 3,
    }  # fmt: skip
    # 0.3.0's defaults, pinned: the committed rows ran with the padding and the map's maximum as image score.
    assert suite["models"]["bgad_border32"]["init_args"] == {"border_padding": 32, "image_score_top_share": 0}
    assert suite["models"]["nfad_border32"]["init_args"] == {
        "loss_mode": "nfad", "border_padding": 32, "image_score_top_share": 0,
    }  # fmt: skip
    assert all(model["init_args"].get("image_score_top_share") == 0 for model in suite["models"].values()
               if model["class_path"] == "anomalib_bgad.Bgad")  # fmt: skip
    assert {job.seed for job in jobs if job.model == "bgad" and job.budget_s == 300} == {0}
    assert {job.seed for job in jobs if job.model == "bgad" and job.budget_s == 150} == {0, 1, 2}
    (patchcore, *_) = [job for job in jobs if job.model == "patchcore"]
    assert patchcore.seed == 0 and [row.seed for row in patchcore.rows] == [0, 1, 2]
    assert all(len(job.rows) == 1 for job in jobs if job.model not in {"patchcore", "padim"})
    keys = [row.key for job in jobs for row in job.rows]
    assert len(set(keys)) == len(keys) and len({job.job_id for job in jobs}) == len(jobs)
    assert "bgad|brick|multi_class_n10|seed1|budget150s" in keys
    assert "bgad|brick|multi_class_n10|seed0|calibration" in keys
    reference = suite["models"]["bgad_reference"]
    assert reference["max_epochs"] == 60 and reference["seeds"] == [0]
    assert reference["init_args"] == {  # the paper's training settings
        "lr_schedule": "cosine",
        "learning_rate": 2.0e-4,
        "fiber_batch_size": 4096,
        "coupling_blocks": 8,
        "phase1_epochs": 1,
        "border_padding": 0,  # the committed results ran with 0.2.0's defaults
        "image_score_top_share": 0,
    }
    assert suite["dataset"]["args"]["repeat_anomalies"] == 2 and suite["image_size"] == 256


def test_a_model_trained_once_keeps_its_first_seed_under_a_seed_filter() -> None:
    (job,) = expand(committed_suite(), models=["padim"], categories=["brick"], seeds=[2])
    assert job.seed == 0 and [row.key for row in job.rows] == ["padim|brick|multi_class_n10|seed2"]


def test_a_seed_filter_keeps_the_calibrations() -> None:
    jobs = expand(committed_suite(), models=["bgad"], categories=["grass"], seeds=[1])
    assert [(job.kind, job.seed, job.budget_s) for job in jobs] == [
        (CALIBRATION, 0, None),
        ("cell", 1, 150.0),
    ]


def test_config_hashes_follow_what_a_row_computes() -> None:
    def hashes(*overrides: str) -> dict[str, str]:
        return {row.key: row.config_hash for job in expand(committed_suite(*overrides)) for row in job.rows}

    base = hashes()
    more = hashes("models.bgad.budgets_s=[30, 60, 150, 300, 900]", "models.padim.seeds=[0, 1]")
    assert all(more[key] == value for key, value in base.items() if key in more), "scheduling keys change nothing"
    assert len(more) == len(base) + 3 * 3 - 3 and "bgad|brick|multi_class_n10|seed0|budget900s" in more
    other = hashes("models.bgad.init_args.coupling_blocks=4")
    changed = {key for key in base if other[key] != base[key]}
    assert changed == {key for key in base if key.startswith("bgad|")}
    calibration = hashes("models.bgad.calibration_epochs=4")
    assert {key for key in base if calibration[key] != base[key]} == {
        f"bgad|{c}|multi_class_n10|seed0|calibration" for c in ("brick", "grass", "gravel")
    }


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"max_epochs": 3, "budgets_s": [30]}, "give either 'max_epochs' or 'budgets_s', not both"),
        ({"budgets_s": [30, -1]}, r"budgets_s must be a non-empty list of seconds > 0, got \[30, -1\]"),
        ({"budgets_s": [30, 30]}, r"budgets_s lists a budget twice: \[30, 30\]"),
        ({"budgets_s": [30], "budget_seeds": {60: [0]}}, "budget_seeds names budget 60, which is not in budgets_s"),
        ({"budgets_s": [30], "budget_seeds": {30: [5]}}, r"budget_seeds\[30\] must be a non-empty subset"),
        ({"budgets_s": [30], "seeds": [0, 7]}, r"seeds must be a non-empty subset of the suite's seeds \[0, 1\]"),
        ({"budgets_s": [30], "calibration_epochs": 1}, "calibration_epochs must be an integer >= 2"),
        ({"max_epochs": 2, "calibration_epochs": 3}, "'calibration_epochs' needs 'budgets_s'"),
        ({"train_once": True, "train_anomalies": True}, "train_once needs train_anomalies: false and no budgets_s"),
        ({"train_once": True, "budgets_s": [30]}, "train_once needs train_anomalies: false and no budgets_s"),
    ],
)
def test_budget_errors_are_explained(model: dict, message: str) -> None:
    suite = {
        "suite": "x",
        "dataset": {"root": "r", "categories": ["a"]},
        "seeds": [0, 1],
        "settings": {"multi_class": {"n_anomalies": 10}},
        "models": {"bgad": {"class_path": "anomalib_bgad.Bgad", **model}},
    }
    with pytest.raises(SuiteError, match=f"model 'bgad': {message}"):
        validate_suite(suite)


def test_report_options_are_checked() -> None:
    with pytest.raises(SuiteError, match="unknown report 'speed'"):
        committed_suite("report=speed")
    with pytest.raises(SuiteError, match=r"time_to_accuracy\.reference names unknown model 'nope'"):
        committed_suite("time_to_accuracy.reference=nope")


# ------------------------------------------------------------------------------------------------------------
# Table and plot from a synthetic results.csv
# ------------------------------------------------------------------------------------------------------------
def synthetic_suite() -> dict:
    return validate_suite(
        {
            "suite": "tta",
            "title": "TTA",
            "report": "time_to_accuracy",
            "time_to_accuracy": {"reference": "ref", "compare_to": "patchcore", "highlight_budget_s": 20},
            "dataset": {"root": "r", "categories": ["brick", "grass"]},
            "seeds": [0, 1],
            "settings": {"multi_class": {"n_anomalies": 10}},
            "models": {
                "bgad": {"label": "BGAD", "class_path": "x.B", "budgets_s": [10, 20], "budget_seeds": {20: [0]}},
                "patchcore": {"label": "PatchCore", "class_path": "x.P"},
                "ref": {"label": "Reference", "class_path": "x.B", "max_epochs": 60, "seeds": [0]},
            },
        }
    )


SYNTHETIC = {
    # (model, budget): {(category, seed): (image AUROC, AUPRO, train s, epochs)}
    ("bgad", 10): {("brick", 0): (0.80, 0.60, 9, 2), ("grass", 0): (0.70, 0.50, 8, 2), ("brick", 1): (0.90, 0.70, 9, 2),
                   ("grass", 1): (0.80, 0.60, 10, 3)},
    ("bgad", 20): {("brick", 0): (0.95, 0.85, 19, 5), ("grass", 0): (0.90, 0.80, 18, 5)},
    ("patchcore", None): {("brick", 0): (0.85, 0.70, 4, 1), ("grass", 0): (0.75, 0.60, 4, 1),
                          ("brick", 1): (0.80, 0.60, 4, 1), ("grass", 1): (0.70, 0.50, 4, 1)},
    ("ref", None): {("brick", 0): (0.94, 0.84, 600, 60), ("grass", 0): (0.92, 0.82, 620, 60)},
}  # fmt: skip


def synthetic_frame(tmp_path: Path) -> pd.DataFrame:
    rows = []
    for (model, budget), cells in SYNTHETIC.items():
        for (category, seed), (image, pro, train, epochs) in cells.items():
            rows.append(
                {"key": f"{model}{budget}{category}{seed}", "model": model, "category": category, "seed": seed,
                 "setting": "multi_class", "n_anomalies": 10, "kind": "cell", "budget_s": budget, "status": "ok",
                 "image_AUROC": image, "pixel_AUROC": 0.9, "pixel_AUPRO": pro, "train_s": train, "epochs": epochs,
                 "device": "cpu, 2 threads"}
            )  # fmt: skip
    for category in ("brick", "grass"):
        rows.append(
            {"key": f"cal{category}", "model": "bgad", "category": category, "seed": 0, "setting": "multi_class",
             "n_anomalies": 10, "kind": "calibration", "status": "ok", "t_first_s": 4.0, "t_epoch_s": 3.0,
             "epoch_s": "[4.0, 3.0, 3.0]", "device": "cpu, 2 threads"}
        )  # fmt: skip
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    return report.read_results(tmp_path / "results.csv")


def test_summary_table_computes_means_reference_gap_and_paired_verdicts(tmp_path: Path) -> None:
    suite = synthetic_suite()
    table = time_to_accuracy.summary_table(synthetic_frame(tmp_path), suite).set_index("entry")
    assert list(table.index) == ["bgad@10s", "bgad@20s", "patchcore", "ref"]
    short = table.loc["bgad@10s"]
    # image AUROC per seed: (0.8 + 0.7) / 2 = 0.75, (0.9 + 0.8) / 2 = 0.85 -> 0.80 ± 0.0707; reference 0.93
    assert short["image_AUROC"] == pytest.approx(0.80) and short["image_AUROC_std"] == pytest.approx(0.0707, abs=1e-4)
    assert short["train_s"] == pytest.approx(9.0) and short["epochs"] == "2–3" and short["seeds"] == 2
    assert short["delta_image_AUROC"] == pytest.approx(-0.13) and not short["within"]
    # vs PatchCore, paired by seed: 0.75 - 0.80 = -0.05, 0.85 - 0.75 = +0.10 -> +0.025 ± 0.106: a tie
    assert short["vs_image_AUROC_diff"] == pytest.approx(0.025) and short["vs_image_AUROC_verdict"] == "tie"
    long = table.loc["bgad@20s"]
    # 0.925 vs 0.93 (image), 0.825 vs 0.83 (AUPRO): both within 0.01; seed 0 only: +0.125 over PatchCore
    assert long["delta_image_AUROC"] == pytest.approx(-0.005) and long["within"]
    assert long["vs_pixel_AUPRO_diff"] == pytest.approx(0.175) and long["vs_pixel_AUPRO_verdict"] == "wins"
    assert table.loc["ref", "within"] is None and table.loc["patchcore", "vs_image_AUROC_verdict"] == "n/a"

    markdown = time_to_accuracy.render_markdown(synthetic_frame(tmp_path), suite, {"command": "python -m x"})
    assert (
        "| BGAD | 10 s | 2–3 | 9 ± 1 | 2/2 | 0.800 ± 0.071 | 0.900 ± 0.000 | 0.600 ± 0.071 | -0.130 / -0.230 | no "
        in (markdown)
    )
    assert "| BGAD | 20 s | 5 | 18 ± 1 | 1/1 | 0.925 | 0.900 | 0.825 | -0.005 / -0.005 | yes | wins +0.125 / wins" in (
        markdown
    )
    assert "| BGAD, 20 s | 0.950 | 0.900 | **0.925** |" in markdown  # per-category table, image AUROC
    assert "| BGAD | grass | cpu, 2 threads | 4.0 | 3.0 | 4.0, 3.0, 3.0 | 10 s: 3, 20 s: 6 |" in markdown
    assert "trained on cpu, 2 threads" in markdown and "`python -m x`" in markdown


def test_a_missing_seed_is_flagged_and_a_failed_cell_listed(tmp_path: Path) -> None:
    frame = synthetic_frame(tmp_path)
    failed = frame["key"] == "bgad10grass1"
    frame["error"] = frame["error"].astype(object)
    frame.loc[failed, "status"] = "failed"
    frame.loc[failed, "error"] = "RuntimeError: boom"
    frame.loc[failed, "image_AUROC"] = math.nan
    markdown = time_to_accuracy.render_markdown(frame, synthetic_suite())
    expected = "| BGAD | 10 s | 2 | 9 ± 1 | 1/2 | 0.750 (n=1) | 0.900 (n=1) | 0.550 (n=1) | -0.180 / -0.280 | no | lose"
    assert expected in markdown
    assert "| `bgad10grass1` | RuntimeError: boom |" in markdown


def test_plot_is_written_from_a_synthetic_csv(tmp_path: Path) -> None:
    (path,) = time_to_accuracy.make_plots(synthetic_frame(tmp_path), synthetic_suite(), tmp_path / "plots")
    assert path.name == "time_to_accuracy.png" and path.stat().st_size > 20_000
    assert time_to_accuracy.make_plots(synthetic_frame(tmp_path).iloc[0:0], synthetic_suite(), tmp_path / "p") == []


# ------------------------------------------------------------------------------------------------------------
# End to end (slow): calibration, two budgets, PatchCore and the reference on a tiny generated tree
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_time_to_accuracy_suite_on_a_tiny_tree(tmp_path: Path) -> None:
    overrides = [
        f"dataset.root={tmp_path / 'data'}",
        "dataset.embedded={seed: 0, image_size: 64, n_train: 6, n_test_good: 3, n_test_per_defect: 2}",
        "dataset.categories=[brick, grass]",
        "dataset.args.num_workers=0",
        "dataset.args.train_batch_size=8",
        "dataset.args.eval_batch_size=8",
        "settings.multi_class.n_anomalies=2",
        "image_size=64",
        "threads=1",
        "seeds=[0, 1]",
        "models.bgad.seeds=[0]",
        "models.patchcore.seeds=[0, 1]",
        "models.bgad.init_args={coupling_blocks: 2}",
        "models.bgad.budgets_s=[1, 4]",
        "models.bgad.budget_seeds={}",
        "models.bgad_reference.max_epochs=2",
        "models.bgad_reference.init_args.coupling_blocks=2",
    ]
    args = ["--config", str(SUITE), "--models", "bgad,patchcore,bgad_reference", "--output", str(tmp_path / "out")]
    args += ["--work-dir", str(tmp_path / "work"), *(arg for item in overrides for arg in ("--set", item))]
    assert main(args) == 0
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    assert set(results["status"]) == {"ok"}
    calibrations = results[results["kind"] == "calibration"].set_index("category")
    assert sorted(calibrations.index) == ["brick", "grass"]
    assert (calibrations["t_epoch_s"] > 0).all() and calibrations["epochs"].eq(3).all()
    for category, cells in results[(results.model == "bgad") & (results.kind == "cell")].groupby("category"):
        calibration = Calibration(calibrations.loc[category, "t_first_s"], calibrations.loc[category, "t_epoch_s"])
        assert sorted(cells["budget_s"]) == [1, 4]
        for budget, epochs in zip(cells["budget_s"], cells["epochs"], strict=True):
            assert epochs == calibration.epochs_for(budget), "the cell trained the epochs its budget allows"
        assert len(json.loads(cells["epoch_s"].iloc[0])) == cells["epochs"].iloc[0]
    reference = results[results.model == "bgad_reference"]
    assert len(reference) == 2 and reference["epochs"].eq(2).all()
    tested = results[results["kind"] == "cell"]
    assert len(tested) == 4 + 2 * 2 + 2 and tested[list(report.METRICS)].apply(lambda c: c.between(0, 1)).all().all()
    # PatchCore: trained once per category, tested on the split of each seed (written with that seed).
    patchcore = results[results.model == "patchcore"]
    assert patchcore.groupby("category")["job_id"].nunique().eq(1).all() and sorted(set(patchcore.seed)) == [0, 1]
    for seed in (0, 1):
        manifest = json.loads((tmp_path / "out" / f"splits/brick/multi_class_n2/seed{seed}.json").read_text())
        assert manifest["seed"] == seed
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "## Accuracy after each training budget" in markdown and "## Calibration" in markdown
    assert "![time_to_accuracy](plots/time_to_accuracy.png)" in markdown
    assert (tmp_path / "out" / "plots" / "time_to_accuracy.png").stat().st_size > 20_000
    assert "| BGAD | 4 s |" in markdown and "| PatchCore | — | 1 |" in markdown
