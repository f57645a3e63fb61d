"""Dispatched operators, host-device syncs and host time per optimiser step of BGAD training (torch profiler).

On a GPU, a training step whose arithmetic is small is bound by what the host does per step: Python, the
operators it dispatches (one or more kernel launches each) and the points where it waits for the device.
All three can be counted without a GPU: this tool trains ``anomalib_bgad.Bgad`` for a few batches through
anomalib's ``Engine`` (phase 1 and phase 2 epochs) on a tiny generated embedded tree and reports, per
optimiser step:

* **aten operators**: top-level dispatches (an ``aten::`` op not called by another one; what Python and the
  autograd engine dispatch) and all of them, nested ones included;
* **sync points**: operators that make the host wait for a CUDA device: ``aten::_local_scalar_dense``
  (``.item()``, ``bool()``, ``int()``, ``float()`` of a tensor), ``aten::is_nonzero``, ``aten::nonzero`` (also
  inside boolean-mask indexing), ``aten::masked_select``, ``aten::unique*``. Each is counted once, at its
  outermost call, split into those inside ``Optimizer.step`` and the rest (the training step). On CPU, Adam's
  per-parameter ``step`` counters are host tensors: its ``_local_scalar_dense`` calls are syncs only where
  those counters live on the device (``capturable=True``);
* **host time**: wall time of the training batches per step, and the part of it in which no aten operator
  was running (Python, Lightning, the autograd engine's bookkeeping). The profiler's own overhead is in both;
* on CUDA also **kernel launches** and the CUDA runtime's synchronising calls and device-to-host copies.

Optimiser steps are counted from the profiler's ``Optimizer.step#...`` events, so the numbers stay
comparable whatever the training loop does per batch. A second, unprofiled pass lists the Python call sites
that read tensor values to the host (``.item()``, ``bool()``, ``.tolist()``, ``.cpu()``, ``.to("cpu")``,
boolean indexing, ...), including the copies to the host that a CPU-only profile cannot see.

Usage::

    OMP_NUM_THREADS=2 python -m benchmarks.step_profile --label before            # CPU, Bgad's defaults
    python -m benchmarks.step_profile --label after --device cuda                 # also CUDA launches and syncs
    python -m benchmarks.step_profile --label small --init-args '{coupling_blocks: 4}' --batches 1

Every run is stored in ``benchmarks/results/step_profile/step_profile.json`` under its label and device
(replacing an earlier run with the same pair) and all runs are rendered side by side in ``step_profile.md``.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import shlex
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from anomalib_bgad.cli import positive_int
from benchmarks.environment import git_commit, machine_description, versions

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO_ROOT / "benchmarks" / "results" / "step_profile"
EPOCH_MARKER = "step_profile/epoch"
BATCH_MARKER = "step_profile/batch"
OPTIMIZER_STEP = "Optimizer.step#"
# Operators that wait for the device on CUDA, by the kind reported.
SYNC_OPS = {
    "aten::_local_scalar_dense": ".item()/bool()/int()/float()",
    "aten::item": ".item()/bool()/int()/float()",
    "aten::is_nonzero": "bool() (is_nonzero)",
    "aten::nonzero": "nonzero",
    "aten::nonzero_numpy": "nonzero",
    "aten::argwhere": "nonzero",
    "aten::masked_select": "masked_select",
    "aten::unique": "unique",
    "aten::_unique": "unique",
    "aten::_unique2": "unique",
    "aten::unique_dim": "unique",
    "aten::unique_consecutive": "unique",
}
BOOLEAN_INDEXING = "boolean-mask indexing"
INDEX_OPS = ("aten::index", "aten::index_put_", "aten::index_put", "aten::_index_put_impl_")
CUDA_LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch")
CUDA_SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
PACKAGES = ("torch", "lightning", "anomalib", "timm", "FrEIA")


# ------------------------------------------------------------------------------------------------------------
# Profile analysis (pure: works on any list of torch.autograd.profiler_util.FunctionEvent)
# ------------------------------------------------------------------------------------------------------------
def _ancestors(event: Any) -> Iterable[Any]:
    parent = event.cpu_parent
    while parent is not None:
        yield parent
        parent = parent.cpu_parent


def sync_kind(event: Any) -> str | None:
    """The sync kind of an event that is the outermost sync operator of its call chain, else ``None``."""
    kind = SYNC_OPS.get(event.name)
    if kind is None:
        return None
    ancestors = list(_ancestors(event))
    if any(parent.name in SYNC_OPS for parent in ancestors):
        return None  # counted at the outer sync operator (e.g. _local_scalar_dense inside is_nonzero)
    if kind == "nonzero" and ancestors and ancestors[0].name in INDEX_OPS:
        return BOOLEAN_INDEXING
    return kind


def _union_us(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of ``(start, end)`` intervals."""
    total, current_start, current_end = 0.0, None, None
    for start, end in sorted(intervals):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return total


