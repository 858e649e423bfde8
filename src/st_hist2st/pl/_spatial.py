from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from st_hist2st._constants import Key
from st_hist2st._utils import check_adata, get_libraries
from st_hist2st.pl._utils import save_figure
from st_hist2st.tl._evaluate import observed_targets, pearson_columns


def _default_img_key(adata: AnnData, library_id: str) -> str | None:
    images = adata.uns.get(Key.spatial, {}).get(library_id, {}).get(Key.images, {})
    for key in ("lowres", "hires", *images):
        if key in images and f"tissue_{key}_scalef" in adata.uns[Key.spatial][library_id].get(Key.scalefactors, {}):
            return key
    return None


def spatial_pred(
    adata: AnnData,
    genes: str | Sequence[str],
    layer: str = Key.prediction,
    library_id: str | None = None,
    img_key: str | None = None,
    *,
    library_key: str | None = Key.library,
    counts_layer: str | None = None,
    cmap: str = "viridis",
    size: float = 1.3,
    ax: Sequence[Axes] | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Observed next to predicted expression on the tissue, one row per gene, with a shared colour scale.

    The observed counts are transformed as the model's targets; each row's title gives the gene's Pearson r in
    the library. Drawn with :func:`scanpy.pl.spatial` over the H&E image.

    Parameters
    ----------
    adata
        Spots with raw counts, predictions in ``layers[layer]`` and images in ``uns['spatial']``.
    genes
        Gene or genes to show.
    layer
        Layer with the predictions.
    library_id
        Library to show; default the first.
    img_key
        Image under the spots: ``'lowres'`` or ``'hires'`` when present.
    library_key
        Column of ``obs`` with the section of each spot.
    counts_layer
        Layer with the raw counts; ``None`` uses ``X``.
    cmap
        Colour map.
    size
        Spot size relative to ``spot_diameter_fullres``.
    ax
        Two axes per gene (observed, predicted); default a new figure.
    save
        Write the figure to this file.

    Returns
    -------
    matplotlib.figure.Figure
        The figure.
    """
    import scanpy as sc

    check_adata(adata)
    genes = [genes] if isinstance(genes, str) else list(genes)
    libs = get_libraries(adata, library_key)
    library_id = str(libs.cat.categories[0]) if library_id is None else library_id
    if library_id not in libs.cat.categories:
        raise ValueError(f"Unknown `library_id={library_id!r}`; libraries: {list(libs.cat.categories)}.")
    idx = (libs == library_id).to_numpy()
    # the targets are normalised within each spot, so the library's own spots are all that is needed
    observed = observed_targets(adata[idx], layer, counts_layer)
    missing = [g for g in genes if g not in observed.columns]
    if missing:
        raise KeyError(f"No predictions in `layers[{layer!r}]` for {missing}.")
    img_key = _default_img_key(adata, library_id) if img_key is None else img_key
    sub = AnnData(
        X=np.asarray(adata[idx, genes].layers[layer], dtype=np.float32),
        obs=pd.DataFrame({"library": pd.Categorical([library_id] * int(idx.sum()))}, index=adata.obs_names[idx]),
        var=pd.DataFrame(index=genes),
        obsm={Key.spatial: np.asarray(adata.obsm[Key.spatial])[idx]},
        uns={Key.spatial: {library_id: adata.uns[Key.spatial][library_id]}},
    )
    sub.layers["observed"] = observed.loc[sub.obs_names, genes].to_numpy(np.float32)
    r, _ = pearson_columns(sub.X.astype(np.float64), sub.layers["observed"].astype(np.float64))
    if ax is None:
        fig, axes = plt.subplots(len(genes), 2, figsize=(8, 3.8 * len(genes)), squeeze=False)
        axes = axes.ravel()
    else:
        axes = np.asarray(ax, dtype=object).ravel()
        if len(axes) != 2 * len(genes):
            raise ValueError(f"`ax` must hold 2 axes per gene ({2 * len(genes)}), got {len(axes)}.")
        fig = axes[0].figure
    for k, gene in enumerate(genes):
        values = np.concatenate([sub[:, gene].X.ravel(), sub[:, gene].layers["observed"].ravel()])
        vmin, vmax = float(np.nanmin(values)), float(np.nanmax(values))
        for j, (what, lay) in enumerate((("observed", "observed"), ("predicted", None))):
            with warnings.catch_warnings():
                # about scanpy's own plotting code, not the caller's: nothing a user of this function can change
                warnings.filterwarnings("ignore", "Use `squidpy.pl.spatial_scatter` instead", FutureWarning)
                warnings.filterwarnings("ignore", "The set_bad function", PendingDeprecationWarning)
                sc.pl.spatial(
                    sub,
                    color=gene,
                    layer=lay,
                    img_key=img_key,
                    library_id=library_id,
                    size=size,
                    cmap=cmap,
                    vmin=vmin,
                    vmax=vmax,
                    ax=axes[2 * k + j],
                    show=False,
                    title=f"{gene} {what}" + (f" (r = {r[k]:.2f})" if what == "predicted" else ""),
                )
    save_figure(fig, save)
    return fig
