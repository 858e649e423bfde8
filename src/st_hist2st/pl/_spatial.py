from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from st_hist2st._constants import Key
from st_hist2st._deprecation import prediction_passed_as_layer, renamed_arguments
from st_hist2st._utils import check_adata, get_libraries
from st_hist2st.pl._utils import finish_figure, import_squidpy
from st_hist2st.tl._evaluate import observed_targets, pearson_columns


def _default_img_key(adata: AnnData, library_id: str) -> str | None:
    """The lowest-resolution image of the library that has a scale factor; ``None`` without one."""
    images = adata.uns.get(Key.spatial, {}).get(library_id, {}).get(Key.images, {})
    for key in ("lowres", "hires", *images):
        if key in images and f"tissue_{key}_scalef" in adata.uns[Key.spatial][library_id].get(Key.scalefactors, {}):
            return key
    return None


def spatial_pred(
    adata: AnnData,
    genes: str | Sequence[str],
    key: str = Key.prediction,
    library_id: str | Sequence[str] | None = None,
    image_key: str | None = None,
    *,
    layer: str | None = None,
    library_key: str | None = Key.library,
    cmap: str = "viridis",
    size: float = 1.3,
    shared_scale: bool = True,
    ax: Sequence[Axes] | None = None,
    save: str | Path | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    **deprecated: Any,
) -> Figure | np.ndarray | None:
    """Observed next to predicted expression on the tissue, one row per gene, by default on one colour scale.

    The observed counts are transformed as the model's targets; each row's title gives the gene's Pearson r in
    the library. Drawn with :func:`squidpy.pl.spatial_scatter` over the H&E image.

    Parameters
    ----------
    adata
        Spots with raw counts, predictions in ``layers[key]`` and images in ``uns['spatial']``.
    genes
        Gene or genes to show.
    key
        Layer with the predictions (``key_added`` of :func:`~st_hist2st.tl.predict`).
    library_id
        Library or libraries to show; default the first. With several, each gets its rows, titled with its name.
    image_key
        Image under the spots, a key of ``uns['spatial'][library_id]['images']``: ``'lowres'`` or
        ``'hires'`` when present.
    layer
        Layer with the raw counts; ``None`` uses ``X``.
    library_key
        Column of ``obs`` with the section of each spot.
    cmap
        Colour map.
    size
        Spot size relative to ``spot_diameter_fullres``.
    shared_scale
        Draw each gene's observed and predicted expression on one colour scale, so that colours compare. The
        predictions are smoother than the measurement and span a narrower range, so on a shared scale their
        pattern can look flat; with ``False`` each panel spans its own values (see its colour bar).
    ax
        Two axes per gene and library (observed, predicted); default a new figure.
    save
        Write the figure to this file.
    show
        Show the figure (and return nothing), as scanpy's plots do; default scanpy's ``settings.autoshow``.
    return_fig
        Return the figure instead of the axes when not showing it.

    Returns
    -------
    Nothing when shown; else the figure with ``return_fig=True``, or the ``(n_libraries * n_genes, 2)`` array
    of axes.
    """
    current = {"key": key, "layer": layer, "image_key": image_key}
    renamed_arguments("spatial_pred", deprecated, {"img_key": "image_key", "counts_layer": "layer"}, current)
    key, layer, image_key = current["key"], current["layer"], current["image_key"]
    if prediction_passed_as_layer("spatial_pred", adata, layer):
        key, layer = layer, None
    check_adata(adata)
    genes = [genes] if isinstance(genes, str) else list(genes)
    libs = get_libraries(adata, library_key)
    if library_id is None:
        library_ids = [str(libs.cat.categories[0])]
    else:
        library_ids = [library_id] if isinstance(library_id, str) else [str(x) for x in library_id]
    unknown = [lib for lib in library_ids if lib not in libs.cat.categories]
    if unknown:
        raise ValueError(f"Unknown `library_id` {unknown}; libraries: {list(libs.cat.categories)}.")
    rows = len(genes) * len(library_ids)
    if ax is None:
        fig, axes = plt.subplots(rows, 2, figsize=(8, 3.8 * rows), squeeze=False)
    else:
        axes = np.asarray(ax, dtype=object).reshape(-1)
        if len(axes) != 2 * rows:
            raise ValueError(f"`ax` must hold 2 axes per gene and library ({2 * rows}), got {len(axes)}.")
        axes, fig = axes.reshape(rows, 2), axes[0].figure
    for n, lib in enumerate(library_ids):
        rows_of_library = axes[n * len(genes) : (n + 1) * len(genes)]
        _draw_library(
            adata,
            genes,
            key,
            lib,
            libs,
            image_key,
            layer,
            cmap,
            size,
            shared_scale,
            rows_of_library,
            len(library_ids) > 1,
        )
    return finish_figure(fig, axes, save=save, show=show, return_fig=return_fig)


