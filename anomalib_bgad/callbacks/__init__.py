"""Lightning callbacks that BGAD adds to every run (see :meth:`anomalib_bgad.Bgad.configure_callbacks`)."""

from .checkpoint_path_hint import CheckpointPathHint
from .epoch_log import EpochLog
from .prediction_table import PredictionTable

__all__ = ["CheckpointPathHint", "EpochLog", "PredictionTable"]
