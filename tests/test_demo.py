"""The demo names what it generated and where each of its outputs went."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

TINY = {"image_size": 64, "n_train": 6, "n_test_good": 3, "n_test_per_defect": 2}


@pytest.mark.slow
def test_demo_prints_the_dataset_and_every_output_path(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from anomalib_bgad import demo

    generate = demo.generate_embedded_dataset
    monkeypatch.setattr(
        demo,
        "generate_embedded_dataset",
        lambda root, seed, categories: generate(root, seed=seed, categories=categories, **TINY),
    )
    monkeypatch.setattr(demo, "DEMO_N_ANOMALIES", 2)  # the tiny tree has 10 defective test images
    monkeypatch.setattr(demo, "DEMO_BATCH_SIZE", 4)
    monkeypatch.chdir(tmp_path)
    demo.run_demo(root="datasets/embedded", output="results/demo", categories=["brick"], max_epochs=1)
    printed = capsys.readouterr().out
    outputs = printed[printed.index("[demo] Outputs") :]

    assert re.search(r"dataset \(MVTec AD layout, generated now: brick\): datasets/embedded\n", outputs)
    assert "metrics: results/demo/metrics.md, results/demo/metrics.json" in outputs
    named = {}
    for line in outputs.splitlines():
        what, _, path = line.strip().partition(": ")
        if what in {"result images", "boundary histogram", "checkpoint", "split manifest"}:
            named[what] = tmp_path / path
    assert set(named) == {"result images", "boundary histogram", "checkpoint", "split manifest"}
    assert all(path.exists() for path in named.values())
    assert any(named["result images"].rglob("*.png"))

    demo.run_demo(root="datasets/embedded", output="results/demo", categories=["brick"], max_epochs=1)
    again = capsys.readouterr().out
    assert "dataset (MVTec AD layout, already there, reused): datasets/embedded" in again
    # The second run's outputs are named, not the first's.
    assert "/v1" in again[again.index("[demo] Outputs") :] and "/v0" not in again[again.index("[demo] Outputs") :]
