"""BGAD for anomalib: supervised anomaly detection with a few labeled defects.

Example:
    >>> from anomalib_bgad import Bgad
    >>> model = Bgad()  # doctest: +SKIP
"""

__version__ = "0.4.5"


def __getattr__(name: str):
    # Lazy so that ``import anomalib_bgad.data`` does not pull in the model stack.
    if name == "Bgad":
        from anomalib_bgad.models.bgad import Bgad

        return Bgad
    msg = f"module 'anomalib_bgad' has no attribute {name!r}"
    raise AttributeError(msg)


__all__ = ["Bgad"]
