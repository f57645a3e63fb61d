"""Perlin pseudo anomalies: DRAEM's texture-wide blobs, made with anomalib's Perlin generator.

DRAEM (Zavrtanik et al., ICCV 2021) thresholds 2-D Perlin noise into irregular blobs anywhere in the image (one
large blob or up to a hundred small ones, elongated or round), and fills them with an augmented texture. Unlike
RPAG (pasted copies of the seen defect type) and SmoothBlend (a small patch), these regions follow no defect's
shape: they stand for the unseen types that differ from the normal texture anywhere and at any size.

The pieces are anomalib's (:mod:`anomalib.data.utils.generators.perlin`, used by its DRAEM and GLASS models):

* **Mask**: :func:`~anomalib.data.utils.generators.perlin.generate_perlin_noise` at a random scale of
  ``2**0 .. 2**5`` cells per side, rotated by ``PerlinAnomalyGenerator``'s random affine (-90 to 90 degrees),
  thresholded at ``0.5`` (DRAEM's threshold; the blobs cover about 2-12 % of the image). With a
  ``foreground`` (object categories) the mask is cut to it. A mask under 0.5 % of the image (or foreground) is
  drawn again, up to 10 times, then the noise's top 10 % on that region is taken (this project's choices).
* **Texture** (``perlin_texture``; DRAEM draws from DTD, which an offline machine does not have), changed by 3
  of ``PerlinAnomalyGenerator``'s augmenters (contrast, brightness, sharpness, hue/saturation, solarize,
  posterize, invert, AutoAugment, equalize, affine):

  * ``"normal_image"``: another normal image of the training set, resized to the image. On a texture it is often
    the same surface, so a blob can look normal (grass in grass) and still be pushed as an anomaly.
  * ``"noise"``: the Perlin noise itself, scaled to ``0.25 .. 0.75`` grey, which is what anomalib's
    ``PerlinAnomalyGenerator`` blends when it has no anomaly source. No surface has it.
* **Blend** (DRAEM, Eq. 1; anomalib's default factor range): ``out = (1 - m) * image + m * (beta * texture +
  (1 - beta) * image)`` with ``beta`` uniform in ``(0.2, 1.0)``.

anomalib's generator draws from torch's global random state; here it runs under
:func:`torch.random.fork_rng` seeded from the ``numpy.random.Generator`` passed in, so a sample is a pure
function of its inputs and that generator's seed, and the caller's torch random state is left untouched.

Example:
    >>> import numpy as np, torch
    >>> image, texture = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    >>> out, mask = generate_perlin(image, texture, np.random.default_rng(0))
    >>> bool(mask.any()), torch.equal(out[:, ~mask], image[:, ~mask])
    (True, True)
"""

from typing import Literal, get_args

import numpy as np
import torch
from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator, generate_perlin_noise
from torchvision.transforms.v2 import functional as tvf

THRESHOLD = 0.5
BLEND = (0.2, 1.0)
PerlinTexture = Literal["normal_image", "noise"]
"""Values of ``perlin_texture``: what fills the blobs (module docstring); a ``Literal``, so that anomalib's CLI
rejects any other at parsing."""
PERLIN_TEXTURES = get_args(PerlinTexture)
DEFAULT_PERLIN_TEXTURE: PerlinTexture = "noise"
"""Default ``perlin_texture`` since 0.4.4 (``"normal_image"`` before)."""
NOISE_FILL = (0.5, 0.25)
"""Scale and offset of the noise fill: ``0.5 * noise + 0.25`` (anomalib's, without an anomaly source)."""
MIN_SHARE = 0.005
"""Smallest share of the image (or of its foreground) a mask covers; smaller blobs are drawn again."""
FALLBACK_SHARE = 0.1
"""Share of the region taken, at the noise's highest values, when every draw stays below ``MIN_SHARE``."""
_ATTEMPTS = 10
_CPU = torch.device("cpu")


