"""One line per training epoch, and where the checkpoint went.

Lightning's progress bar redraws one terminal line, and a log file receives it only when training ends, so a long
``anomalib train`` whose output goes to a file looks hung. :class:`EpochLog` writes one line per epoch (epoch,
phase, training loss, seconds) and, when fitting ends, the path of the checkpoint that ``anomalib test``,
``predict`` and ``export`` take as ``--ckpt_path``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from lightning.pytorch import Callback, LightningModule, Trainer

logger = logging.getLogger(__name__)


class EpochLog(Callback):
    """Report each training epoch and, at the end of fitting, the checkpoint path.

    Args:
        label (str): Prefix of every line. Defaults to ``"BGAD"``.
        emit (Callable[[str], None] | None): Where the lines go; ``None``: this module's logger at INFO, which
            anomalib's CLI prints. Defaults to ``None``.
    """

    def __init__(self, label: str = "BGAD", emit: Callable[[str], None] | None = None) -> None:
        self.label = label
        self.emit = emit if emit is not None else logger.info
        self.start = 0.0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start the epoch's clock."""
        del trainer, pl_module
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """``<label>: epoch 3/12 (phase 2), loss 0.123, 14 s``; the phase only for models that have phases."""
        phase = getattr(pl_module, "in_phase2", None)
        phase_text = "" if phase is None else f" (phase {2 if phase else 1})"
        loss = trainer.callback_metrics.get("train_loss")
        loss_text = f", loss {float(loss):.3f}" if loss is not None else ""
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        seconds = time.perf_counter() - self.start
        self.emit(f"{self.label}: epoch {trainer.current_epoch + 1}{epochs}{phase_text}{loss_text}, {seconds:.0f} s")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Name the checkpoint written by this run (nothing when checkpointing is off or nothing was written)."""
        del pl_module
        callback = trainer.checkpoint_callback
        path = getattr(callback, "best_model_path", "") or getattr(callback, "last_model_path", "")
        if path:
            self.emit(f"{self.label}: checkpoint {path} (--ckpt_path for anomalib test, predict and export)")