def summarize_scope(events: Sequence[Any], scopes: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """Counts and times of ``events`` that start inside any of the ``scopes`` (``(start_us, end_us)``).

    Returns:
        dict[str, Any]: ``optimizer_steps``, ``aten_top``, ``aten_all``, ``syncs`` (kind -> count) and
        ``syncs_in_optimizer`` (kind -> count), ``wall_ms``, ``aten_busy_ms`` (union of the top-level aten
        operators' intervals, all threads), ``cuda_launches``, ``cuda_kernels``, ``cuda_sync_calls``,
        ``cuda_memcpy_dtoh``.
    """
    scopes = sorted(scopes)
    starts = [start for start, _ in scopes]

    def inside(event: Any) -> bool:
        index = bisect.bisect_right(starts, event.time_range.start) - 1
        return index >= 0 and event.time_range.start <= scopes[index][1]

    selected = [event for event in events if inside(event)]
    out: dict[str, Any] = {
        "optimizer_steps": 0,
        "aten_top": 0,
        "aten_all": 0,
        "syncs": Counter(),
        "syncs_in_optimizer": Counter(),
        "cuda_launches": 0,
        "cuda_kernels": 0,
        "cuda_sync_calls": 0,
        "cuda_memcpy_dtoh": 0,
    }
    busy = []
    for event in selected:
        name = event.name
        if name.startswith(OPTIMIZER_STEP):
            # An optimiser whose step calls its parent class's step records two nested events: count the outer.
            out["optimizer_steps"] += not any(parent.name.startswith(OPTIMIZER_STEP) for parent in _ancestors(event))
        elif name.startswith("aten::"):
            out["aten_all"] += 1
            ancestors = list(_ancestors(event))
            if not any(parent.name.startswith("aten::") for parent in ancestors):
                out["aten_top"] += 1
                busy.append((event.time_range.start, event.time_range.end))
            kind = sync_kind(event)
            if kind is not None:
                in_optimizer = any(parent.name.startswith(OPTIMIZER_STEP) for parent in ancestors)
                out["syncs_in_optimizer" if in_optimizer else "syncs"][kind] += 1
        elif name.startswith(CUDA_LAUNCHES):
            out["cuda_launches"] += 1
        elif name in CUDA_SYNCS:
            out["cuda_sync_calls"] += 1
        elif "DtoH" in name or "Device -> Pageable" in name or "Device -> Pinned" in name:
            out["cuda_memcpy_dtoh"] += 1
        elif str(getattr(event, "device_type", "")).endswith("CUDA"):
            out["cuda_kernels"] += 1
    out["wall_ms"] = sum(end - start for start, end in scopes) / 1000
    out["aten_busy_ms"] = _union_us(busy) / 1000
    out["syncs"] = dict(out["syncs"])
    out["syncs_in_optimizer"] = dict(out["syncs_in_optimizer"])
    return out


def summarize_profile(events: Sequence[Any], epochs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per training epoch: its phase and sample count (from ``epochs``) and :func:`summarize_scope` of its batches.

    Args:
        events (Sequence[Any]): The profiler's ``FunctionEvent`` list.
        epochs (Sequence[dict[str, Any]]): Per profiled epoch ``{"epoch", "phase", "samples", "batches"}``, in
            the order of the ``step_profile/epoch`` markers.
    """
    # With CUDA activities every record_function range also appears as a device-side event: keep the host ones.
    host = [e for e in events if str(getattr(e, "device_type", "CPU")).endswith("CPU")]
    markers = sorted((e for e in host if e.name.startswith(EPOCH_MARKER)), key=lambda e: e.time_range.start)
    batches = [(e.time_range.start, e.time_range.end) for e in host if e.name == BATCH_MARKER]
    if len(markers) != len(epochs):
        msg = f"The profile holds {len(markers)} epoch markers for {len(epochs)} epochs: the profile is incomplete."
        raise RuntimeError(msg)
    summaries = []
    for info, marker in zip(epochs, markers, strict=True):
        start, end = marker.time_range.start, marker.time_range.end
        scopes = [(s, e) for s, e in batches if start <= s <= end]
        summary = {**info, **summarize_scope(events, scopes), "epoch_wall_ms": (end - start) / 1000}
        if summary["optimizer_steps"] == 0:
            msg = f"No Optimizer.step event in epoch {info['epoch']}: is the model training anything?"
            raise RuntimeError(msg)
        summaries.append(summary)
    return summaries


# ------------------------------------------------------------------------------------------------------------
# Host reads from Python (second pass)
# ------------------------------------------------------------------------------------------------------------
VALUE_READS = {"item", "__bool__", "__int__", "__float__", "__index__", "tolist", "numpy", "cpu"}
SHAPE_DEPENDENT = {"nonzero", "masked_select", "unique", "argwhere", "unique_consecutive"}


def _is_boolean_index(index: Any) -> bool:
    import torch

    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(item, torch.Tensor) and item.dtype == torch.bool for item in items)


def read_kind(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> str | None:
    """The kind of host read a torch function call is, or ``None`` (see :class:`HostReadCounter`)."""
    if name in VALUE_READS:
        return f".{name}()" if not name.startswith("__") else f"{name.strip('_')}()"
    if name in SHAPE_DEPENDENT:
        return name
    if name in {"__getitem__", "__setitem__"} and len(args) > 1 and _is_boolean_index(args[1]):
        return BOOLEAN_INDEXING
    # Only an explicit "cpu": on a CPU run, .to(x.device) cannot be told from a copy to the host.
    if name == "to" and "cpu" in (*args[1:], kwargs.get("device")):
        return '.to("cpu")'
    return None


class HostReadCounter:
    """Count Python calls that read tensor values to the host, per epoch, by kind and call site, while ``active``.

    A ``TorchFunctionMode`` (entered with this object) sees every torch call made from Python; a global optimiser
    hook counts the optimiser steps taken while active. The call site is the innermost frame outside torch, e.g.
    ``anomalib_bgad/models/bgad/training_loop.py:100 (training_step)``. Whether a read waits for a GPU depends
    on where its tensor lives there, which a CPU run cannot tell.
    """

    def __init__(self) -> None:
        self.active = False
        self.epochs: list[Counter[tuple[str, str]]] = []
        self.steps: list[int] = []
        self._mode: Any = None
        self._hook: Any = None

    def start_epoch(self) -> None:
        """Count into a new epoch from now on."""
        self.epochs.append(Counter())
        self.steps.append(0)

    def __enter__(self) -> HostReadCounter:
        import torch
        from torch.optim.optimizer import register_optimizer_step_post_hook
        from torch.overrides import TorchFunctionMode

        counter = self
        torch_dir = str(Path(torch.__file__).parent)

        class _Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                if counter.active:
                    kind = read_kind(getattr(func, "__name__", ""), args, kwargs)
                    if kind is not None:
                        counter.epochs[-1][(kind, _call_site(torch_dir))] += 1
                return func(*args, **kwargs)

        def count_step(*_: Any) -> None:
            if counter.active:
                counter.steps[-1] += 1

        self._hook = register_optimizer_step_post_hook(count_step)
        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._mode.__exit__(*exc)
        self._hook.remove()


def _call_site(torch_dir: str) -> str:
    """``path:line (function)`` of the innermost caller outside torch, with the torch.optim line it went through."""
    frame = sys._getframe(2)
    via = ""
    while frame is not None and (
        frame.f_code.co_filename.startswith(torch_dir) or frame.f_code.co_filename == __file__
    ):
        if not via and f"{os.sep}optim{os.sep}" in frame.f_code.co_filename:
            via = f" via {_short_path(frame.f_code.co_filename)}:{frame.f_lineno}"
        frame = frame.f_back
    if frame is None:
        return "?"
    return f"{_short_path(frame.f_code.co_filename)}:{frame.f_lineno} ({frame.f_code.co_name}){via}"


def _short_path(path: str) -> str:
    for root in (str(REPO_ROOT) + os.sep, "site-packages" + os.sep):
        if root in path:
            return path.split(root, 1)[1]
    return path


# ------------------------------------------------------------------------------------------------------------
# The profiled training
# ------------------------------------------------------------------------------------------------------------
def _markers_callback(counter: HostReadCounter | None, device: str) -> Any:
    """A Lightning callback that marks epochs and batches in the profile and records each epoch's phase."""
    import torch
    from lightning.pytorch import Callback

    class ProfileMarkers(Callback):
        def __init__(self) -> None:
            self.epochs: list[dict[str, Any]] = []
            self._epoch = None
            self._batch = None

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            phase2 = getattr(pl_module, "in_phase2", None)
            if phase2 is None:
                phase2 = trainer.current_epoch >= int(pl_module.hparams.get("phase1_epochs", 0))
            self.epochs.append(
                {"epoch": trainer.current_epoch, "phase": 2 if phase2 else 1, "samples": 0, "batches": 0}
            )
            self._epoch = torch.autograd.profiler.record_function(f"{EPOCH_MARKER}{trainer.current_epoch}")
            self._epoch.__enter__()
            if counter is not None:
                counter.start_epoch()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.epochs[-1]["samples"] += int(batch.image.shape[0])
            self.epochs[-1]["batches"] += 1
            self._batch = torch.autograd.profiler.record_function(BATCH_MARKER)
            self._batch.__enter__()
            if counter is not None:
                counter.active = True

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if counter is not None:
                counter.active = False
            self._batch.__exit__(None, None, None)

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            if device == "cuda":
                torch.cuda.synchronize()  # the epoch's device work belongs to its wall time (outside any batch)
            self._epoch.__exit__(None, None, None)

    return ProfileMarkers()


def make_tree(root: Path, image_size: int, n_train: int) -> Path:
    """A one-category embedded tree: ``n_train`` normal training images, 15 defective test images (10 known)."""
    from anomalib_bgad.embedded import generate_embedded_dataset

    return generate_embedded_dataset(
        root, categories=["brick"], image_size=image_size, n_train=n_train, n_test_good=2, n_test_per_defect=3
    )


def train(args: argparse.Namespace, root: Path, work: Path, counter: HostReadCounter | None) -> tuple[Any, Any]:
    """One seeded training of ``--epochs`` epochs x ``--batches`` batches; returns the model and marker callback."""
    import torch
    from lightning.pytorch import seed_everything

    from anomalib_bgad.data import FewAnomalyMVTecAD
    from benchmarks.worker import build_engine, build_model

    torch.set_num_threads(args.threads)
    seed_everything(0, workers=True)
    spec = {"class_path": "anomalib_bgad.Bgad", "init_args": args.init_args}
    model = build_model({"model": spec, "image_size": args.image_size})
    datamodule = FewAnomalyMVTecAD(
        root=root,
        category="brick",
        n_anomalies=10,
        repeat_anomalies=2,
        pseudo_anomaly_ratio=1.0,
        train_batch_size=args.batch_size,
        eval_batch_size=args.batch_size,
        num_workers=0,
        seed=0,
    )
    markers = _markers_callback(counter, args.device)
    accelerator = "gpu" if args.device == "cuda" else "cpu"
    engine = build_engine(accelerator, args.epochs, work, [markers], limit_train_batches=args.batches)
    engine.fit(model, datamodule=datamodule)
    return model, markers


def profile_run(args: argparse.Namespace, root: Path, work: Path) -> list[dict[str, Any]]:
    """Pass 1: the profiled training, summarised per epoch."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    with profile(activities=activities) as profiler:
        _, markers = train(args, root, work / "profiled", None)
    return summarize_profile(profiler.events(), markers.epochs)


def host_read_run(args: argparse.Namespace, root: Path, work: Path) -> list[dict[str, Any]]:
    """Pass 2: the same training, unprofiled, counting Python host reads per call site, per epoch."""
    with HostReadCounter() as counter:
        _, markers = train(args, root, work / "host_reads", counter)
    return [
        {**info, "optimizer_steps": steps, "reads": [[kind, site, n] for (kind, site), n in reads.most_common()]}
        for info, steps, reads in zip(markers.epochs, counter.steps, counter.epochs, strict=True)
    ]


# ------------------------------------------------------------------------------------------------------------
# Results: JSON store and markdown
# ------------------------------------------------------------------------------------------------------------
def store_run(path: Path, run: dict[str, Any]) -> list[dict[str, Any]]:
    """Add ``run`` to the JSON file at ``path`` (replacing a run with the same label and device); all runs."""
    runs = json.loads(path.read_text())["runs"] if path.is_file() else []
    runs = [r for r in runs if (r["label"], r["device"]) != (run["label"], run["device"])] + [run]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps({"runs": runs}, indent=1) + "\n")
    os.replace(partial, path)
    return runs


def _per(value: float, count: float, digits: int = 1) -> str:
    return f"{value / count:.{digits}f}" if count else "—"


def _epoch_label(epoch: dict[str, Any]) -> str:
    return f"{epoch['epoch']} ({epoch['phase']})"


def epoch_line(epoch: dict[str, Any]) -> str:
    """One line of console output for an epoch's summary."""
    steps = epoch["optimizer_steps"]
    syncs, in_optimizer = sum(epoch["syncs"].values()), sum(epoch["syncs_in_optimizer"].values())
    return (
        f"epoch {_epoch_label(epoch)}: {steps} optimiser steps; per step {_per(epoch['aten_top'], steps)} top-level / "
        f"{_per(epoch['aten_all'], steps)} aten ops, {_per(syncs, steps, 2)} sync points "
        f"(+{_per(in_optimizer, steps, 2)} in the optimiser), {_per(epoch['wall_ms'], steps)} ms, of which "
        f"{_per(epoch['wall_ms'] - epoch['aten_busy_ms'], steps)} outside aten ops"
    )


def render_markdown(runs: Sequence[dict[str, Any]]) -> str:
    """All runs: settings, per-step counts and times per epoch, sync kinds and the host-read call sites."""
    out = [
        "# BGAD training: operators, host-device syncs and host time per optimiser step",
        "",
        "Written by `python -m benchmarks.step_profile` (see its docstring). A few training batches of "
        "`anomalib_bgad.Bgad` through anomalib's `Engine` on a generated embedded tree, profiled with "
        "`torch.profiler`; each row is one epoch (phase in brackets), counted over its training batches only "
        "(data loading excluded) and divided by the optimiser steps the profiler saw (`Optimizer.step#` events). "
        "*aten ops*: top-level dispatches / all, nested included. *sync points*: `.item()`/`bool()`/`int()`, "
        "`is_nonzero`, `nonzero` (also inside boolean-mask indexing), `masked_select`, `unique`, counted once at "
        "the outermost call; those inside `Optimizer.step` are listed apart (on CPU, Adam's per-parameter step "
        "counters: host tensors, no device sync unless `capturable=True`). *host ms*: wall time of the batches; "
        "*outside aten*: the part in which no aten operator ran (Python, Lightning, autograd bookkeeping). The "
        "profiler's overhead and other processes on the machine (load average) inflate both times; the counts do "
        "not depend on them. Work done once per epoch inside the last training step (BGAD 0.1.0's finiteness "
        "check of every flow weight) is spread over the few profiled steps, so it weighs more per step than in "
        "a full epoch.",
        "",
        "## Runs",
        "",
        "| run | device | settings | commit | date | machine | 1-min load average (start, end) |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        settings = run["settings"]
        text = (
            f"init args `{json.dumps(settings['init_args'])}`, {settings['image_size']} px, batch "
            f"{settings['batch_size']}, {settings['batches']} batch(es) x {settings['epochs']} epochs, "
            f"{settings['threads']} threads"
        )
        out.append(
            f"| {run['label']} | {run['device_name']} | {text} | {run['git_commit']} | {run['date']} "
            f"| {run['machine']} | {', '.join(f'{load:.1f}' for load in run.get('load_average', []))} |"
        )
    out.append("")
    for device in dict.fromkeys(run["device"] for run in runs):
        chosen = [run for run in runs if run["device"] == device]
        cuda = device == "cuda"
        header = (
            "| run | epoch (phase) | samples | optimiser steps | aten ops / step (top / all) "
            "| sync points / step (training step / optimiser) | host ms / step | outside aten ms / step "
            "| aten ops / sample (top) |"
        )
        if cuda:
            header += " CUDA launches / step | CUDA sync calls / step | DtoH copies / step |"
        out += [f"## Per optimiser step ({device})", "", header, "|---" * (header.count("|") - 1) + "|"]
        for run in chosen:
            for epoch in run["epochs"]:
                steps = epoch["optimizer_steps"]
                syncs = sum(epoch["syncs"].values())
                in_optimizer = sum(epoch["syncs_in_optimizer"].values())
                row = [
                    run["label"],
                    _epoch_label(epoch),
                    str(epoch["samples"]),
                    str(steps),
                    f"{_per(epoch['aten_top'], steps)} / {_per(epoch['aten_all'], steps)}",
                    f"{_per(syncs, steps, 2)} / {_per(in_optimizer, steps, 2)}",
                    _per(epoch["wall_ms"], steps),
                    _per(epoch["wall_ms"] - epoch["aten_busy_ms"], steps),
                    _per(epoch["aten_top"], epoch["samples"]),
                ]
                if cuda:
                    row += [
                        _per(epoch[key], steps, 2) for key in ("cuda_launches", "cuda_sync_calls", "cuda_memcpy_dtoh")
                    ]
                out.append("| " + " | ".join(row) + " |")
        out += ["", f"### Sync points by kind, per optimiser step ({device})", ""]
        out += ["| run | epoch (phase) | kind | training step | optimiser |", "|---|---|---|---|---|"]
        for run in chosen:
            for epoch in run["epochs"]:
                for kind in sorted(set(epoch["syncs"]) | set(epoch["syncs_in_optimizer"])):
                    steps = epoch["optimizer_steps"]
                    out.append(
                        f"| {run['label']} | {_epoch_label(epoch)} | {kind} "
                        f"| {_per(epoch['syncs'].get(kind, 0), steps, 2)} "
                        f"| {_per(epoch['syncs_in_optimizer'].get(kind, 0), steps, 2)} |"
                    )
        out.append("")
    for run in runs:
        if not run.get("host_reads"):
            continue
        epochs = run["host_reads"]
        out += [
            f"## Python reads of tensor values to the host: {run['label']} ({run['device']})",
            "",
            "Second, unprofiled pass of the same training: every torch call from Python that reads a tensor's "
            "value or copies it to the host, by call site, per optimiser step of the epoch. Each waits for the "
            "GPU when its tensor lives there (a CPU run cannot tell which do).",
            "",
            "| call site | kind | " + " | ".join(f"epoch {_epoch_label(e)}" for e in epochs) + " |",
            "|---|---|" + "---|" * len(epochs),
        ]
        sites: dict[tuple[str, str], dict[int, int]] = defaultdict(dict)
        for index, epoch in enumerate(epochs):
            for kind, site, count in epoch["reads"]:
                sites[(site, kind)][index] = count
        for (site, kind), counts in sorted(sites.items(), key=lambda item: -sum(item[1].values())):
            cells = [_per(counts.get(i, 0), e["optimizer_steps"], 2) for i, e in enumerate(epochs)]
            out.append(f"| `{site}` | {kind} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


# ------------------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------------------
def _mapping(text: str) -> dict[str, Any]:
    value = yaml.safe_load(text) if text.strip() else {}
    if not isinstance(value, dict):
        msg = f"--init-args must be a YAML/JSON mapping such as '{{coupling_blocks: 4}}', got {text!r}."
        raise argparse.ArgumentTypeError(msg)
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.step_profile", description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="latest", help="name of this run in the results (e.g. before, after)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--init-args", type=_mapping, default={}, help="Bgad init args as YAML/JSON (default: none)")
    parser.add_argument("--image-size", type=positive_int, default=256)
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--batches", type=positive_int, default=2, help="training batches per epoch")
    parser.add_argument("--epochs", type=positive_int, help="epochs (default: Bgad's phase 1 epochs + 2)")
    parser.add_argument("--n-train", type=positive_int, default=24, help="normal training images of the generated tree")
    parser.add_argument("--threads", type=positive_int, default=int(os.environ.get("OMP_NUM_THREADS", "2") or 2))
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="folder of step_profile.{json,md}")
    parser.add_argument("--no-host-reads", action="store_true", help="skip the second pass (host-read call sites)")
    return parser.parse_args(argv)


def default_epochs(init_args: dict[str, Any]) -> int:
    """Bgad's phase 1 epochs (from ``init_args`` or its default) plus two phase 2 epochs."""
    import inspect

    from anomalib_bgad import Bgad

    parameter = inspect.signature(Bgad).parameters.get("phase1_epochs")
    default = parameter.default if parameter is not None and parameter.default is not inspect.Parameter.empty else 1
    return int(init_args.get("phase1_epochs", default)) + 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run both passes, store the run and rewrite the markdown; returns the exit code."""
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but torch sees no CUDA device on this machine.", file=sys.stderr)
        return 2
    args.epochs = args.epochs or default_epochs(args.init_args)
    command = "python -m benchmarks.step_profile " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bgad_step_profile_") as folder:
        work = Path(folder)
        root = make_tree(work / "data", args.image_size, args.n_train)
        epochs = profile_run(args, root, work)
        host_reads = None if args.no_host_reads else host_read_run(args, root, work)
    run = {
        "label": args.label,
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else f"cpu, {args.threads} threads",
        "command": command,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git_commit": git_commit(),
        "machine": machine_description(),
        "versions": versions(PACKAGES),
        "settings": {
            "init_args": args.init_args,
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "batches": args.batches,
            "epochs": args.epochs,
            "threads": args.threads,
            "n_train": args.n_train,
        },
        "seconds": time.perf_counter() - started,
        "load_average": [load_before, os.getloadavg()[0]],
        "epochs": epochs,
        "host_reads": host_reads,
    }
    runs = store_run(args.output / "step_profile.json", run)
    (args.output / "step_profile.md").write_text(render_markdown(runs))
    for epoch in epochs:
        print(epoch_line(epoch), flush=True)
    print(f"Wrote {args.output / 'step_profile.md'} ({time.perf_counter() - started:.0f} s).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
