"""The Hist2ST network (torch and torch-geometric modules), its losses and its Lightning training plan.

Users configure it through :class:`Architecture`, :class:`Training` and :data:`PRESETS`, and train it through
:class:`st_hist2st.Hist2ST` (the model: AnnData in and out); advanced users subclass :class:`Hist2STModule`
(the network) or :class:`Hist2STPlan` (one training step and its losses). The building blocks live in the
private submodules.
"""

from st_hist2st.nn._augment import random_stain_jitter
from st_hist2st.nn._colour_ridge import ColourRidge, patch_features
from st_hist2st.nn._losses import correlation_loss
from st_hist2st.nn._module import Architecture, Hist2STModule, Hist2STOutput
from st_hist2st.nn._plan import Hist2STPlan
from st_hist2st.nn._training import PRESETS, Training

__all__ = [
    "PRESETS",
    "Architecture",
    "ColourRidge",
    "Hist2STModule",
    "Hist2STOutput",
    "Hist2STPlan",
    "Training",
    "correlation_loss",
    "patch_features",
    "random_stain_jitter",
]