def check_perlin_texture(perlin_texture: str) -> None:
    """Raise ``ValueError`` naming the argument unless ``perlin_texture`` is one of :data:`PERLIN_TEXTURES`."""
    if perlin_texture not in PERLIN_TEXTURES:
        msg = (
            f"perlin_texture must be one of {list(PERLIN_TEXTURES)}, got {perlin_texture!r}: what fills the Perlin "
            "pseudo anomalies' blobs, 'normal_image' another normal training image, 'noise' the Perlin noise itself "
            "(anomalib's fill without an anomaly source)."
        )
        raise ValueError(msg)


def _mask(
    generator: PerlinAnomalyGenerator, height: int, width: int, foreground: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean ``(H, W)`` Perlin blob mask covering at least ``MIN_SHARE`` of the region, and its noise."""
    region = torch.ones(height, width, dtype=torch.bool)
    if foreground is not None and foreground.any():
        region = foreground
    smallest = MIN_SHARE * int(region.sum())
    for _ in range(_ATTEMPTS):
        noise = generate_perlin_noise(height, width, device=_CPU)
        noise = generator.perlin_rotation_transform(noise[None])[0]
        mask = region & (noise > THRESHOLD)
        if mask.sum() >= smallest:
            return mask, noise
    # Blobs that keep missing a small object: take the noise's highest values on it.
    cut = torch.quantile(noise[region], 1.0 - FALLBACK_SHARE)
    return region & (noise >= cut), noise


def generate_perlin(
    image: torch.Tensor,
    texture: torch.Tensor | None,
    rng: np.random.Generator,
    foreground: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend an augmented texture into ``image`` inside a thresholded Perlin-noise mask.

    Args:
        image (torch.Tensor): ``(3, H, W)`` float normal image in ``[0, 1]``.
        texture (torch.Tensor | None): ``(3, h, w)`` float image in ``[0, 1]`` (another normal image), resized
            to ``(H, W)``; ``None`` fills with the mask's own noise (``perlin_texture="noise"``).
        rng (np.random.Generator): Source of randomness (seeds anomalib's generator).
        foreground (np.ndarray | None): ``(H, W)`` boolean foreground (object categories): the mask stays on it.
            ``None``: anywhere. Defaults to ``None``.

    Returns:
        tuple[torch.Tensor, torch.Tensor]: The image with the blended blobs ``(3, H, W)`` in ``[0, 1]``, and
        the boolean mask ``(H, W)`` (never empty). Every pixel outside the mask equals ``image``'s.

    Raises:
        ValueError: If ``image`` or ``texture`` is not ``(3, H, W)``, or ``foreground`` has another size.
    """
    wrong_texture = texture is not None and (texture.ndim != 3 or texture.shape[0] != 3)
    if image.ndim != 3 or image.shape[0] != 3 or wrong_texture:
        shape = None if texture is None else tuple(texture.shape)
        msg = f"image and texture must be (3, H, W), got {tuple(image.shape)} and {shape}."
        raise ValueError(msg)
    height, width = image.shape[1:]
    fg = None
    if foreground is not None:
        if foreground.shape != (height, width):
            msg = f"foreground must be {(height, width)} like the image, got {foreground.shape}."
            raise ValueError(msg)
        fg = torch.from_numpy(np.asarray(foreground, dtype=bool))
    beta = float(rng.uniform(*BLEND))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(rng.integers(2**63 - 1)))
        generator = PerlinAnomalyGenerator()  # only its rotation and augmenters are used; the blend is below
        mask, noise = _mask(generator, height, width, fg)
        if texture is None:
            texture = (noise * NOISE_FILL[0] + NOISE_FILL[1])[None].repeat(3, 1, 1)
        elif texture.shape[1:] != image.shape[1:]:
            texture = tvf.resize_image(texture, [height, width], antialias=True)
        texture = generator.augmenters(texture.clamp(0.0, 1.0)).clamp(0.0, 1.0)
    blended = beta * texture + (1.0 - beta) * image
    return torch.where(mask, blended, image), mask
