"""Pool bins (Visium HD) or cells (Xenium, CosMx, MERFISH) into pseudo-spots, and map predictions back."""

from __future__ import annotations

import copy as copy_module
import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from st_hist2st._constants import Key
from st_hist2st._data._scale import MICRONS_KEY, PSEUDO_SPOTS_KEY, given_for_library
from st_hist2st._utils import check_adata, check_not_view, get_libraries, get_spatial

logger = logging.getLogger(__name__)

#: Where :func:`~st_hist2st.pp.pool` records how the pseudo-spots were made, in the pooled AnnData's ``uns``.
POOLING_KEY = "hist2st_pooling"


def _microns_per_unit(
    adata: AnnData,
    library_id: str,
    given: float | Mapping[str, float] | None,
    bin_microns: float | None = None,
    coords: np.ndarray | None = None,
) -> float:
    """Micrometres per unit of ``obsm['spatial']`` for one library: given, from the bins' spacing, or ``uns``."""
    value = given_for_library(given, library_id, "microns_per_unit")
    if value is not None:
        return value
    if bin_microns is not None and given is None:
        from scipy.spatial import cKDTree

        distance, _ = cKDTree(coords).query(coords, k=2)
        spacing = float(np.median(distance[:, 1]))
        if not spacing > 0:
            raise ValueError(f"Library {library_id!r}: the bins' centres coincide; pass `microns_per_unit=`.")
        return float(bin_microns) / spacing
    entry = adata.uns.get(Key.spatial, {}).get(library_id, {})
    for place in ("metadata", Key.scalefactors):  # space ranger's Visium HD scale factors hold microns_per_pixel
        values = entry.get(place, {}) if isinstance(entry, Mapping) else {}
        if isinstance(values, Mapping) and values.get(MICRONS_KEY):
            return float(values[MICRONS_KEY])
    raise ValueError(
        f"Library {library_id!r}: the micrometres per unit of `obsm['spatial']` are unknown. Pass "
        "`microns_per_unit=` (1 for coordinates in micrometres, as Xenium cells; the full-resolution image's "
        "micrometres per pixel for Visium HD bins, space ranger's `microns_per_pixel`)."
    )


