"""Explain a ``--ckpt_path`` that is not a Lightning checkpoint (e.g. an exported ``model.xml``).

``anomalib test`` and ``anomalib predict`` load ``--ckpt_path`` with ``torch.load(weights_only=True)``.
Given an exported model instead (OpenVINO ``.xml``/``.bin``, ``.onnx``, anomalib's torch ``.pt``), that
fails with ``UnpicklingError: Weights only load failed ... Unsupported operand 60``, which names
neither the file nor the fix. :class:`CheckpointPathHint` adds both to the error: Lightning calls
``on_exception`` for any error raised inside ``trainer.test``/``predict``, including the checkpoint
restore, and the hint is attached as a note (shown under the traceback) when the error is an
:class:`pickle.UnpicklingError` for the file in ``trainer.ckpt_path``.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer

logger = logging.getLogger(__name__)

EXPORTED_SUFFIXES = {".xml": "OpenVINO IR", ".bin": "OpenVINO IR weights", ".onnx": "ONNX", ".pt": "torch export"}


def checkpoint_path_hint(path: str | Path) -> str:
    """The explanation for a ``--ckpt_path`` that could not be unpickled.

    Args:
        path (str | Path): The path given as ``--ckpt_path``.

    Returns:
        str: What the file is, what ``--ckpt_path`` takes instead, and how to run an exported model.
    """
    path = Path(path)
    kind = EXPORTED_SUFFIXES.get(path.suffix.lower())
    what = f"an exported model ({kind})" if kind else "not a Lightning checkpoint"
    return (
        f"--ckpt_path {path} is {what}. anomalib test/predict take the Lightning checkpoint written by training, "
        "<run folder>/weights/lightning/model.ckpt. To run an exported model, use "
        "anomalib.deploy.OpenVINOInferencer(path=..., device='CPU', config={'INFERENCE_PRECISION_HINT': 'f32'}) "
        "for .xml and .onnx files, or anomalib.deploy.TorchInferencer for .pt (README: 'Inference with the "
        "exported model')."
    )


class CheckpointPathHint(Callback):
    """Name the file and the fix when ``--ckpt_path`` is not a Lightning checkpoint."""

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Attach :func:`checkpoint_path_hint` to an ``UnpicklingError`` raised while restoring the checkpoint."""
        del pl_module
        path = trainer.ckpt_path
        if not path or not isinstance(exception, pickle.UnpicklingError):
            return
        hint = checkpoint_path_hint(path)
        if hasattr(exception, "add_note"):  # Python >= 3.11: printed with the traceback
            exception.add_note(hint)
        else:
            logger.error(hint)