def _draw_library(
    adata: AnnData,
    genes: list[str],
    key: str,
    library_id: str,
    libs: pd.Series,
    image_key: str | None,
    layer: str | None,
    cmap: str,
    size: float,
    shared_scale: bool,
    axes: np.ndarray,
    name_library: bool,
) -> None:
    """Observed and predicted expression of ``genes`` in one library, a row of two axes per gene."""
    idx = (libs == library_id).to_numpy()
    # the targets are normalised within each spot, so the library's own spots are all that is needed
    observed = observed_targets(adata[idx], key, layer)
    missing = [g for g in genes if g not in observed.columns]
    if missing:
        raise KeyError(f"No predictions in `layers[{key!r}]` for {missing}.")
    if image_key is None:
        image_key = _default_img_key(adata, library_id)
    sub = AnnData(
        X=np.asarray(adata[idx, genes].layers[key], dtype=np.float32),
        obs=pd.DataFrame({"library": pd.Categorical([library_id] * int(idx.sum()))}, index=adata.obs_names[idx]),
        var=pd.DataFrame(index=genes),
        obsm={Key.spatial: np.asarray(adata.obsm[Key.spatial])[idx]},
    )
    # without an image and scale factors in uns (e.g. the images are in a SpatialData object) the spots are dots
    entry = adata.uns.get(Key.spatial, {}).get(library_id)
    if entry is not None:
        sub.uns[Key.spatial] = {library_id: entry}
    sub.layers["observed"] = observed.loc[sub.obs_names, genes].to_numpy(np.float32)
    r, _ = pearson_columns(sub.X.astype(np.float64), sub.layers["observed"].astype(np.float64))
    sq = import_squidpy()
    prefix = f"{library_id}: " if name_library else ""
    for k, gene in enumerate(genes):
        panels = {"observed": sub[:, gene].layers["observed"].ravel(), "predicted": sub[:, gene].X.ravel()}
        shared = np.concatenate(list(panels.values()))
        for j, (what, lay) in enumerate((("observed", "observed"), ("predicted", None))):
            values = shared if shared_scale else panels[what]
            norm = Normalize(float(np.nanmin(values)), float(np.nanmax(values)))
            with warnings.catch_warnings():
                # squidpy's own use of a matplotlib method: nothing a caller of this function can change
                warnings.filterwarnings("ignore", "The set_bad function", PendingDeprecationWarning)
                sq.pl.spatial_scatter(
                    sub,
                    color=gene,
                    layer=lay,
                    library_id=library_id,
                    library_key="library",
                    shape="circle" if entry is not None else None,
                    img=image_key is not None,
                    img_res_key=image_key,
                    size=size if entry is not None else None,
                    cmap=cmap,
                    norm=norm,
                    ax=axes[k, j],
                    title=prefix + f"{gene} {what}" + (f" (r = {r[k]:.2f})" if what == "predicted" else ""),
                )
