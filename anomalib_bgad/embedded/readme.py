"""The ``README.md`` written into the root of every generated dataset, built from the generator's own constants."""

from __future__ import annotations

import inspect

from anomalib_bgad.embedded.defects import DEFECTS, EMBEDDED_DEFECT_TYPES, MASK_THRESHOLD
from anomalib_bgad.embedded.sources import (
    BRIGHTNESS_GAIN,
    BRIGHTNESS_OFFSET,
    CROP_SIZE,
    EMBEDDED_CATEGORIES,
    SOURCE_ORIGINS,
    TRAIN_FRACTION,
)
from anomalib_bgad.embedded.visibility import (
    DEFECT_AREA_RANGE,
    RING_WIDTH,
    SUBTLE_PERIOD,
    TEXTURE_STD_FLOOR,
    VISIBILITY_CLASSES,
)
from anomalib_bgad.embedded.writer import DEFECTS_COLUMNS, DEFECTS_FILENAME, GENERATOR_VERSION, METADATA_FILENAME

README_FILENAME = "README.md"
README_MARKER = "<!-- Written by anomalib_bgad.embedded"
"""First characters of a README this generator wrote (and may therefore replace)."""


def dataset_readme() -> str:
    """Return the dataset README: layout, sources and licence, defect types and the visibility rule.

    Returns:
        str: Markdown text that depends only on ``GENERATOR_VERSION`` and the generator's constants.
    """
    clear, subtle = VISIBILITY_CLASSES["clear"], VISIBILITY_CLASSES["subtle"]
    subtle_share = 100 / SUBTLE_PERIOD
    last = SUBTLE_PERIOD - 1
    classes = (
        f"| clear | `i % {SUBTLE_PERIOD} != {last}` | {100 - subtle_share:g} % | {clear[0]:.2f} to {clear[1]:.2f} |\n"
        f"| subtle | `i % {SUBTLE_PERIOD} == {last}` (003, 007, ...) | {subtle_share:g} % | "
        f"{subtle[0]:.2f} to {subtle[1]:.2f} |"
    )
    sources = "\n".join(
        f"| `{name}` | `skimage.data.{name}()` | {SOURCE_ORIGINS[name]} | CC0 1.0 |" for name in EMBEDDED_CATEGORIES
    )
    defects = "\n".join(
        f"| `{name}` | {inspect.getdoc(DEFECTS[name]).splitlines()[0]} | "
        f"{DEFECT_AREA_RANGE[name][0]}-{DEFECT_AREA_RANGE[name][1]} |"
        for name in EMBEDDED_DEFECT_TYPES
    )
    train_percent = round(100 * TRAIN_FRACTION)
    jitter = (
        f"gain {BRIGHTNESS_GAIN[0]:g}-{BRIGHTNESS_GAIN[1]:g} and offset "
        f"{BRIGHTNESS_OFFSET[0]:g}..{BRIGHTNESS_OFFSET[1]:g} grey levels"
    )
    layout = "\n".join(
        f"{path:<54}{what}"
        for path, what in (
            ("<root>/README.md", "this file"),
            ("<root>/<category>/train/good/000.png", "normal training images"),
            ("<root>/<category>/test/good/000.png", "normal test images"),
            ("<root>/<category>/test/<defect>/000.png", "defective test images"),
            ("<root>/<category>/ground_truth/<defect>/000_mask.png", "masks (255 = defect)"),
            (f"<root>/<category>/{DEFECTS_FILENAME}", "one row per defective image"),
            (f"<root>/<category>/{METADATA_FILENAME}", "the parameters that determine every file"),
        )
    )
    return f"""{README_MARKER} (generator version {GENERATOR_VERSION}); it replaces this file on every run. -->
# Embedded anomaly-detection dataset (real CC0 surfaces, synthetic defects)

Generated offline by `anomalib_bgad.embedded.generate_embedded_dataset` (command line:
`anomalib-bgad make-dataset --root <this folder>`), generator version {GENERATOR_VERSION}. It is **real
surfaces with synthetic defects**: a dataset for demos, smoke tests, CI and offline tutorials. It is not a
substitute for MVTec AD or any other benchmark, and numbers measured on it are not comparable to numbers
reported in papers.

## Layout (MVTec AD's, so `anomalib.data.MVTecAD` reads it unchanged)

```
{layout}
```

Images are 8-bit greyscale PNGs (like MVTec AD's grid, screw and zipper); anomalib converts them to RGB
on read. The image size, the seed and the number of images of each category are in its
`{METADATA_FILENAME}` (defaults: 256 px, 60 training images, 20 normal and 8 defective test images per
defect type). `{DEFECTS_FILENAME}` has the columns `{",".join(DEFECTS_COLUMNS)}`: the
visibility class, the measured visibility `V` and its two steps (below), the mask area in pixels and
where the crop was taken from the photograph (top-left corner, in photograph pixels).

## Sources and licence

| Category | Photograph | Origin | Licence |
|---|---|---|---|
{sources}

All three are 512x512 greyscale photographs shipped inside the scikit-image wheel; nothing is downloaded.
Every image is a {CROP_SIZE}x{CROP_SIZE} crop of its category's photograph, resized to the image size
(bicubic when enlarging, area filter when shrinking), flipped at random (and rotated by a multiple of 90
degrees for grass and gravel, which have no direction), with a brightness jitter of {jitter}.
Training crops come from the left {train_percent} % of the photograph and every test crop, normal or
defective, from the right {100 - train_percent} %: no test pixel was seen in training.

## Defect types

| Type | What it is | Mask area at 256 px |
|---|---|---|
{defects}

`cut_paste` takes its patch from one of the other two categories' photographs. A defect is blended into
its clean crop with a soft rim; pixels whose opacity is below {MASK_THRESHOLD:g} of its maximum stay untouched,
and the mask is **exactly the changed pixels**: a pixel is 255 in the mask if and only if its value differs
from the clean crop. Sizes scale with the image side (at side `s`, `k = s / 256`, the area bounds become
`low * min(k, k^2)` and `high * max(k, k^2)`, since lines stay at least one pixel thick).

## Visibility rule

Every defect's visibility is measured on the written image. A defect must stand out from the texture
around it *and* must have changed the surface it covers; `V` is the smaller of the two brightness steps,
in standard deviations of the surrounding texture:

    contrast = |mean(image[M]) - mean(image[R])|     step against the surroundings
    change   = |mean(image[M]) - mean(clean[M])|     step against the surface before the defect
    V = min(contrast, change) / max(std(image[R]), {TEXTURE_STD_FLOOR:g})

`M` is the mask, `clean` the crop before the defect and `R` the ring of pixels outside `M` within
{RING_WIDTH} px of it (Euclidean distance, at 256 px; `max(2, round({RING_WIDTH} * s / 256))` at side `s`). The ring
is untouched, so its statistics are the local texture's. The `change` term keeps a dark hole in a shadow or
a bright line on a bright stone from counting as visible; the standard deviation is floored at
{TEXTURE_STD_FLOOR:g} grey levels so that a defect on a flat patch still needs an absolute step. `{DEFECTS_FILENAME}`
lists `V` and both steps for every defective image.

Following MVTec AD's mix of mostly clearly visible and some subtle defects, each defect type's test image
with index `i` is

| Class | Which images | Share | Visibility `V` |
|---|---|---|---|
{classes}

The generator enforces the rule: it draws a target `V` uniformly in the class's range, draws the defect's
shape, position and polarity, and sets the defect's strength by bisection until the measured `V` of the
final 8-bit image reaches the target. A shape whose area is outside its range, or whose target cannot be
reached (for example a dark hole on an already dark spot), is drawn again. `V` counts brightness steps
only; `stain` also smooths the texture and `cut_paste` brings another texture's structure, so for those
two the number understates how much they stand out. The rule is about the data: it was not tuned by any
model's score.

## Determinism

The same parameters give byte-identical files. Every image has its own random stream derived from
`(seed, category, split, label, index)`, so a category's files do not depend on which other categories
are generated or in which order.
"""
