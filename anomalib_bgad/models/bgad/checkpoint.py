"""Checkpoints of BGAD: compatibility with the model they are loaded into, and the global RNG state.

anomalib's ``test`` and ``predict`` build the model from the command line first, then load the
checkpoint: a checkpoint made with another backbone, level set or flow depth must fail with a message that names
the mismatching init args and the fix, instead of a bare ``size mismatch`` or, worse, a silent mix.
Everything saved here is plain data and tensors, so checkpoints load with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import logging
import math
import random
from typing import Any

import numpy as np
import torch

from .boundary import map_legacy_state
from .image_score import DEFAULT_TOP_SHARE, ImageScore
from .numerics import check_finite_weights

TRAINING_STATE_KEY = "bgad_training_state"

logger = logging.getLogger(__name__)

# Init args that define the function computed from a checkpoint's weights: loading a checkpoint into a model
# built with other values fails (shape mismatch) or, worse, silently computes something else.
ARCHITECTURE_HPARAMS = (
    "backbone",
    "layers",
    "border_padding",
    "condition_vector",
    "coupling_blocks",
    "clamp_alpha",
    "permute_soft",
)
SCORING_HPARAMS = ("normalizer",)  # the stored boundary is in units of l / normalizer


def _same_hparam(saved: Any, current: Any) -> bool:
    """Compare a saved and a current init arg; sequences compare element-wise whatever their type."""
    if isinstance(saved, list | tuple) or isinstance(current, list | tuple):
        try:
            return [int(v) for v in saved] == [int(v) for v in current]
        except (TypeError, ValueError):
            return list(saved) == list(current)
    if isinstance(saved, float) or isinstance(current, float):
        try:
            return math.isclose(float(saved), float(current), rel_tol=1e-9, abs_tol=0.0)
        except (TypeError, ValueError):
            return False
    return saved == current


def _cli_value(value: Any) -> str:
    """Render an init arg as on anomalib's command line (``[1,2,3]`` for sequences)."""
    if isinstance(value, list | tuple):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def check_compatible(checkpoint: dict[str, Any], hparams: dict[str, Any], own: dict[str, torch.Tensor]) -> None:
    """Raise a clear error if a checkpoint's architecture differs from the model's.

    Args:
        checkpoint (dict[str, Any]): The loaded checkpoint (``hyper_parameters``, ``state_dict``).
        hparams (dict[str, Any]): The model's init args.
        own (dict[str, torch.Tensor]): The model's state dict entries under ``model.``.

    Raises:
        ValueError: Naming each mismatching init arg (and tensor shapes/names), with the command-line fix.
    """
    saved = checkpoint.get("hyper_parameters") or {}
    different = [
        key
        for key in (*ARCHITECTURE_HPARAMS, *SCORING_HPARAMS)
        if key in saved and key in hparams and not _same_hparam(saved[key], hparams[key])
    ]
    theirs = {key: value for key, value in (checkpoint.get("state_dict") or {}).items() if key.startswith("model.")}
    shapes = [
        f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}"
        for key, value in theirs.items()
        if key in own and torch.is_tensor(value) and value.shape != own[key].shape
    ]
    missing, unexpected = sorted(own.keys() - theirs.keys()), sorted(theirs.keys() - own.keys())
    if not different and not shapes and not (theirs and (missing or unexpected)):
        return
    lines = [f"  {key}: checkpoint {saved[key]!r}, this model {hparams[key]!r}" for key in different]
    if shapes:
        lines.append(f"  tensor shapes (checkpoint vs this model): {'; '.join(shapes[:3])}")
    if theirs and missing:
        lines.append(f"  {len(missing)} tensors of this model are not in the checkpoint, e.g. {missing[0]}")
    if theirs and unexpected:
        lines.append(f"  {len(unexpected)} tensors of the checkpoint are not in this model, e.g. {unexpected[0]}")
    fix = " ".join(f"--model.{key} {_cli_value(saved[key])}" for key in different) or (
        "the checkpoint's --model.backbone, --model.layers, --model.coupling_blocks, ... (no overrides)"
    )
    msg = (
        "This checkpoint does not fit the BGAD model it is loaded into (anomalib test and predict build the "
        "model from the command line first, then load the checkpoint):\n"
        + "\n".join(lines)
        + f"\nBuild the model with the checkpoint's settings: {fix}"
    )
    raise ValueError(msg)


def check_loadable(module: Any, checkpoint: dict[str, Any]) -> None:
    """For ``on_load_checkpoint``: map 0.1.0's state-dict keys in place, then :func:`check_compatible`.

    Args:
        module (Any): The :class:`~.lightning_model.Bgad` the checkpoint is loaded into.
        checkpoint (dict[str, Any]): The loaded checkpoint.

    Raises:
        ValueError: If the checkpoint was made with another backbone, level set or flow architecture.
    """
    map_legacy_state(checkpoint.get("state_dict") or {}, "model.")
    adopt_unpadded_checkpoint(module, checkpoint)
    adopt_maximum_image_score(module, checkpoint)
    own = {key: value for key, value in module.state_dict().items() if key.startswith("model.")}
    check_compatible(checkpoint, dict(module.hparams), own)


