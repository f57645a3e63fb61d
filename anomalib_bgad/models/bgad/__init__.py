"""BGAD model for anomalib: torch model, loss, anomaly map and Lightning module."""

from .lightning_model import Bgad
from .loss import BgadLoss, LossMode
from .torch_model import BgadModel

__all__ = ["Bgad", "BgadLoss", "BgadModel", "LossMode"]
