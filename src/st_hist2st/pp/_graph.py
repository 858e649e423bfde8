from __future__ import annotations

import logging
import warnings

from anndata import AnnData
from scipy import sparse

from st_hist2st._constants import Key
from st_hist2st._data._graph import Layout, build_connectivities
from st_hist2st._utils import check_adata, check_not_view

logger = logging.getLogger(__name__)


def spatial_graph(
    adata: AnnData,
    *,
    library_key: str | None = Key.library,
    spatial_key: str = Key.spatial,
    layout: Layout = "auto",
    key_added: str = Key.connectivities,
    copy: bool = False,
    inplace: bool | None = None,
) -> sparse.csr_matrix | None:
    """Build the Hist2ST spot graph by squidpy's rules (:func:`squidpy.gr.spatial_neighbors_knn` and ``_grid``).

    Legacy ST arrays get the paper's rule: the 4 nearest spots in grid coordinates, kept when at most
    2 grid units away (a directed graph, no self-loops). Visium arrays get the 6 hexagonal neighbours. The graph
    equals squidpy's for the same settings; it is built with scikit-learn directly so that training does not
    import squidpy.
    Grid coordinates come from ``obs['array_row']``/``['array_col']`` or are inferred from ``obsm[spatial_key]``,
    each section's on its own (sections may share a pixel frame).

    Parameters
    ----------
    adata
        Spots.
    library_key
        Column of ``obs`` with the section of each spot; graphs never cross sections. ``None``: one section.
    spatial_key
        Key of the spot centres in ``obsm``.
    layout
        ``'st'``, ``'visium'`` or ``'auto'``: per section, Visium when every ``array_row + array_col`` has one
        parity.
    key_added
        Key in ``obsp`` for the graph.
    copy
        Return the graph and leave ``adata`` alone, as squidpy's ``spatial_neighbors_*`` do; otherwise write
        ``obsp[key_added]``.
    inplace
        Deprecated: ``inplace=False`` is ``copy=True``.

    Returns
    -------
    The sparse ``(n_obs, n_obs)`` connectivities with ``copy=True``; otherwise ``None`` and
    ``adata.obsp[key_added]`` is set.
    """
    if inplace is not None:
        warnings.warn(
            "`spatial_graph(inplace=...)` is deprecated: `copy=True` returns the graph, `copy=False` writes it. "
            "`inplace` will be removed in the next release.",
            FutureWarning,
            stacklevel=2,
        )
        copy = copy or not inplace
    check_adata(adata)
    conn = build_connectivities(adata, library_key=library_key, spatial_key=spatial_key, layout=layout)
    if copy:
        return conn
    check_not_view(adata)
    adata.obsp[key_added] = conn
    logger.info("added `adata.obsp[%r]`", key_added)
    return None