def made_before(checkpoint: dict[str, Any], init_arg: str) -> bool:
    """Whether ``checkpoint`` stores init args and ``init_arg`` is not among them: a version older than the arg."""
    saved = checkpoint.get("hyper_parameters")
    return bool(saved) and init_arg not in saved


def adopt_unpadded_checkpoint(module: Any, checkpoint: dict[str, Any]) -> None:
    """Score a checkpoint made before ``border_padding`` existed (0.2.0 and older) as it was trained: unpadded.

    Such checkpoints have no ``border_padding`` init arg, and ``anomalib export`` and ``load_from_checkpoint`` build
    the model from the checkpoint's init args plus today's defaults (32 px since 0.3.0). Padding changes what the
    weights compute, so the model adopts ``border_padding = 0`` (no weights depend on it) and logs a warning.

    Args:
        module (Any): The :class:`~.lightning_model.Bgad` the checkpoint is loaded into.
        checkpoint (dict[str, Any]): The loaded checkpoint.
    """
    if not made_before(checkpoint, "border_padding") or not module.hparams.get("border_padding"):
        return
    logger.warning(
        "This checkpoint was made before border_padding existed (anomalib_bgad 0.2.0 or older), so it was trained "
        "on unpadded images: it is scored with border_padding 0 instead of %s.",
        module.hparams["border_padding"],
    )
    module.model.feature_extractor.border_padding = 0
    module.hparams["border_padding"] = 0


def adopt_maximum_image_score(module: Any, checkpoint: dict[str, Any]) -> None:
    """Score a checkpoint made before ``image_score_top_share`` existed by its map's maximum, as it was validated.

    Such checkpoints (0.3.0 and older) have no ``image_score_top_share`` init arg and store an image threshold and
    score normalisation fitted to the map's maximum; today's default (the top 1 % mean, since 0.4.0) would keep their
    AUROC but shift their labels and normalised scores. A model built with the default adopts ``0`` and logs a
    warning; a value set on the command line is kept.

    Args:
        module (Any): The :class:`~.lightning_model.Bgad` the checkpoint is loaded into.
        checkpoint (dict[str, Any]): The loaded checkpoint.
    """
    if not made_before(checkpoint, "image_score_top_share"):
        return
    if module.hparams.get("image_score_top_share") != DEFAULT_TOP_SHARE:  # set on the command line: kept
        return
    logger.warning(
        "This checkpoint was made before image_score_top_share existed (anomalib_bgad 0.3.0 or older), so its image "
        "threshold was fitted to the anomaly map's maximum: it is scored with image_score_top_share 0 instead of %s "
        "(set --model.image_score_top_share and validate again to use another image score).",
        DEFAULT_TOP_SHARE,
    )
    module.model.image_score = ImageScore(0.0)
    module.hparams["image_score_top_share"] = 0.0


def add_training_state(module: Any, checkpoint: dict[str, Any]) -> None:
    """For ``on_save_checkpoint``: refuse non-finite weights, then add :func:`training_state` to the checkpoint.

    Raises:
        NonFiniteTrainingError: If the model's weights or boundary are non-finite (nothing is written).
    """
    check_finite_weights(checkpoint.get("state_dict", {}), module.guard)
    checkpoint[TRAINING_STATE_KEY] = training_state(module)


def rng_state() -> dict[str, Any]:
    """Global RNG states (torch CPU, numpy, Python) as plain data that loads under ``weights_only=True``."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached_gaussian)],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def training_state(module: Any) -> dict[str, Any]:
    """A :class:`~.lightning_model.Bgad`'s training state outside the state dict, for ``on_save_checkpoint``.

    The epoch's boundary sums and step counters (so that a run resumed mid-epoch still averages the whole epoch),
    the non-finite counters, and the global RNG states: plain data and tensors that load with ``weights_only``.
    """
    return {
        "boundary": module.model.boundary.training_state(),
        "guard": module.guard.training_state(),
        **module.epoch_record.state(),
        "epoch_nonfinite_fibers": module.nonfinite_fibers.count,
        "rng": rng_state(),
    }


def restore_training_state(module: Any, checkpoint: dict[str, Any], resuming: bool) -> None:
    """Restore what :func:`add_training_state` saved; with ``resuming`` (a fit from ``ckpt_path``) the RNG streams too.

    0.1.0 checkpoints hold another training state: nothing is restored from them (they resume at an epoch start).
    """
    state = checkpoint.get(TRAINING_STATE_KEY)
    if not state or "guard" not in state:
        return
    module.model.boundary.load_training_state(state["boundary"])
    module.guard.load_training_state(state["guard"])
    module.epoch_record.load(state, module.device)
    module.nonfinite_fibers.count = state["epoch_nonfinite_fibers"]
    # Lightning builds the first train iterator right after on_load_checkpoint: continuing the global RNG streams
    # (e.g. a RandomSampler's shuffle) makes the resumed run draw what the interrupted one would have.
    if resuming and "rng" in state:
        set_rng_state(state["rng"])
