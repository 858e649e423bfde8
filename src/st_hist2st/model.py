"""Deprecated: the network moved to :mod:`st_hist2st.nn`; :class:`st_hist2st.Hist2ST` is the model."""

from __future__ import annotations

import importlib
import warnings
from typing import Any

#: Where each name of the former ``st_hist2st.model`` lives now.
_MOVED = {
    "Architecture": "st_hist2st.nn._module",
    "Hist2STModule": "st_hist2st.nn._module",
    "Hist2STOutput": "st_hist2st.nn._module",
    "Hist2STPlan": "st_hist2st.nn._plan",
    "PRESETS": "st_hist2st.nn._training",
    "Training": "st_hist2st.nn._training",
    "Attention": "st_hist2st.nn._transformer",
    "Transformer": "st_hist2st.nn._transformer",
    "TransformerBlock": "st_hist2st.nn._transformer",
    "ConvMixerBlock": "st_hist2st.nn._convmixer",
    "PatchEncoder": "st_hist2st.nn._convmixer",
    "GraphJumpingKnowledge": "st_hist2st.nn._gnn",
    "GraphSAGE": "st_hist2st.nn._gnn",
    "ExpressionHead": "st_hist2st.nn._heads",
    "PassWeight": "st_hist2st.nn._heads",
    "ZINBHead": "st_hist2st.nn._heads",
    "SectionAugment": "st_hist2st.nn._augment",
    "random_stain_jitter": "st_hist2st.nn._augment",
    "correlation_loss": "st_hist2st.nn._losses",
    "distillation_loss": "st_hist2st.nn._losses",
    "distillation_teacher": "st_hist2st.nn._losses",
    "zinb_nll": "st_hist2st.nn._losses",
}


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module 'st_hist2st.model' has no attribute {name!r}")
    public = name in importlib.import_module("st_hist2st.nn").__all__
    warnings.warn(
        f"`st_hist2st.model` is now `st_hist2st.nn` (the network; `st_hist2st.Hist2ST` is the model): use "
        f"`{'st_hist2st.nn.' + name if public else _MOVED[name] + '.' + name}`. The old name will be removed in "
        "the next release.",
        FutureWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(_MOVED[name]), name)
