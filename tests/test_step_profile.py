"""benchmarks.step_profile: operator, sync-point and host-read counts per optimiser step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile

from benchmarks import step_profile
from benchmarks.step_profile import BATCH_MARKER, BOOLEAN_INDEXING, EPOCH_MARKER, HostReadCounter, read_kind

ITEM = step_profile.SYNC_OPS["aten::_local_scalar_dense"]
IS_NONZERO = step_profile.SYNC_OPS["aten::is_nonzero"]


class CheckedSGD(torch.optim.SGD):
    """SGD that reads one value to the host in every step (a sync inside ``Optimizer.step``)."""

    def step(self, closure=None):
        loss = super().step(closure)
        float(self.param_groups[0]["params"][0].detach().sum())
        return loss


def toy_training(steps: int) -> tuple[torch.profiler.profile, int]:
    """``steps`` optimiser steps of a linear model inside one epoch marker and one batch marker per step."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    # torch wraps a class's step in an Optimizer.step# event when the class's first instance is made: with an SGD
    # made first, CheckedSGD's step records two nested events, of which one optimiser step is counted.
    torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer = CheckedSGD(model.parameters(), lr=0.1)
    data = torch.randn(8, 4)
    with profile(activities=[ProfilerActivity.CPU]) as profiler, record_function(f"{EPOCH_MARKER}0"):
        float(data.sum())  # outside every batch: not counted
        for _ in range(steps):
            with record_function(BATCH_MARKER):
                scores = model(data).squeeze(1)
                kept = scores[scores > 0]  # boolean-mask indexing
                loss = (scores**2).mean() + 0 * kept.sum()
                if bool(torch.isfinite(loss)):  # is_nonzero
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                loss.item()
    return profiler, steps


def test_profile_counts_steps_operators_and_each_sync_once() -> None:
    profiler, steps = toy_training(3)
    (epoch,) = step_profile.summarize_profile(
        profiler.events(), [{"epoch": 0, "phase": 1, "samples": 8, "batches": steps}]
    )
    assert epoch["optimizer_steps"] == 3
    # Per step: one bool(), one .item() and two boolean-mask indexings (the index and, in backward, its
    # index_put_ with the same mask); the optimiser's float() is counted apart. The _local_scalar_dense inside
    # is_nonzero and the nonzero inside an index are not counted a second time.
    assert epoch["syncs"] == {BOOLEAN_INDEXING: 6, IS_NONZERO: 3, ITEM: 3}
    assert epoch["syncs_in_optimizer"] == {ITEM: 3}
    assert 0 < epoch["aten_top"] < epoch["aten_all"]
    assert 0 < epoch["aten_busy_ms"] <= epoch["wall_ms"] <= epoch["epoch_wall_ms"]
    assert epoch["cuda_launches"] == 0


def test_profile_without_steps_or_markers_is_an_error() -> None:
    profiler, _ = toy_training(1)
    with pytest.raises(RuntimeError, match="1 epoch markers for 2 epochs"):
        step_profile.summarize_profile(profiler.events(), [{"epoch": 0}, {"epoch": 1}])
    with (
        profile(activities=[ProfilerActivity.CPU]) as idle,
        record_function(f"{EPOCH_MARKER}0"),
        record_function(BATCH_MARKER),
    ):
        torch.ones(2).sum()
    with pytest.raises(RuntimeError, match=r"No Optimizer\.step event in epoch 0"):
        step_profile.summarize_profile(idle.events(), [{"epoch": 0}])


def test_read_kinds() -> None:
    values = torch.arange(4.0)
    assert read_kind("__bool__", (values,), {}) == "bool()"
    assert read_kind("item", (values,), {}) == ".item()"
    assert read_kind("__getitem__", (values, values > 1), {}) == BOOLEAN_INDEXING
    assert read_kind("__getitem__", (values, (slice(None), values > 1)), {}) == BOOLEAN_INDEXING
    assert read_kind("__getitem__", (values, 1), {}) is None
    assert read_kind("to", (values, "cpu"), {}) == '.to("cpu")'
    assert read_kind("to", (values,), {"device": torch.device("cpu")}) is None, "a device object may be the GPU"
    assert read_kind("add", (values, values), {}) is None


