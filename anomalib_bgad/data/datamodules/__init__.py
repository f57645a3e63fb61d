"""The few-anomaly datamodules: anomalib's MVTec AD, BTAD, Folder and VisA datamodules with labeled defects in training.

* :mod:`.base`: the shared behaviour and the one declaration of the few-anomaly options;
* :mod:`.options`: their checks and renamed spellings;
* :mod:`.mvtecad`, :mod:`.btad`, :mod:`.folder`, :mod:`.visa`: one datamodule per format
  (:mod:`.layout`: the ``train``/``test``/``ground_truth`` layout; :mod:`.visa_cache`: VisA's processed copy);
* :mod:`.datasets`: anomalib's datasets read with :mod:`anomalib_bgad.data.image_io`;
* :mod:`.validation`: checks of the files on disk.
"""

from anomalib_bgad.data.datamodules.base import FewAnomalyDataModule
from anomalib_bgad.data.datamodules.btad import FewAnomalyBTAD
from anomalib_bgad.data.datamodules.folder import FewAnomalyFolder
from anomalib_bgad.data.datamodules.mvtecad import FewAnomalyMVTecAD
from anomalib_bgad.data.datamodules.visa import FewAnomalyVisa

__all__ = ["FewAnomalyBTAD", "FewAnomalyDataModule", "FewAnomalyFolder", "FewAnomalyMVTecAD", "FewAnomalyVisa"]
