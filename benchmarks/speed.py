"""Inference speed of BGAD against its backbone and anomalib's CFLOW, PatchCore and PaDiM (CPU).

All models run in one process and are timed **interleaved**: every round times one call of
every (model, batch size) entry in turn, so that the load of a shared machine affects all of them
alike; the table reports the median over rounds (and the minimum) in ms per image. The input is
a batch of real 256x256 RGB images (the embedded CC0 textures with synthetic defects), given to
each model's full anomalib forward (pre-processor -> model -> post-processor), like the exported
graph; the backbone floor is BGAD's frozen feature extractor alone on pre-processed images.

Also measured:

* peak RSS of a process that only loads BGAD and runs inference (eager and OpenVINO), in
  subprocesses so that each has its own high-water mark;
* BGAD training time per epoch (phase 1 and phase 2) on the same images;
* the OpenVINO precision question: FP32 (``INFERENCE_PRECISION_HINT=f32``) against the CPU
  plugin's default, an FP16-compressed IR, and a bfloat16 emulation in torch.

Usage:
    python -m benchmarks.speed                 # full run, writes benchmarks/results/speed/speed.{csv,md}
    python -m benchmarks.speed --rounds 3 --no-b6 --output /tmp/speed   # quicker
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

# Offline timm/Hugging Face for anomalib's models, set before anything imports huggingface_hub.
_HF_CACHE = Path(tempfile.mkdtemp(prefix="bgad_speed_hf_"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_CACHE"] = str(_HF_CACHE)

import argparse  # noqa: E402
import csv  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

from benchmarks.environment import machine_description, versions  # noqa: E402
from benchmarks.memory import peak_rss_mib  # noqa: E402
from benchmarks.timing import Entry, time_interleaved  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "speed"
IMAGE_SIZE = 256
LITE0 = "tf_efficientnet_lite0"
B6 = "tf_efficientnet_b6"
F32 = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}


def log(message: str) -> None:
    print(f"[speed {time.strftime('%H:%M:%S')}] {message}", flush=True)


SPEED_PACKAGES = (
    "anomalib-bgad",
    "torch",
    "anomalib",
    "timm",
    "FrEIA",
    "openvino",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "lightning",
)


def make_dataset(root: Path, n_train: int) -> Path:
    from anomalib_bgad.embedded import generate_embedded_dataset

    return generate_embedded_dataset(
        root,
        categories=["brick"],
        image_size=IMAGE_SIZE,
        n_train=n_train,
        n_test_good=4,
        n_test_per_defect=1,
    )


def load_images(paths: list[Path]):
    import torch
    from anomalib.data.utils import read_image

    return torch.stack([read_image(p, as_tensor=True) for p in paths])


def train_bgad(root: Path, work: Path, epochs: int):
    """Train BGAD (lite0, default architecture) for a few epochs: epoch times + a model with post-processing stats."""
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine

    from anomalib_bgad import Bgad
    from benchmarks.epoch_clock import EpochClock

    datamodule = MVTecAD(root=root, category="brick", train_batch_size=8, eval_batch_size=8, num_workers=0)
    model = Bgad(visualizer=False)
    clock = EpochClock()
    engine = Engine(
        max_epochs=epochs,
        default_root_dir=work / "train",
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
    )
    engine.fit(model, datamodule=datamodule)
    return model.eval(), clock.seconds, len(datamodule.train_data)


def fit_peer(model, images) -> None:
    """PatchCore/PaDiM: collect training embeddings and fit (memory bank / Gaussian)."""
    import torch

    model.model.train()
    with torch.no_grad():
        for chunk in images.split(8):
            model.model(model.pre_processor(chunk))
    model.fit()
    model.eval()


def export_openvino(module, work: Path, name: str) -> Path:
    path = module.to_openvino(work / f"ov_{name}")
    log(f"exported {name} to {path}")
    return path


def compile_openvino(path: Path, config: dict | None = None):
    import openvino as ov

    return ov.Core().compile_model(str(path), "CPU", config if config is not None else F32)


def build_entries(args: argparse.Namespace, work: Path, train_images, test_images, trained_bgad):
    """Models and timed calls; returns (entries, extra objects to keep alive)."""
    import torch
    from anomalib.models import Cflow, Padim, Patchcore

    from anomalib_bgad import Bgad

    entries: list[Entry] = []
    inputs = {batch: test_images[torch.arange(batch) % len(test_images)].contiguous() for batch in args.batch_sizes}
    pre_processed = {batch: trained_bgad.pre_processor(x) for batch, x in inputs.items()}

    def torch_call(module, x) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode():
                return module(x)

        return run

    def ov_call(compiled, x) -> Callable[[], object]:
        array = x.numpy()
        request = compiled.create_infer_request()
        return lambda: request.infer({0: array})

    models: dict[str, object] = {}
    # --- tf_efficientnet_lite0 (ImageNet weights, offline) ---
    models["bgad_lite0"] = trained_bgad
    models["bgad_lite0_ov"] = compile_openvino(export_openvino(trained_bgad, work, "bgad_lite0"))
    log("building CFLOW / PatchCore / PaDiM on tf_efficientnet_lite0")
    cflow = Cflow(backbone=LITE0, layers=[1, 2, 3], visualizer=False).eval()
    patchcore = Patchcore(backbone=LITE0, layers=[2, 3], visualizer=False)
    padim = Padim(backbone=LITE0, layers=[1, 2, 3], n_features=100, visualizer=False)
    for peer in (patchcore, padim):
        fit_peer(peer, train_images)
    models["patchcore_bank"] = int(patchcore.model.memory_bank.shape[0])
    for batch in args.batch_sizes:
        x, xp = inputs[batch], pre_processed[batch]
        entries += [
            Entry(
                LITE0, "backbone forward (floor)", "torch", batch, torch_call(trained_bgad.model.feature_extractor, xp)
            ),
            Entry(LITE0, "BGAD", "torch eager", batch, torch_call(trained_bgad, x)),
            Entry(LITE0, "BGAD", "OpenVINO f32", batch, ov_call(models["bgad_lite0_ov"], x)),
            Entry(LITE0, "CFLOW (anomalib)", "torch eager", batch, torch_call(cflow, x)),
            Entry(LITE0, "PatchCore (anomalib)", "torch eager", batch, torch_call(patchcore, x)),
            Entry(LITE0, "PaDiM (anomalib)", "torch eager", batch, torch_call(padim, x)),
        ]
    models["peers"] = (cflow, patchcore, padim)
    # --- tf_efficientnet_b6, the paper's backbone (random init: same compute) ---
    if args.b6:
        log("building BGAD / CFLOW on tf_efficientnet_b6 (random init)")
        torch.manual_seed(0)
        bgad_b6 = Bgad(backbone=B6, pre_trained=False, visualizer=False).eval()
        cflow_b6 = Cflow(backbone=B6, layers=[1, 2, 3], pre_trained=False, visualizer=False).eval()
        models["bgad_b6_ov"] = compile_openvino(export_openvino(bgad_b6, work, "bgad_b6"))
        models["b6"] = (bgad_b6, cflow_b6)
        for batch in args.batch_sizes:
            x, xp = inputs[batch], pre_processed[batch]
            entries += [
                Entry(B6, "backbone forward (floor)", "torch", batch, torch_call(bgad_b6.model.feature_extractor, xp)),
                Entry(B6, "BGAD", "torch eager", batch, torch_call(bgad_b6, x)),
                Entry(B6, "BGAD", "OpenVINO f32", batch, ov_call(models["bgad_b6_ov"], x)),
                Entry(B6, "CFLOW (anomalib)", "torch eager", batch, torch_call(cflow_b6, x)),
            ]
    return entries, models


def precision_report(trained_bgad, ov_path: Path, images, work: Path) -> dict[str, float | str]:
    """Max |difference| of normalised scores/maps against torch FP32 for OpenVINO settings and bf16/fp16 emulation."""
    import numpy as np
    import openvino as ov
    import torch

    with torch.inference_mode():
        reference = trained_bgad(images)
    ref_score, ref_map = reference.pred_score.numpy(), reference.anomaly_map.numpy()

    def diff(outputs: dict) -> tuple[float, float]:
        return (
            float(np.abs(outputs["pred_score"] - ref_score).max()),
            float(np.abs(outputs["anomaly_map"] - ref_map).max()),
        )

    def ov_outputs(compiled) -> dict:
        return {key.any_name: value for key, value in compiled(images.numpy()).items()}

    report: dict[str, float | str] = {}
    core = ov.Core()
    report["OpenVINO CPU plugin default inference precision"] = type_name(
        core.get_property("CPU", "INFERENCE_PRECISION_HINT")
    )
    for label, config in (
        ("OpenVINO f32 hint", F32),
        ("OpenVINO default", {}),
        ("OpenVINO bf16 hint", {"INFERENCE_PRECISION_HINT": "bf16"}),
    ):
        compiled = core.compile_model(str(ov_path), "CPU", config)
        report[f"{label}: precision used"] = type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
        report[f"{label}: score"], report[f"{label}: map"] = diff(ov_outputs(compiled))
    fp16_path = work / "fp16" / "model.xml"
    fp16_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(core.read_model(str(ov_path)), fp16_path, compress_to_fp16=True)
    (
        report["OpenVINO FP16-compressed IR (f32 compute): score"],
        report["OpenVINO FP16-compressed IR (f32 compute): map"],
    ) = diff(ov_outputs(core.compile_model(str(fp16_path), "CPU", F32)))
    for dtype in (torch.bfloat16, torch.float16):
        name = str(dtype).split(".")[-1]
        try:
            with torch.inference_mode(), torch.autocast("cpu", dtype=dtype):
                emulated = trained_bgad(images)
            outputs = {
                "pred_score": emulated.pred_score.float().numpy(),
                "anomaly_map": emulated.anomaly_map.float().numpy(),
            }
            (
                report[f"torch autocast {name} (convs/matmuls): score"],
                report[f"torch autocast {name} (convs/matmuls): map"],
            ) = diff(outputs)
        except RuntimeError as error:  # autocast dtype not supported on this build
            report[f"torch autocast {name}"] = f"n/a ({error})"
    report["score spread (max - min over images)"] = float(ref_score.max() - ref_score.min())
    return report


def type_name(element_type: object) -> str:
    get = getattr(element_type, "get_type_name", None)
    return get() if callable(get) else str(element_type)


def rss_probe(kind: str, backbone: str, ov_path: str | None, batches: list[int]) -> None:
    """Subprocess body: load one BGAD, run inference, print the peak RSS in MiB."""
    import torch

    x = {b: torch.rand(b, 3, IMAGE_SIZE, IMAGE_SIZE) for b in batches}
    if kind == "openvino":
        compiled = compile_openvino(Path(ov_path))
        for _ in range(2):
            for b in batches:
                compiled(x[b].numpy())
    else:
        from anomalib_bgad import Bgad

        module = Bgad(backbone=backbone, pre_trained=backbone == LITE0, visualizer=False).eval()
        with torch.inference_mode():
            for _ in range(2):
                for b in batches:
                    module(x[b])
    print(json.dumps({"peak_rss_mib": peak_rss_mib()}))


def measure_rss(kind: str, backbone: str, ov_path: Path | None, batches: list[int]) -> float:
    command = [sys.executable, "-m", "benchmarks.speed", "--rss-probe", kind, "--rss-backbone", backbone]
    if ov_path is not None:
        command += ["--rss-ov-path", str(ov_path)]
    command += ["--batch-sizes", *map(str, batches)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True, env=os.environ.copy())
    return float(json.loads(result.stdout.strip().splitlines()[-1])["peak_rss_mib"])


FLOOR = ("backbone forward (floor)", "torch")
TARGETS = (
    # (name, numerator, denominator, target, higher_is_better); ratio = time(numerator) / time(denominator)
    (
        "BGAD eager within 1.3x of its backbone",
        ("BGAD", "torch eager"),
        ("backbone forward (floor)", "torch"),
        1.3,
        False,
    ),
    ("BGAD >= 2x faster than anomalib CFLOW", ("CFLOW (anomalib)", "torch eager"), ("BGAD", "torch eager"), 2.0, True),
    ("BGAD OpenVINO >= 2x faster than BGAD eager", ("BGAD", "torch eager"), ("BGAD", "OpenVINO f32"), 2.0, True),
)


def ratio_rows(entries: list[Entry]) -> list[dict]:
    """Target ratios per (backbone, batch), from the medians and from the minima over rounds."""
    by_key = {(e.backbone, e.model, e.runtime, e.batch): e for e in entries}
    rows = []
    for backbone, batch in dict.fromkeys((e.backbone, e.batch) for e in entries):
        for name, numerator, denominator, target, higher_is_better in TARGETS:
            top, bottom = by_key.get((backbone, *numerator, batch)), by_key.get((backbone, *denominator, batch))
            if top is None or bottom is None:
                continue
            median, minimum = top.median / bottom.median, top.minimum / bottom.minimum
            rows.append({
                "backbone": backbone, "batch": batch, "target": name, "median": median, "min": minimum,
                "verdict": verdict(median, target, higher_is_better),
                "verdict_min": verdict(minimum, target, higher_is_better),
            })  # fmt: skip
    return rows


def call_times(entry: Entry) -> dict:
    """The raw per-call times (ms for the whole batch), for ``speed_raw.json``."""
    keys = ("backbone", "model", "runtime", "batch", "times_ms")
    return {key: getattr(entry, key) for key in keys}


def verdict(value: float, target: float, higher_is_better: bool) -> str:
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "missed"


def write_results(
    output: Path,
    entries: list[Entry],
    command: str,
    extra: dict,
) -> tuple[Path, Path]:
    output.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = output / "speed.csv", output / "speed.md"
    (output / "speed_raw.json").write_text(
        json.dumps({"command": command, **extra, "calls": [call_times(e) for e in entries]}, indent=1)
    )
    floors = {(e.backbone, e.batch): e.median for e in entries if e.model == "backbone forward (floor)"}
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([
            "backbone", "model", "runtime", "batch", "ms_per_image_median", "ms_per_image_min", "x_backbone", "rounds",
        ])  # fmt: skip
        for e in entries:
            writer.writerow([
                e.backbone, e.model, e.runtime, e.batch, f"{e.median:.2f}", f"{e.minimum:.2f}",
                f"{e.median / floors[(e.backbone, e.batch)]:.2f}", len(e.times_ms),
            ])  # fmt: skip
    ratios = ratio_rows(entries)
    lines = [
        "# BGAD inference speed (CPU)",
        "",
        f"Command: `{command}`",
        "",
        f"Date: {extra['date']}. Machine: {extra['machine']}. torch threads: {extra['threads']}. "
        "The machine is shared with other jobs: every round times all entries in turn (interleaved), the "
        "table gives the median over rounds (min in brackets), so ratios between rows are more reliable "
        "than absolute times. 1-minute load average before the timing and after each round: "
        + ", ".join(f"{load:.1f}" for load in extra["loads"])
        + " (2 = both cores busy).",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in extra["versions"].items()),
        "",
        f"Input: {IMAGE_SIZE}x{IMAGE_SIZE} RGB images in 0..1, through each model's full anomalib forward "
        "(pre-processor -> model -> post-processor), i.e. what the exported graph computes. Floor: BGAD's frozen "
        "backbone (timm `features_only`, out_indices (1, 2, 3), channels-last) on pre-processed images. "
        "OpenVINO: the IR from `Bgad.to_openvino` (dynamic batch), CPU plugin, "
        "`INFERENCE_PRECISION_HINT=f32`, `PERFORMANCE_HINT=LATENCY`. "
        f"PatchCore memory bank: {extra['patchcore_bank']} vectors (fitted on {extra['n_train']} images, "
        "coreset 0.1; it grows with the training set). PaDiM: n_features 100. CFLOW: anomalib defaults "
        "(fiber_batch_size 64, 8 coupling blocks). BGAD: 8 coupling blocks, condition 128 (paper). "
        "tf_efficientnet_b6 rows use random weights (`pre_trained=False`; same compute).",
        "",
        "| backbone | model | runtime | batch | ms / image | x backbone |",
        "|---|---|---|---:|---:|---:|",
    ]
    for e in entries:
        floor = floors[(e.backbone, e.batch)]
        lines.append(
            f"| {e.backbone} | {e.model} | {e.runtime} | {e.batch} | {e.median:.1f} ({e.minimum:.1f}) | "
            f"{e.median / floor:.2f} |"
        )
    lines += [
        "",
        "## Targets",
        "",
        "Ratio of the medians (verdict), and of the minima over rounds (the least contended run).",
        "",
        "| backbone | batch | target | ratio (median) | verdict | ratio (min) | verdict (min) |",
        "|---|---:|---|---:|---|---:|---|",
    ]
    for row in ratios:
        lines.append(
            f"| {row['backbone']} | {row['batch']} | {row['target']} | {row['median']:.2f}x | {row['verdict']} | "
            f"{row['min']:.2f}x | {row['verdict_min']} |"
        )
    lines += ["", "## Peak RSS in inference (separate process per row; target <= 2 GiB)", ""]
    lines += ["| process | peak RSS (MiB) | verdict |", "|---|---:|---|"]
    for name, value in extra["rss"].items():
        lines.append(f"| {name} | {value:.0f} | {verdict(value, 2048, higher_is_better=False)} |")
    lines += ["", "## Training time per epoch (BGAD, tf_efficientnet_lite0, 8 coupling blocks)", ""]
    lines.append(
        f"{extra['n_train']} training images of {IMAGE_SIZE}x{IMAGE_SIZE}, batch 8, fiber batch 4096, "
        "anomalib `MVTecAD` datamodule (normal images only), validation excluded."
    )
    lines += ["", "| epoch | phase | seconds | s / image |", "|---:|---|---:|---:|"]
    for index, seconds in enumerate(extra["epoch_seconds"]):
        phase = "1 (ML)" if index < 1 else "2 (ML + BG-SPP)"
        lines.append(f"| {index} | {phase} | {seconds:.1f} | {seconds / extra['n_train']:.2f} |")
    lines += ["", "## Precision (max absolute difference to torch FP32, normalised outputs in [0, 1])", ""]
    lines.append(
        "Model: the BGAD trained above (lite0), with the post-processor statistics from its validation pass; "
        f"{extra['precision_images']} test images. OpenVINO's CPU plugin uses bfloat16 by default only on CPUs "
        "with bf16 instructions (avx512_bf16/AMX); on others it runs f32 whatever the hint. The torch autocast rows "
        "emulate reduced-precision convolutions/matmuls (elementwise ops stay f32) as an estimate of what a "
        "bf16/fp16 device (bf16 CPU, Intel iGPU in f16) would change."
    )
    lines += ["", "| setting | value |", "|---|---|"]
    for name, value in extra["precision"].items():
        shown = f"{value:.2e}" if isinstance(value, float) else value
        lines.append(f"| {name} | {shown} |")
    lines.append("")
    md_path.write_text("\n".join(lines))
    return csv_path, md_path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--no-b6", dest="b6", action="store_false", help="skip the tf_efficientnet_b6 rows")
    parser.add_argument("--n-train", type=int, default=16, help="training images (BGAD epochs, PatchCore/PaDiM fit)")
    parser.add_argument("--epochs", type=int, default=2, help="BGAD training epochs (1 = phase 1 only)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--rss-probe", choices=["eager", "openvino"], help=argparse.SUPPRESS)
    parser.add_argument("--rss-backbone", default=LITE0, help=argparse.SUPPRESS)
    parser.add_argument("--rss-ov-path", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rss_probe:
        rss_probe(args.rss_probe, args.rss_backbone, args.rss_ov_path, args.batch_sizes)
        return 0
    started = time.perf_counter()
    command = "python -m benchmarks.speed " + shlex.join(sys.argv[1:] if argv is None else argv)
    import torch

    from anomalib_bgad.backbones import install_into_hf_cache

    install_into_hf_cache(LITE0, cache_dir=_HF_CACHE)
    work = Path(tempfile.mkdtemp(prefix="bgad_speed_"))
    log(f"work folder {work}; {machine_description()}; torch threads {torch.get_num_threads()}")
    root = make_dataset(work / "data", args.n_train)
    train_paths = sorted((root / "brick" / "train" / "good").glob("*.png"))
    test_paths = sorted((root / "brick" / "test").rglob("*.png"))[:8]
    train_images, test_images = load_images(train_paths), load_images(test_paths)

    log(f"training BGAD (lite0) for {args.epochs} epochs on {len(train_paths)} images")
    trained_bgad, epoch_seconds, n_train = train_bgad(root, work, args.epochs)
    log(f"epoch seconds: {[round(s, 1) for s in epoch_seconds]}")

    entries, models = build_entries(args, work, train_images, test_images, trained_bgad)
    log(f"timing {len(entries)} entries x {args.rounds} rounds (interleaved)")
    load_before = os.getloadavg()[0]
    loads = time_interleaved(entries, args.rounds, log=log)
    for e in entries:
        log(f"{e.backbone:22s} {e.model:26s} {e.runtime:13s} b{e.batch}: {e.median:8.1f} ms/img (min {e.minimum:.1f})")
    for row in ratio_rows(entries):
        log(f"{row['backbone']} b{row['batch']} {row['target']}: {row['median']:.2f}x ({row['min']:.2f}x min)")

    ov_lite0 = work / "ov_bgad_lite0" / "weights" / "openvino" / "model.xml"
    precision = precision_report(trained_bgad, ov_lite0, test_images, work)
    rss = {
        "BGAD lite0 torch eager": measure_rss("eager", LITE0, None, args.batch_sizes),
        "BGAD lite0 OpenVINO": measure_rss("openvino", LITE0, ov_lite0, args.batch_sizes),
    }
    if args.b6:
        rss["BGAD b6 torch eager"] = measure_rss("eager", B6, None, args.batch_sizes)
        rss["BGAD b6 OpenVINO"] = measure_rss(
            "openvino", B6, work / "ov_bgad_b6" / "weights" / "openvino" / "model.xml", args.batch_sizes
        )
    for name, value in rss.items():
        log(f"peak RSS {name}: {value:.0f} MiB")
    extra = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_description(),
        "threads": torch.get_num_threads(),
        "versions": versions(SPEED_PACKAGES, missing="n/a"),
        "patchcore_bank": models["patchcore_bank"],
        "n_train": n_train,
        "rss": rss,
        "epoch_seconds": epoch_seconds,
        "precision": precision,
        "precision_images": len(test_images),
        "loads": [load_before, *loads],
    }
    csv_path, md_path = write_results(args.output, entries, command, extra)
    log(f"wrote {csv_path} and {md_path} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
