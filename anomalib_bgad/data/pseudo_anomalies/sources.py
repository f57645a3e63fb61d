"""Names of the pseudo-anomaly generators, the values of the datamodules' ``pseudo_anomaly_source``."""

RPAG = "rpag"
"""BGAD's copy-paste of augmented known anomalies onto normal images (:mod:`.rpag`)."""
SMOOTHBLEND = "smoothblend"
"""SPD's blend of a colour-jittered patch of a normal image back into it (:mod:`.smoothblend`)."""
PERLIN = "perlin"
"""DRAEM's Perlin-noise blobs filled with an augmented texture (:mod:`.perlin`, ``perlin_texture``)."""
GENERATORS = (RPAG, SMOOTHBLEND, PERLIN)
"""Every generator, in the order a training epoch's pseudo indices take them."""
BOTH = "both"
"""Alias of ``rpag+smoothblend``."""
PSEUDO_ANOMALY_SOURCES = (RPAG, SMOOTHBLEND, PERLIN, BOTH, f"{RPAG}+{PERLIN}")
"""Common values of the datamodules' ``pseudo_anomaly_source``; any ``+``-joined set of :data:`GENERATORS` works."""


def source_parts(source: str) -> tuple[str, ...]:
    """The generators of a ``pseudo_anomaly_source`` value, in :data:`GENERATORS` order.

    Args:
        source (str): A generator name, ``+``-joined names (``"rpag+perlin"``), or ``"both"``
            (``rpag+smoothblend``).

    Returns:
        tuple[str, ...]: Generator names, e.g. ``("rpag", "perlin")``.

    Raises:
        ValueError: If ``source`` names no generator, an unknown one, or one twice.
    """
    names = (RPAG, SMOOTHBLEND) if source == BOTH else tuple(str(source).split("+"))
    unknown = [name for name in names if name not in GENERATORS]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if unknown or repeated:
        problem = f"unknown {unknown}" if unknown else f"named twice {repeated}"
        msg = (
            f"pseudo_anomaly_source must be one of {list(GENERATORS)} or several joined by '+' (e.g. 'rpag+perlin'; "
            f"'both' = 'rpag+smoothblend'), got {source!r} ({problem}; names are lower case): 'rpag' pastes "
            "augmented known anomalies on normal images, 'smoothblend' blends a colour-jittered patch of a normal "
            "image back elsewhere, 'perlin' blends an augmented texture into Perlin-noise blobs "
            "(the last two need no known anomaly)."
        )
        raise ValueError(msg)
    return tuple(name for name in GENERATORS if name in names)