def test_host_read_counter_counts_active_reads_by_call_site_and_steps() -> None:
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    values = torch.tensor([1.0, -1.0])
    with HostReadCounter() as counter:
        bool(values.any())  # before the first epoch: nothing is counted
        counter.start_epoch()
        counter.active = True
        for _ in range(2):
            bool(values.any())
            values[values > 0].tolist()
            model(values).sum().backward()
            optimizer.step()
        counter.active = False
        values.item() if values.numel() == 1 else values.sum().item()
    assert counter.steps == [2]
    kinds = {kind: n for (kind, _), n in counter.epochs[0].items()}
    assert kinds == {"bool()": 2, BOOLEAN_INDEXING: 2, ".tolist()": 2}
    assert all(site.startswith("tests/test_step_profile.py:") for _, site in counter.epochs[0])


def fake_run(label: str, top: int) -> dict:
    epoch = {"epoch": 0, "phase": 1, "samples": 16, "batches": 1, "optimizer_steps": 4, "aten_top": top,
             "aten_all": 2 * top, "syncs": {ITEM: 8}, "syncs_in_optimizer": {}, "wall_ms": 40.0,
             "aten_busy_ms": 30.0, "cuda_launches": 0, "cuda_kernels": 0, "cuda_sync_calls": 0,
             "cuda_memcpy_dtoh": 0, "epoch_wall_ms": 50.0}  # fmt: skip
    settings = {"init_args": {}, "image_size": 64, "batch_size": 16, "batches": 1, "epochs": 1, "threads": 1}
    return {"label": label, "device": "cpu", "device_name": "cpu, 1 threads", "git_commit": "abc", "date": "d",
            "machine": "m", "settings": settings, "epochs": [epoch],
            "host_reads": [{**epoch, "reads": [[".item()", "x.py:1 (f)", 8]]}]}  # fmt: skip


def test_runs_are_stored_by_label_and_rendered_side_by_side(tmp_path: Path) -> None:
    path = tmp_path / "step_profile.json"
    step_profile.store_run(path, fake_run("before", 400))
    step_profile.store_run(path, fake_run("after", 40))
    runs = step_profile.store_run(path, fake_run("before", 200))  # replaces the first
    assert [run["label"] for run in runs] == ["after", "before"]
    assert json.loads(path.read_text())["runs"][1]["epochs"][0]["aten_top"] == 200
    markdown = step_profile.render_markdown(runs)
    assert "| after | 0 (1) | 16 | 4 | 10.0 / 20.0 | 2.00 / 0.00 | 10.0 | 2.5 | 2.5 |" in markdown
    assert "| before | 0 (1) | 16 | 4 | 50.0 / 100.0 | 2.00 / 0.00 | 10.0 | 2.5 | 12.5 |" in markdown
    assert "| `x.py:1 (f)` | .item() | 2.00 |" in markdown


@pytest.mark.slow
def test_step_profile_of_a_small_bgad(tmp_path: Path) -> None:
    argv = ["--label", "test", "--image-size", "64", "--init-args", "{coupling_blocks: 2}", "--batches", "1"]
    argv += ["--n-train", "8", "--threads", "1", "--output", str(tmp_path)]
    assert step_profile.main(argv) == 0
    (run,) = json.loads((tmp_path / "step_profile.json").read_text())["runs"]
    assert [epoch["phase"] for epoch in run["epochs"]] == [1, 2, 2], "Bgad's phase 1 epoch, then two of phase 2"
    for profiled, counted in zip(run["epochs"], run["host_reads"], strict=True):
        assert profiled["optimizer_steps"] > 0 and profiled["samples"] == 16
        assert counted["optimizer_steps"] == profiled["optimizer_steps"], "both passes take the same steps"
        assert profiled["aten_all"] > profiled["aten_top"] > 0
    markdown = (tmp_path / "step_profile.md").read_text()
    assert "## Per optimiser step (cpu)" in markdown and "| test | 2 (2) | 16 |" in markdown


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_step_profile_on_cuda_counts_kernel_launches(tmp_path: Path) -> None:
    argv = ["--label", "cuda", "--device", "cuda", "--image-size", "64", "--init-args", "{coupling_blocks: 2}"]
    argv += ["--batches", "1", "--n-train", "8", "--no-host-reads", "--output", str(tmp_path)]
    assert step_profile.main(argv) == 0
    (run,) = json.loads((tmp_path / "step_profile.json").read_text())["runs"]
    assert all(epoch["cuda_launches"] > epoch["optimizer_steps"] > 0 for epoch in run["epochs"])
