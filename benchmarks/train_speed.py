"""Training speed of BGAD: seconds per epoch and milliseconds per image-epoch, on the CPU or a GPU.

Trains BGAD on one category of the embedded dataset with the demo's data settings (256 px, 10 known anomalies
twice per epoch plus 10 RPAG pseudo anomalies next to the 60 normal images: 90 images per epoch, batch 16) and
times every epoch (data loading included, validation off). The first epoch also computes the backbone features
that later epochs reuse, so it is reported apart.

Usage::

    python -m benchmarks.train_speed --device cpu --epochs 4
    python -m benchmarks.train_speed --device cuda --epochs 6 --init-args '{"fiber_batch_size": 16384}'
    # the 0.1.0 training loop: run from the 0.1.0 tree (``-m`` puts the working directory first on sys.path)
    cd <0.1.0 tree> && PYTHONPATH=<0.1.0 tree>:<this repo> python -m benchmarks.train_speed --legacy \
        --root <this repo>/datasets/embedded

Prints one JSON line (and appends it to ``--output`` if given).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def measure(args: argparse.Namespace) -> dict:
    import torch
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    from anomalib_bgad import Bgad
    from anomalib_bgad.data import FewAnomalyMVTecAD
    from benchmarks.epoch_clock import EpochClock

    torch.set_num_threads(args.threads)
    seed_everything(0)
    # 0.1.0 spelled the pseudo-anomaly ratio `pseudo_anomalies` (still accepted, with a FutureWarning).
    ratio = {"pseudo_anomalies": 1.0} if args.legacy else {"pseudo_anomaly_ratio": 1.0}
    datamodule = FewAnomalyMVTecAD(
        root=args.root,
        category=args.category,
        n_anomalies=10,
        repeat_anomalies=2,
        train_batch_size=16,
        eval_batch_size=16,
        num_workers=args.num_workers,
        seed=0,
        **ratio,
    )
    init_args = json.loads(args.init_args)
    model = Bgad(**init_args, visualizer=False, post_processor=False, evaluator=False)
    clock = EpochClock()
    engine = Engine(
        max_epochs=args.epochs,
        accelerator="gpu" if args.device == "cuda" else "cpu",
        devices=1,
        default_root_dir=Path(args.work),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[clock],
    )
    start = time.perf_counter()
    engine.fit(model, datamodule=datamodule)
    total = time.perf_counter() - start
    images = len(engine.trainer.train_dataloader.sampler)  # samples per epoch, pseudo anomalies included
    seconds = clock.seconds
    later = seconds[2:] if len(seconds) > 2 else seconds[1:]  # after phase 1 and the caching epoch
    return {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else f"cpu, {args.threads} threads",
        "legacy": args.legacy,
        "init_args": init_args,
        "images_per_epoch": images,
        "epoch_s": [round(s, 3) for s in seconds],
        "fit_s": round(total, 2),
        "ms_per_image_epoch_later": round(1000 * sum(later) / (len(later) * images), 2) if later else None,
        "ms_per_image_epoch_all": round(1000 * sum(seconds) / (len(seconds) * images), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--root", default="datasets/embedded")
    parser.add_argument("--category", default="brick")
    parser.add_argument("--init-args", default="{}", help="Bgad init args as JSON")
    parser.add_argument("--legacy", action="store_true", help="measure the 0.1.0 package (run from its tree)")
    parser.add_argument("--work", default="results/train_speed")
    parser.add_argument("--output", help="JSON-lines file to append the result to")
    args = parser.parse_args()
    import anomalib_bgad

    if args.legacy and anomalib_bgad.__version__ != "0.1.0":
        parser.error(
            f"--legacy, but anomalib_bgad {anomalib_bgad.__version__} is imported from {anomalib_bgad.__file__}: "
            "run from the 0.1.0 tree (see the usage in this module's docstring)."
        )
    if not Path(args.root, args.category).is_dir():
        from anomalib_bgad.embedded import generate_embedded_dataset

        generate_embedded_dataset(args.root, categories=[args.category])
    result = measure(args)
    line = json.dumps(result)
    print(line, flush=True)
    if args.output:
        with Path(args.output).open("a") as handle:
            handle.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
