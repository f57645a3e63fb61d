"""The study runner's table: means over categories and seeds, partial cells said, failures listed."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from benchmarks import study as study_module
from benchmarks.study import done_keys, load_study, plan_jobs, render_report, split_rows

STUDY = Path(__file__).parents[1] / "benchmarks" / "studies" / "localisation.yaml"


def row(config: str, category: str, seed: int, value: float, setting: str = "multi_class") -> dict[str, str]:
    return {
        "config": config, "scoring": "mean", "setting": setting, "category": category, "seed": str(seed),
        "status": "ok", "image_AUROC": str(value), "pixel_AUROC": str(value), "pixel_AUPRO": str(value),
        "epochs": "12", "train_s": "100", "error": "",
    }  # fmt: skip


def table_line(report: str, config: str) -> str:
    return next(line for line in report.splitlines() if line.startswith(f"| {config} | mean |"))


def test_the_report_averages_categories_then_seeds_and_marks_partial_means() -> None:
    study = load_study(STUDY, ["seeds=[0, 1]"])
    full = [row("bgad", c, s, v + s / 10) for c, v in (("brick", 0.9), ("grass", 0.6), ("gravel", 0.3)) for s in (0, 1)]
    partial = [row("nfad", "brick", 0, 0.8), row("nfad", "gravel", 0, 0.4)]
    failed = [{**row("padim", "grass", 0, 0.0), "status": "failed", "error": "RuntimeError('boom')"}]
    failed += [{**row("bgad", "grass", 1, 0.0), "status": "failed", "error": "RuntimeError('killed, rerun')"}]
    report = render_report(study, full + partial + failed)

    # seed 0: mean 0.6, seed 1: mean 0.7 -> 0.650 ± 0.071 (sample std over the two seed means)
    assert "| 0.650 ± 0.071 |" in table_line(report, "bgad")
    assert "| 0.600 (2/3 categories) |" in table_line(report, "nfad")  # one seed: no ±; two categories: said
    assert "- padim / mean / multi_class / grass / seed 0: RuntimeError('boom')" in report
    assert "killed, rerun" not in report  # the failed bgad cell was run again and succeeded
    assert "## one_class" not in report  # no rows, no section


def test_effects_pair_each_candidate_with_the_baseline_on_the_cells_both_ran() -> None:
    study = load_study(STUDY, ["seeds=[0, 1]"])
    baseline = [row("bgad", c, s, 0.5 + s / 10) for c in ("brick", "grass") for s in (0, 1)]
    candidate = [row("bgad_tau0.2", "brick", 0, 0.6), row("bgad_tau0.2", "grass", 0, 0.3)]  # seed 0 only
    report = render_report(study, baseline + candidate)

    line = next(x for x in report.splitlines() if x.startswith("| multi_class | bgad_tau0.2 | mean |"))
    # Paired with seed 0 only (baseline 0.5 there), not with the two-seed mean 0.55: +0.1 and -0.2, mean -0.050.
    assert line.startswith("| multi_class | bgad_tau0.2 | mean | 0 | -0.050 | -0.050 | -0.050 |")
    assert "brick +0.100/+0.100/+0.100; grass -0.200/-0.200/-0.200" in line
    assert "| multi_class | bgad | mean |" not in report.split("## Effects")[1]  # the baseline is not its own row


def test_running_some_configurations_still_reports_all_of_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--configs`` limits what runs, not what the report shows; a configuration gone from the YAML goes last."""
    rows = [row("bgad", "brick", 0, 0.9), row("nfad", "brick", 0, 0.8), row("retired", "brick", 0, 0.7)]
    with (tmp_path / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    ran = []
    monkeypatch.setattr(study_module, "run_study", lambda study, output, parallel: ran.append(list(study["configs"])))

    study_module.main(["--config", str(STUDY), "--output", str(tmp_path), "--configs", "nfad"])

    assert ran == [["nfad"]]
    report = (tmp_path / "results.md").read_text()
    table = report.split("## multi_class")[1].split("## Effects")[0]
    configs = [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| ")]
    assert configs == ["| config", "| bgad", "| nfad", "| retired"]


def test_one_class_splits_name_the_seen_type_and_a_bad_setting_is_refused(tmp_path: Path) -> None:
    study = load_study(STUDY, ["seeds=[0]"])
    rows = split_rows(study, tmp_path)
    one_class = [r for r in rows if r["study_setting"] == "one_class"]
    assert {(r["category"], r["seen_defect_type"]) for r in one_class} == {
        ("brick", "crack"), ("grass", "stain"), ("gravel", "scratch"),
    }  # fmt: skip
    assert len(rows) == 6
    with pytest.raises(ValueError, match="unknown settings"):
        load_study(STUDY, ["configs.bgad.settings=[sweep]"])


def test_a_rerun_trains_again_only_for_the_scorings_a_cell_lacks(tmp_path: Path) -> None:
    """A scoring added to a configuration is measured on the cells that ran without it; complete cells are skipped."""
    study = load_study(STUDY, ["seeds=[0]", "configs.bgad.settings=[multi_class]"])
    rows = [r for r in split_rows(study, tmp_path) if r["study_setting"] == "multi_class"]
    ran = [{**row("bgad", c, 0, 0.9), "scoring": s} for c in ("brick", "grass", "gravel") for s in ("mean", "max")]
    ran += [{**row("bgad", "brick", 0, 0.9), "scoring": name} for name in ("probability", "sigma2", "sigma8")]
    ran += [{**row("bgad", "grass", 0, 0.9), "scoring": "probability", "status": "failed"}]
    ran += [{**row("patchcore", c, 0, 0.9), "scoring": "default"} for c in ("brick", "grass")]

    jobs = plan_jobs(study, rows, done_keys(ran), tmp_path)

    bgad = {job["category"]: list(job["scorings"]) for job in jobs if job["config"] == "bgad"}
    assert bgad == {"grass": ["probability", "sigma2", "sigma8"], "gravel": ["probability", "sigma2", "sigma8"]}
    patchcore = [(j["category"], [r["category"] for r in j["rows"]]) for j in jobs if j["config"] == "patchcore"]
    assert patchcore == [("gravel", ["gravel"])]  # train_once: one job per category that still lacks a split


def test_a_scoring_variant_sets_the_map_and_the_image_score_and_keeps_the_rest_of_the_models_own() -> None:
    from anomalib_bgad import Bgad
    from benchmarks.study import apply_scoring

    bgad = Bgad(coupling_blocks=2, pre_trained=False, sigma=2.0, level_aggregation="max", visualizer=False)
    apply_scoring(bgad, {"image_score_top_share": 0.05})
    assert bgad.model.image_score.top_share == 0.05
    assert bgad.model.anomaly_map_generator.level_aggregation == "max"
    assert bgad.model.anomaly_map_generator.blur.kernel.shape[-1] == 13  # sigma 2: 2 * ceil(3 * 2) + 1
    apply_scoring(bgad, {"level_aggregation": "probability"})
    assert bgad.model.image_score.top_share == 0.01  # each variant starts from the model's own settings (default)
    assert bgad.model.anomaly_map_generator.level_aggregation == "probability"
    with pytest.raises(ValueError, match=r"\['sigmaa'\] are not scoring settings"):
        apply_scoring(bgad, {"sigmaa": 3.0})


def test_peers_keep_their_own_scoring_and_refuse_a_variant() -> None:
    """PatchCore's torch model also has an ``anomaly_map_generator``; a study must not treat it as BGAD's."""
    from anomalib.models import Patchcore

    from benchmarks.study import apply_scoring

    patchcore = Patchcore(backbone="tf_efficientnet_lite0", layers=["blocks.2", "blocks.4"], pre_trained=False)
    generator = patchcore.model.anomaly_map_generator
    apply_scoring(patchcore, {})
    assert patchcore.model.anomaly_map_generator is generator
    with pytest.raises(ValueError, match="scoring variants apply to BGAD only; Patchcore"):
        apply_scoring(patchcore, {"sigma": 2.0})
