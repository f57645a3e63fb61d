"""Quiet third-party logs during export: the ONNX optimiser's INFO chatter, not the user's warnings.

anomalib's CLI sets the root logger to INFO, so an ``anomalib export`` prints every INFO record of
torch's ONNX exporter stack: ``onnxscript``'s constant folding and rewrite rules and ``onnx_ir``'s
passes (``initializer_deduplication - INFO - Replaced initializer ...``), about 8,000 lines for
BGAD's 8 coupling blocks, among which the one line that says where the model was written is lost.
:func:`quiet_export_logs` raises those loggers to WARNING for the duration of the export; their
warnings and errors, and every other logger (anomalib's ``Exported model to ...``), are untouched.
A logger the user has given a level of its own keeps it.

Example:
    >>> import logging
    >>> with quiet_export_logs():
    ...     logging.getLogger("onnxscript.optimizer").isEnabledFor(logging.INFO)
    False
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

# Loggers of torch's dynamo ONNX exporter stack that log per-node INFO records.
EXPORT_CHATTER_LOGGERS = ("onnxscript", "onnx_ir")


@contextmanager
def quiet_export_logs(level: int = logging.WARNING) -> Iterator[None]:
    """Raise :data:`EXPORT_CHATTER_LOGGERS` to ``level`` while the block (or decorated function) runs.

    Only loggers without a level of their own (``NOTSET``, the default) are changed; their levels are
    restored afterwards, also when the block raises. Usable as a decorator: ``@quiet_export_logs()``.

    Args:
        level (int): Lowest level still emitted by those loggers. Defaults to ``logging.WARNING``.

    Yields:
        None
    """
    changed = [logging.getLogger(name) for name in EXPORT_CHATTER_LOGGERS]
    changed = [logger for logger in changed if logger.level == logging.NOTSET]
    for logger in changed:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger in changed:
            logger.setLevel(logging.NOTSET)
