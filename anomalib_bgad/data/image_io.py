"""Image and mask reading that handles 16-bit, grayscale and RGBA files.

anomalib's :func:`anomalib.data.utils.read_image` calls ``PIL.Image.convert("RGB")``, which clips
16-bit grayscale PNGs (PIL mode ``I;16``/``I``) to 255 instead of rescaling them: a 16-bit image
loads as an almost white picture. The readers here rescale high-bit-depth data to ``[0, 1]``,
stack grayscale to three channels, and drop the alpha channel of RGBA/LA images (the colour values
are kept as stored, as anomalib does). 16-bit RGB PNGs are already reduced to 8 bits per channel by
PIL and read as RGB.

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

# PIL modes that hold more than 8 bits per pixel in a single channel, and the value of "white".
_HIGH_BIT_DEPTH_MODES = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "I": 65535.0}


def _to_float_rgb(image: Image.Image) -> np.ndarray:
    """Convert a PIL image to a float32 ``(H, W, 3)`` array in ``[0, 1]``.

    Args:
        image (Image.Image): Opened PIL image of any mode.

    Returns:
        np.ndarray: RGB array in ``[0, 1]``.
    """
    if image.mode in _HIGH_BIT_DEPTH_MODES:
        array = np.asarray(image, dtype=np.float64) / _HIGH_BIT_DEPTH_MODES[image.mode]
        array = np.clip(array, 0.0, 1.0).astype(np.float32)
        return np.repeat(array[..., None], 3, axis=-1)
    if image.mode == "F":
        array = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
        return np.repeat(array[..., None], 3, axis=-1)
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def read_image(path: str | Path) -> TvImage:
    """Read an image as a float32 RGB tensor in ``[0, 1]``.

    Args:
        path (str | Path): Image file.

    Returns:
        TvImage: ``(3, H, W)`` float32 tensor.

    Raises:
        OSError: If the file cannot be decoded (e.g. truncated).
    """
    with Image.open(path) as image:
        array = _to_float_rgb(image)
    return TvImage(torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))))


def read_mask(path: str | Path) -> Mask:
    """Read a ground-truth mask: every pixel with a non-zero value (in any colour channel) is anomalous.

    Args:
        path (str | Path): Mask file (8/16-bit grayscale, RGB or RGBA; alpha is ignored).

    Returns:
        Mask: ``(H, W)`` uint8 mask with values 0/1, like anomalib's ``read_mask``.

    Raises:
        OSError: If the file cannot be decoded (e.g. truncated).
    """
    with Image.open(path) as image:
        single_channel = image.mode in _HIGH_BIT_DEPTH_MODES or image.mode in {"1", "L", "F"}
        array = np.asarray(image if single_channel else image.convert("RGB"))
    if array.ndim == 3:
        array = array.any(axis=-1)
    return Mask(torch.from_numpy(np.ascontiguousarray(array > 0)), dtype=torch.uint8)


def image_size(path: str | Path, decode: bool = True) -> tuple[int, int]:
    """Return ``(width, height)`` of an image, optionally decoding all of it to detect truncation.

    Args:
        path (str | Path): Image file.
        decode (bool): Decode the full pixel data (slow but catches truncated files).
            Defaults to ``True``.

    Returns:
        tuple[int, int]: Width and height in pixels.

    Raises:
        OSError: If the file is not a readable image (or, with ``decode``, is truncated).
    """
    with Image.open(path) as image:
        if decode:
            image.load()
        return image.size
