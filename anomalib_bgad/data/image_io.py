"""The project's one image and mask reader: training, validation, test, pseudo anomalies and prediction.

anomalib's :func:`anomalib.data.utils.read_image` calls ``PIL.Image.convert("RGB")``, which clips 16-bit
grayscale images (PIL modes ``I;16``/``I``) to 255: a 16-bit image loads as an almost white picture. Every path
of this project reads with :func:`read_image` instead (the few-anomaly datasets, the pseudo anomalies and
:class:`anomalib_bgad.data.PredictDataset`), so a file gives the same tensor in training and at deployment.

Images (:func:`read_image`, float32 RGB in ``[0, 1]``), by PIL mode:

* ``1``, ``L`` (1- and 8-bit grayscale): value / 255 (``1``: 0 or 1), repeated to three channels;
* ``I;16`` and its byte orders (16-bit grayscale PNG, TIFF, PGM): value / 65535;
* ``I`` (32-bit signed integer TIFF, or 16-bit data PIL widened): value / 65535 when every value lies in
  ``0..65535``; any other value is refused (:class:`ImageReadError`, naming the file, the range and the fix);
* ``F`` (32-bit float): used as is when every value lies in ``[0, 1]``; anything else (raw sensor units, NaN)
  is refused, since no rescaling rule is right for every camera;
* ``P`` (palette): the palette's colours; ``LA``, ``RGBA``, ``PA`` and palettes with transparency: the colour
  values as stored, alpha dropped (as anomalib does); ``RGB``; ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: converted
  to RGB by PIL; all / 255;
* 16-bit colour (RGB/RGBA PNG or TIFF): PIL keeps the high byte of each channel, so they are read at 8 bits.

Masks (:func:`read_mask`, a pixel is a defect or not), one rule (:data:`MASK_RULE`, recorded in the split
manifest): where the mask has an alpha channel that varies, a pixel is a defect when its alpha is at least half
its range (a paint layer over transparency); otherwise, in a lossy file (JPEG, WebP, JPEG 2000) when one of its
channels is at least half the range (compression noise around a defect is dropped); otherwise (PNG, BMP, TIFF,
...) when one of its channels is non-zero (so VisA's instance masks 1, 2, ... and faint 16-bit values count).

Example:
    >>> from anomalib_bgad.data.image_io import read_image, read_mask
    >>> image = read_image("image.png")  # doctest: +SKIP
    >>> image.shape, image.dtype  # doctest: +SKIP
    (torch.Size([3, 256, 256]), torch.float32)
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.tv_tensors import Image as TvImage
from torchvision.tv_tensors import Mask

SIXTEEN_BIT_MAX = 65535.0
_UNSIGNED_16_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
_ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}
LOSSY_FORMATS = frozenset({"JPEG", "MPO", "WEBP", "JPEG2000"})
"""PIL formats whose masks are thresholded at half the range (their compression adds faint values)."""

MASK_RULE = (
    "anomalib_bgad-1: alpha >= half its range where the mask's alpha varies; else, in lossy files (JPEG, WebP, "
    "JPEG 2000), any channel >= half its range; else any channel non-zero"
)
"""The mask rule of :func:`read_mask`, as recorded in split manifests."""

FLOAT_TOLERANCE = 1e-6
"""Float images may exceed ``[0, 1]`` by this much (rounding); the excess is clipped."""


class ImageReadError(ValueError):
    """An image whose pixel values have no defined reading (names the file and the fix)."""


def _range_text(array: np.ndarray) -> str:
    finite = array[np.isfinite(array)]
    if finite.size == 0:
        return "no finite value"
    text = f"values {finite.min():g}..{finite.max():g}"
    return text + (" and NaN/inf" if finite.size < array.size else "")


def value_problem(image: Image.Image) -> str | None:
    """Why an opened image's values cannot be read by :func:`read_image`, or ``None`` if they can.

    Only modes ``I`` (32-bit integer) and ``F`` (float) can hold values without a reading.

    Args:
        image (Image.Image): Opened PIL image.

    Returns:
        str | None: The problem and its fix, for an error message.
    """
    if image.mode == "I":
        array = np.asarray(image)
        if array.size and (array.min() < 0 or array.max() > SIXTEEN_BIT_MAX):
            return (
                f"32-bit integer pixels ({_range_text(array)}) outside 0..65535 have no defined scale. Save the "
                "image as 16-bit (values 0..65535) or 8-bit, or as float in [0, 1]"
            )
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float32)
        finite = np.isfinite(array).all()
        if array.size and (not finite or array.min() < -FLOAT_TOLERANCE or array.max() > 1.0 + FLOAT_TOLERANCE):
            return (
                f"float pixels must lie in [0, 1] ({_range_text(array)} found): raw sensor units have no scale that "
                "is right for every camera. Divide by the sensor's full-scale value (e.g. 4095 for 12-bit) and save "
                "as float in [0, 1], or save as 16-bit integers"
            )
    return None


def _to_float_rgb(image: Image.Image, path: str | Path) -> np.ndarray:
    problem = value_problem(image)
    if problem is not None:
        msg = f"Cannot read image '{path}': {problem}."
        raise ImageReadError(msg)
    if image.mode in _UNSIGNED_16_BIT_MODES or image.mode == "I":
        gray = np.asarray(image, dtype=np.float64) / SIXTEEN_BIT_MAX
    elif image.mode == "F":
        gray = np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0)
    elif image.mode in {"1", "L"}:
        gray = np.asarray(image.convert("L"), dtype=np.float64) / 255.0
    else:
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")  # PIL asks for this step before dropping the transparency
        return np.asarray(image.convert("RGB"), dtype=np.float32) / np.float32(255.0)
    return np.repeat(gray.astype(np.float32)[..., None], 3, axis=-1)


def read_image(path: str | Path) -> TvImage:
    """Read an image as a float32 RGB tensor in ``[0, 1]`` (rules in the module docstring).

    Args:
        path (str | Path): Image file.

    Returns:
        TvImage: ``(3, H, W)`` float32 tensor.

    Raises:
        ImageReadError: If the pixel values have no defined reading (32-bit integers beyond 16 bits, float
            outside ``[0, 1]``); the message names the file and the fix.
        OSError: If the file cannot be decoded (e.g. truncated).
    """
    with Image.open(path) as image:
        array = _to_float_rgb(image, path)
    return TvImage(torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))))


def _mask_array(image: Image.Image) -> np.ndarray:
    """Boolean ``(H, W)`` defect mask of an opened mask image under :data:`MASK_RULE`."""
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in _ALPHA_MODES:
        bands = np.asarray(image.convert("RGBA" if image.mode != "LA" else "LA"))
        alpha = bands[..., -1]
        if alpha.min() != alpha.max():
            return alpha >= 128
        array = bands[..., :-1]
    elif image.mode in {"1", "L", "F", "I"} or image.mode in _UNSIGNED_16_BIT_MODES:
        array = np.asarray(image)
    else:
        array = np.asarray(image.convert("RGB"))
    if array.ndim == 3:
        array = array.max(axis=-1)
    if image.format in LOSSY_FORMATS:
        full_scale = 1.0 if array.dtype.kind in "fb" else float(np.iinfo(array.dtype).max)
        return array >= full_scale / 2
    return array > 0


def read_mask(path: str | Path) -> Mask:
    """Read a ground-truth mask under :data:`MASK_RULE` (module docstring).

    Args:
        path (str | Path): Mask file (1/8/16-bit grayscale, palette, RGB or RGBA; PNG, BMP, TIFF, JPEG, ...).

    Returns:
        Mask: ``(H, W)`` uint8 mask with values 0/1, like anomalib's ``read_mask``.

    Raises:
        OSError: If the file cannot be decoded (e.g. truncated).
    """
    with Image.open(path) as image:
        mask = _mask_array(image)
    return Mask(torch.from_numpy(np.ascontiguousarray(mask)), dtype=torch.uint8)


def image_size(path: str | Path, decode: bool = True) -> tuple[int, int]:
    """Return ``(width, height)`` of an image, optionally decoding all of it to detect truncation.

    With ``decode``, an image whose values :func:`read_image` refuses (float outside ``[0, 1]``, 32-bit
    integers beyond 16 bits) is refused here too, so that setup reports it before training.

    Args:
        path (str | Path): Image file.
        decode (bool): Decode the full pixel data (slow but catches truncated files and refused values).
            Defaults to ``True``.

    Returns:
        tuple[int, int]: Width and height in pixels.

    Raises:
        OSError: If the file is not a readable image (or, with ``decode``, is truncated).
        ImageReadError: With ``decode``, if its values have no defined reading.
    """
    with Image.open(path) as image:
        if decode:
            image.load()
            problem = value_problem(image)
            if problem is not None:
                msg = f"Cannot read image '{path}': {problem}."
                raise ImageReadError(msg)
        return image.size