def _lattice_cell(xy: np.ndarray, step: float, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """``array_row`` and ``array_col`` of the grid cell (a square, or a hexagon) that holds each point.

    Hexagonal grids follow Visium's numbering: rows ``step * sqrt(3) / 2`` apart, ``array_col`` counts half
    steps, odd rows are shifted by half a step (``array_row + array_col`` is even).
    """
    if layout == "square":
        return np.floor(xy[:, 1] / step).astype(np.int64), np.floor(xy[:, 0] / step).astype(np.int64)
    dy = step * np.sqrt(3) / 2
    # the nearest lattice point lies in one of the two rows around the point
    base = np.floor(xy[:, 1] / dy).astype(np.int64)
    best_d = np.full(len(xy), np.inf)
    best_row, best_col = np.zeros(len(xy), np.int64), np.zeros(len(xy), np.int64)
    for row in (base, base + 1):
        shift = (row % 2) * step / 2
        col = np.round((xy[:, 0] - shift) / step).astype(np.int64)
        d = (xy[:, 0] - (col * step + shift)) ** 2 + (xy[:, 1] - row * dy) ** 2
        better = d < best_d
        best_d[better], best_row[better], best_col[better] = d[better], row[better], col[better]
    return best_row, 2 * best_col + (best_row % 2)


def pool(
    adata: AnnData,
    spot_microns: float,
    *,
    layout: str = "hexagonal",
    library_key: str | None = Key.library,
    spatial_key: str = Key.spatial,
    layer: str | None = None,
    microns_per_unit: float | Mapping[str, float] | None = None,
    bin_microns: float | None = None,
    min_members: int = 1,
) -> AnnData:
    """Pool bins or cells into pseudo-spots of a chosen size on a regular grid, summing their counts.

    Visium HD bins (2, 8 or 16 um, as spatialdata-io or scanpy load them) and cells with coordinates (Xenium,
    CosMx, MERFISH tables) are far smaller than the spots Hist2ST was made for. Each bin or cell goes to the
    pseudo-spot whose grid cell holds its centre (a square, or the hexagon around a point of a hexagonal
    grid), and each pseudo-spot's counts are the sum of its members'. The result is a squidpy-ready AnnData for
    :func:`~st_hist2st.tl.fit` and :func:`~st_hist2st.tl.predict`; :func:`~st_hist2st.pp.unpool` maps predictions back onto
    the bins or cells.

    Parameters
    ----------
    adata
        Bins or cells: counts in ``X`` (or ``layers[layer]``), centres in ``obsm[spatial_key]``.
    spot_microns
        Distance between neighbouring pseudo-spot centres, in micrometres (e.g. 55 for Visium-sized spots on
        a square grid that covers the tissue, 100 for legacy ST). It is also the pseudo-spots' diameter
        (``spot_diameter_fullres``), the default crop side.
    layout
        ``'hexagonal'`` (Visium's grid, 6 neighbours) or ``'square'`` (4 neighbours).
    library_key
        Column of ``obs`` with the section of each bin or cell (SpatialData tables: their region column);
        each section is pooled on its own grid.
    spatial_key
        Key of the centres in ``obsm``.
    layer
        Layer of counts; default ``X``.
    microns_per_unit
        Micrometres per unit of ``obsm[spatial_key]`` (one figure, or one per library): 1 for coordinates in
        micrometres (Xenium cells), the full-resolution image's micrometres per pixel for Visium HD bins.
        Default ``uns['spatial'][library_id]['scalefactors' or 'metadata']['microns_per_pixel']``, or the
        bins' spacing with ``bin_microns``.
    bin_microns
        Side of the bins in micrometres (Visium HD: 2, 8 or 16). The scale is then found from the spacing of
        their centres, so that a spatialdata-io table (centres in full-resolution pixels, no scale factors)
        needs nothing else.
    min_members
        Fewest bins or cells a pseudo-spot needs; emptier grid cells (tissue edges) are left out, and their
        members map back to nothing.

    Returns
    -------
    A new AnnData of pseudo-spots with

    - ``X``: summed counts (sparse), the genes of ``adata``;
    - ``obs``: the library, ``array_row``/``array_col`` on the grid, ``n_members``;
    - ``obsm['spatial']``: the mean centre of each pseudo-spot's members (the tissue it pooled, which its
      patch is cut around), in the units of ``adata``'s coordinates;
    - ``obsp['spatial_connectivities']``: the Hist2ST spot graph (:func:`~st_hist2st.pp.spatial_graph`);
    - ``uns['spatial']``: each library's images (the same arrays, not copies) and scale factors, with
      ``spot_diameter_fullres`` and ``metadata['microns_per_pixel']`` set for the pseudo-spots;
    - ``uns['hist2st_pooling']``: the pseudo-spot of every bin or cell (``-1`` for none), for :func:`~st_hist2st.pp.unpool`.
    """
    from st_hist2st.pp._graph import spatial_graph

    check_adata(adata)
    if layout not in ("hexagonal", "square"):
        raise ValueError(f"`layout` must be 'hexagonal' or 'square', got {layout!r}.")
    if not (isinstance(spot_microns, int | float) and spot_microns > 0):
        raise ValueError(f"`spot_microns` must be a positive number of micrometres, got {spot_microns!r}.")
    if isinstance(min_members, bool) or not isinstance(min_members, int) or min_members < 1:
        raise ValueError(f"`min_members` must be an integer of at least 1, got {min_members!r}.")
    if layer is not None and layer not in adata.layers:
        raise KeyError(f"`adata.layers[{layer!r}]` does not exist (layers: {list(adata.layers)}).")
    coords = get_spatial(adata, spatial_key)
    libraries = get_libraries(adata, library_key)
    if bin_microns is not None and not (isinstance(bin_microns, int | float) and bin_microns > 0):
        raise ValueError(f"`bin_microns` must be a positive number of micrometres, got {bin_microns!r}.")
    scales = {
        lib: _microns_per_unit(
            adata, lib, microns_per_unit, bin_microns, coords[(libraries == lib).to_numpy()] if bin_microns else None
        )
        for lib in libraries.cat.categories
    }
    counts = adata.X if layer is None else adata.layers[layer]
    assignment = np.full(adata.n_obs, -1, dtype=np.int64)
    obs_parts, centres, spatial_entries = [], [], {}
    n_spots = 0
    for lib in libraries.cat.categories:
        idx = np.flatnonzero((libraries == lib).to_numpy())
        step = float(spot_microns) / scales[lib]  # in coordinate units
        origin = coords[idx].min(0)  # the grid starts at the section's first bin or cell
        row, col = _lattice_cell(coords[idx] - origin, step, layout)
        # a spot per occupied grid cell, numbered by row then column
        keys, inverse, members = np.unique(np.stack([row, col], 1), axis=0, return_inverse=True, return_counts=True)
        inverse = inverse.ravel()
        keep = members >= min_members
        number = np.full(len(keys), -1, dtype=np.int64)
        number[keep] = n_spots + np.arange(int(keep.sum()))
        assignment[idx] = number[inverse]
        rows, cols = keys[keep, 0], keys[keep, 1]
        # grid positions from 0, shifted by even amounts to keep the hexagonal grid's parity
        rows_shift, cols_shift = rows - (rows.min() - rows.min() % 2), cols - (cols.min() - cols.min() % 2)
        obs_parts.append(
            pd.DataFrame(
                {
                    Key.library: str(lib),
                    Key.array_row: rows_shift,
                    Key.array_col: cols_shift,
                    "n_members": members[keep],
                },
                index=[f"{lib}_{r}x{c}" for r, c in zip(rows_shift, cols_shift, strict=True)],
            )
        )
        # each pseudo-spot's patch is cut around the tissue it pooled: its members' mean centre
        totals = np.zeros((len(keys), 2))
        np.add.at(totals, inverse, coords[idx])
        centres.append(totals[keep] / members[keep, None])
        spatial_entries[str(lib)] = _spatial_entry(adata, str(lib), spot_microns, scales[lib])
        n_spots += int(keep.sum())
    if n_spots == 0:
        raise ValueError(f"No pseudo-spot has `min_members={min_members}` bins or cells; lower it.")
    pooled_rows = assignment >= 0
    dtype = counts.dtype if np.issubdtype(counts.dtype, np.number) else np.float32
    pooling = sp.csr_matrix(
        (np.ones(int(pooled_rows.sum()), dtype=dtype), (assignment[pooled_rows], np.flatnonzero(pooled_rows))),
        shape=(n_spots, adata.n_obs),
    )
    summed = pooling @ (counts if sp.issparse(counts) else sp.csr_matrix(counts))
    obs = pd.concat(obs_parts)
    obs[Key.library] = obs[Key.library].astype("category")
    out = AnnData(X=sp.csr_matrix(summed, dtype=dtype), obs=obs, var=adata.var.copy())
    out.obsm[Key.spatial] = np.concatenate(centres)
    out.uns[Key.spatial] = spatial_entries
    attrs = adata.uns.get("spatialdata_attrs")
    if isinstance(attrs, Mapping) and attrs.get("region_key") in adata.obs:
        # SpatialData tables find their image through the region their rows annotate: the same for pseudo-spots
        region_key = attrs["region_key"]
        region = adata.obs[region_key].astype(str).groupby(libraries.to_numpy(), observed=True).first()
        out.obs[region_key] = pd.Categorical(out.obs[Key.library].astype(str).map(region))
        out.uns["spatialdata_attrs"] = {"region": list(region.unique()), "region_key": region_key}
    out.uns[POOLING_KEY] = {
        "source_obs_names": np.asarray(adata.obs_names, dtype=object).astype(str),
        "assignment": assignment,
        "spot_microns": float(spot_microns),
        "layout": layout,
        "microns_per_unit": {str(k): float(v) for k, v in scales.items()},
    }
    spatial_graph(out, layout="visium" if layout == "hexagonal" else "st")
    logger.info(
        "pooled %d of %d bins or cells into %d pseudo-spots of %g um",
        pooled_rows.sum(),
        adata.n_obs,
        n_spots,
        spot_microns,
    )
    return out


def _spatial_entry(adata: AnnData, library_id: str, spot_microns: float, microns_per_unit: float) -> dict:
    """The library's ``uns['spatial']`` entry for pseudo-spots: its images as they are, new diameter and scale."""
    entry = adata.uns.get(Key.spatial, {}).get(library_id, {})
    entry = dict(entry) if isinstance(entry, Mapping) else {}
    out = {key: value for key, value in entry.items() if key not in (Key.scalefactors, "metadata", Key.images)}
    if Key.images in entry:
        out[Key.images] = dict(entry[Key.images])  # the arrays themselves: a slide is not copied
    out[Key.scalefactors] = {
        **copy_module.deepcopy(dict(entry.get(Key.scalefactors, {}))),
        "spot_diameter_fullres": float(spot_microns) / microns_per_unit,
    }
    out["metadata"] = {
        **copy_module.deepcopy(dict(entry.get("metadata", {}))),
        MICRONS_KEY: float(microns_per_unit),
        PSEUDO_SPOTS_KEY: True,
    }
    return out


def unpool(
    pooled: AnnData,
    adata: AnnData,
    *,
    key: str = Key.prediction,
    key_added: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Give every bin or cell the prediction of the pseudo-spot it was pooled into (:func:`~st_hist2st.pp.pool`).

    Predictions are on the scale of normalised expression (:func:`~st_hist2st.tl.predict`), a level per spot
    that does not depend on the spot's size, so each member of a pseudo-spot gets the pseudo-spot's values.

    Parameters
    ----------
    pooled
        The pseudo-spots of :func:`~st_hist2st.pp.pool`, with predictions in ``layers[key]``.
    adata
        The bins or cells that were pooled (the same rows, in any order).
    key
        Layer of ``pooled`` to map back.
    key_added
        Layer of ``adata`` to write; default ``key``.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None`` (or the copy with ``copy=True``); ``adata`` gets ``layers[key_added]`` (NaN for bins or cells in no
    pseudo-spot, and for genes ``pooled`` lacks) and ``uns[key_added]`` (the pooled ``uns[key]`` and the
    pooling).
    """
    check_adata(adata)
    record = pooled.uns.get(POOLING_KEY)
    if not isinstance(record, Mapping) or "assignment" not in record:
        raise KeyError(f"`pooled.uns[{POOLING_KEY!r}]` is missing; `pooled` must come from `hist2st.pp.pool`.")
    if key not in pooled.layers:
        raise KeyError(f"`pooled.layers[{key!r}]` does not exist; predict first (`hist2st.tl.predict(pooled, model)`).")
    names = pd.Index(np.asarray(record["source_obs_names"]).astype(str))
    rows = names.get_indexer(adata.obs_names.astype(str))
    if (rows < 0).any() or len(names) != adata.n_obs:
        raise ValueError(
            f"`adata` is not the AnnData that was pooled: {int((rows < 0).sum())} of its {adata.n_obs} rows are not "
            f"among the {len(names)} pooled bins or cells. Pass the bins or cells given to `hist2st.pp.pool`."
        )
    if not copy:
        check_not_view(adata)
    spot = np.asarray(record["assignment"])[rows]
    genes = adata.var_names.get_indexer(pooled.var_names)
    layer = np.full((adata.n_obs, adata.n_vars), np.nan, dtype=np.float32)
    found = spot >= 0
    values = np.asarray(pooled.layers[key][spot[found]], dtype=np.float32)
    columns = genes >= 0
    layer[np.ix_(np.flatnonzero(found), genes[columns])] = values[:, columns]
    if copy:
        adata = adata.copy()
    key_added = key if key_added is None else key_added
    adata.layers[key_added] = layer
    adata.uns[key_added] = {
        **copy_module.deepcopy(dict(pooled.uns.get(key, {}))),
        "pooling": {k: v for k, v in record.items() if k not in ("source_obs_names", "assignment")},
    }
    logger.info("mapped `layers[%r]` of %d pseudo-spots onto %d bins or cells", key, pooled.n_obs, int(found.sum()))
    return adata if copy else None
