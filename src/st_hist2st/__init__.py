"""Predict spatial gene expression from H&E histology with Hist2ST."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from st_hist2st import datasets, model, nn, pl, pp, tl
from st_hist2st._model import Hist2ST

try:
    __version__ = version("st-hist2st")
except PackageNotFoundError:  # pragma: no cover - not installed
    __version__ = "0.0.0"

__all__ = ["Hist2ST", "datasets", "nn", "pl", "pp", "tl", "__version__"]
