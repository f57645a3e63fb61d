"""Names of the pseudo-anomaly generators, the values of the datamodules' ``pseudo_anomaly_source``."""

RPAG = "rpag"
"""BGAD's copy-paste of augmented known anomalies onto normal images (:mod:`.rpag`)."""
SMOOTHBLEND = "smoothblend"
"""SPD's blend of a colour-jittered patch of a normal image back into it (:mod:`.smoothblend`)."""
BOTH = "both"
PSEUDO_ANOMALY_SOURCES = (RPAG, SMOOTHBLEND, BOTH)
"""Values of the datamodules' ``pseudo_anomaly_source``."""


def source_parts(source: str) -> tuple[str, ...]:
    """The generators of a ``pseudo_anomaly_source`` value: ``("rpag",)``, ``("smoothblend",)`` or both.

    Args:
        source (str): ``"rpag"``, ``"smoothblend"`` or ``"both"``.

    Returns:
        tuple[str, ...]: Generator names.

    Raises:
        ValueError: If ``source`` is none of :data:`PSEUDO_ANOMALY_SOURCES`.
    """
    if source not in PSEUDO_ANOMALY_SOURCES:
        msg = (
            f"pseudo_anomaly_source must be one of {list(PSEUDO_ANOMALY_SOURCES)}, got {source!r}: 'rpag' pastes "
            "augmented known anomalies on normal images, 'smoothblend' blends a colour-jittered patch of a normal "
            "image back elsewhere (needs no known anomaly), 'both' uses the two."
        )
        raise ValueError(msg)
    return (RPAG, SMOOTHBLEND) if source == BOTH else (source,)
