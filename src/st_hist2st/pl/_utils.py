from __future__ import annotations

import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

#: Backends that draw to files only; ``plt.show()`` there would only warn.
NON_INTERACTIVE = ("agg", "pdf", "pgf", "ps", "svg", "cairo", "template")


def save_figure(fig: Figure, save: str | Path | None) -> None:
    """Write ``fig`` to ``save`` when given, creating its folder."""
    if save is not None:
        save = Path(save)
        save.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save, dpi=150, bbox_inches="tight")


def finish_figure(
    fig: Figure, axes: Any, *, save: str | Path | None, show: bool | None, return_fig: bool
) -> Figure | Any | None:
    """Save, then show (returning nothing) or return the figure or the axes: scanpy's ``show``/``return_fig``."""
    save_figure(fig, save)
    if show is None:
        import scanpy as sc

        show = bool(sc.settings.autoshow)
    if show:
        if matplotlib.get_backend().lower() not in NON_INTERACTIVE:
            plt.show()
        return None
    return fig if return_fig else axes


def import_squidpy() -> ModuleType:
    """squidpy, without the notices its docstring templates raise at import (nothing a caller can act on)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=SyntaxWarning, module="docrep")
        import squidpy

    return squidpy
