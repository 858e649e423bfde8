from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from st_hist2st._constants import Key
from st_hist2st._deprecation import renamed_arguments
from st_hist2st._utils import check_adata
from st_hist2st.pl._utils import finish_figure


def gene_correlation(
    adata: AnnData,
    key: str = Key.prediction,
    *,
    pearson_key: str | None = None,
    n_top: int = 10,
    ax: Axes | None = None,
    save: str | Path | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    **deprecated: Any,
) -> Axes | Figure | None:
    """Genes ranked by the Pearson r of their prediction, the best ones named.

    Parameters
    ----------
    adata
        Spots after :func:`st_hist2st.tl.evaluate`.
    key
        Layer with the predictions that were evaluated.
    pearson_key
        Column of ``var`` with r; default ``f'{key}_pearson'`` (``key_added`` of :func:`~st_hist2st.tl.evaluate`).
    n_top
        Number of best genes to name.
    ax
        Axes to draw on; default a new figure.
    save
        Write the figure to this file.
    show
        Show the figure (and return nothing), as scanpy's plots do; default scanpy's ``settings.autoshow``.
    return_fig
        Return the figure instead of the axes when not showing it.

    Returns
    -------
    Nothing when shown; else the figure with ``return_fig=True``, or the axes.
    """
    check_adata(adata)
    if key in adata.var and key not in adata.layers:  # the old meaning of `key`: the column of r
        warnings.warn(
            f"`gene_correlation(key={key!r})` names the column of r; that is `pearson_key=` now, and `key` names "
            "the predictions. The old meaning will be removed in the next release.",
            FutureWarning,
            stacklevel=2,
        )
        key, pearson_key = Key.prediction, key
    current = {"key": key}
    renamed_arguments("gene_correlation", deprecated, {"layer": "key"}, current)
    key = current["key"]
    pearson_key = f"{key}_pearson" if pearson_key is None else pearson_key
    if pearson_key not in adata.var:
        raise KeyError(f"`adata.var[{pearson_key!r}]` does not exist; run `hist2st.tl.evaluate(adata, {key!r})` first.")
    r = adata.var[pearson_key].dropna().sort_values(ascending=False)
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    ranks = np.arange(1, len(r) + 1)
    ax.plot(ranks, r.to_numpy(), color="0.3", lw=1.5)
    ax.axhline(0, color="0.7", lw=0.8, ls="--")
    top = r.iloc[:n_top]
    ax.scatter(ranks[:n_top], top.to_numpy(), color="C3", s=14, zorder=3)
    listing = "\n".join(f"{i + 1}. {gene}  {value:.2f}" for i, (gene, value) in enumerate(top.items()))
    ax.text(
        0.97, 0.97, listing, transform=ax.transAxes, ha="right", va="top", fontsize=8, color="C3", family="monospace"
    )
    ax.set_xlabel("gene rank")
    ax.set_ylabel("Pearson r (predicted vs observed)")
    ax.set_title(f"{len(r)} genes, mean r = {r.mean():.3f}")
    return finish_figure(ax.figure, ax, save=save, show=show, return_fig=return_fig)


def training_history(
    model: Any,
    *,
    ax: Axes | None = None,
    save: str | Path | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Axes | Figure | None:
    """Training losses and validation Pearson r per epoch.

    An epoch cut short (``max_time`` ran out) is left out: its losses average only the steps it ran.

    Parameters
    ----------
    model
        A trained :class:`~st_hist2st.Hist2ST` (or anything with a ``history`` DataFrame).
    ax
        Axes for the losses; validation r goes on a twin axis. Default a new figure.
    save
        Write the figure to this file.
    show
        Show the figure (and return nothing), as scanpy's plots do; default scanpy's ``settings.autoshow``.
    return_fig
        Return the figure instead of the axes when not showing it.

    Returns
    -------
    Nothing when shown; else the figure with ``return_fig=True``, or the axes of the losses.
    """
    history = getattr(model, "history", None)
    if history is None or len(history) == 0:
        raise ValueError("The model has no training history; train it with `hist2st.tl.fit` first.")
    if "complete" in history:  # histories saved before the column existed do not mark a cut epoch
        history = history[history["complete"].astype(bool)]
    if len(history) == 0:
        raise ValueError("The model's training stopped within its first epoch; there is no whole epoch to plot.")
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4))
    epochs = history["epoch"].to_numpy() + 1
    for k, column in enumerate(c for c in history.columns if c.startswith("train_") or c == "val_mse"):
        ax.plot(epochs, history[column], label=column.replace("_", " "), color=f"C{k}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    handles, labels = ax.get_legend_handles_labels()
    if "val_pearson" in history:
        twin = ax.twinx()
        twin.plot(epochs, history["val_pearson"], color="k", lw=2, label="validation r")
        twin.set_ylabel("validation mean Pearson r")
        h2, l2 = twin.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3, frameon=False)
    ax.set_title("training history")
    return finish_figure(ax.figure, ax, save=save, show=show, return_fig=return_fig)
