"""The spot graph and the grid positions that the model embeds."""

from __future__ import annotations

import logging
import warnings
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse
from sklearn.neighbors import NearestNeighbors

from st_hist2st._constants import Key
from st_hist2st._utils import get_libraries, get_spatial

logger = logging.getLogger(__name__)

Layout = Literal["auto", "st", "visium"]
#: The paper's rule for legacy ST arrays: k nearest spots on the grid, kept within this grid distance.
ST_NEIGHBOURS, ST_MAX_GRID_DISTANCE = 4, 2.0
#: squidpy's grid rule for Visium: the 6 nearest spots, kept when closer than this many times their median distance.
VISIUM_NEIGHBOURS, VISIUM_DISTANCE_FACTOR = 6, 1.3


def grid_positions(adata: AnnData, spatial_key: str = Key.spatial, libraries: pd.Series | None = None) -> np.ndarray:
    """Integer (column, row) array position of each spot.

    Taken from ``obs['array_col']`` / ``obs['array_row']``; when those are missing, inferred per library from
    ``obsm[spatial_key]`` by :func:`infer_lattice` (square or hexagonal, in any orientation).
    """
    if Key.array_row in adata.obs and Key.array_col in adata.obs:
        pos = adata.obs[[Key.array_col, Key.array_row]].to_numpy()
        if not np.isfinite(pos.astype(float)).all():
            raise ValueError("`adata.obs['array_row']` / `['array_col']` contain missing values.")
        if (pos < 0).any():
            raise ValueError("`adata.obs['array_row']` / `['array_col']` must be non-negative grid indices.")
        return np.rint(pos.astype(float)).astype(np.int64)
    coords = get_spatial(adata, spatial_key)
    libraries = pd.Series(np.zeros(adata.n_obs)) if libraries is None else libraries
    pos = np.zeros((adata.n_obs, 2), dtype=np.int64)
    for lib in pd.unique(libraries):
        idx = np.flatnonzero((libraries == lib).to_numpy())
        if len(idx) < 2:
            continue
        try:
            pos[idx], layout = infer_lattice(coords[idx])
        except ValueError as err:
            raise ValueError(f"Library {lib!r}: {err}") from None
        logger.info("library %r: inferred a %s lattice from `obsm[%r]`", lib, layout, spatial_key)
    return pos


def infer_lattice(xy: np.ndarray) -> tuple[np.ndarray, Literal["st", "visium"]]:
    """Integer (column, row) lattice positions of spots at ``xy``, and whether the lattice is hexagonal.

    The spacing is the median distance to the nearest spot. Spots with more than 4 neighbours closer than
    1.3 spacings (6 on a hexagonal array, 4 on a square one) make the lattice hexagonal. The coordinates are
    turned so that one lattice direction lies along x (the mean direction of the neighbour vectors, modulo 60
    or 90 degrees), then rounded: a square lattice by the spacing; a hexagonal one into rows ``sqrt(3)/2``
    spacings apart and columns of half a spacing, so that ``row + column`` has one parity, as Visium's
    ``array_row`` / ``array_col``.
    """
    k = min(7, len(xy))
    dist, nearest = NearestNeighbors(n_neighbors=k).fit(xy).kneighbors(xy)
    spacing = float(np.median(dist[:, 1]))
    if spacing <= 0:
        raise ValueError("spots share coordinates; cannot infer their grid positions.")
    close = dist[:, 1:] < VISIUM_DISTANCE_FACTOR * spacing
    hexagonal = len(xy) > 6 and np.percentile(close.sum(1), 90) > 4
    vectors = xy[nearest[:, 1:]][close] - np.repeat(xy, close.sum(1), axis=0)
    fold = 6 if hexagonal else 4
    angles = np.arctan2(vectors[:, 1], vectors[:, 0])
    turn = np.angle(np.exp(1j * fold * angles).mean()) / fold if len(angles) else 0.0
    cos, sin = np.cos(turn), np.sin(turn)
    turned = np.stack([xy[:, 0] * cos + xy[:, 1] * sin, -xy[:, 0] * sin + xy[:, 1] * cos], axis=1)
    turned -= turned.min(0)
    step = np.array([spacing / 2, spacing * np.sqrt(3) / 2]) if hexagonal else np.array([spacing, spacing])
    pos = _round_to_lattice(turned / step, hexagonal)
    # a real array is no perfect lattice (scanner distortion, rounded pixels): fit the affine map from lattice
    # positions to coordinates and round again, until no spot moves
    for _ in range(10):
        design = np.column_stack([pos, np.ones(len(pos))])
        fit, *_ = np.linalg.lstsq(design, xy, rcond=None)
        fractional = np.linalg.solve(fit[:2].T, (xy - fit[2]).T).T
        new = _round_to_lattice(fractional, hexagonal)
        if np.array_equal(new, pos):
            break
        pos = new
    pos -= pos.min(0)
    if hexagonal and pos.sum(1)[0] % 2:  # keep row + column of one parity after the shift
        pos[:, 0] += 1
    return pos, "visium" if hexagonal else "st"


def _round_to_lattice(fractional: np.ndarray, hexagonal: bool) -> np.ndarray:
    """Nearest lattice points: any integers on a square lattice; ``row + column`` even on a hexagonal one."""
    if not hexagonal:
        return np.rint(fractional).astype(np.int64)
    rows = np.rint(fractional[:, 1])
    odd = rows % 2
    cols = 2 * np.rint((fractional[:, 0] - odd) / 2) + odd
    return np.stack([cols, rows], axis=1).astype(np.int64)


def detect_layout(positions: np.ndarray) -> Literal["st", "visium"]:
    """Visium's hexagonal array indexes spots with ``(row + col)`` of one parity; legacy ST uses every point."""
    parity = positions.sum(1) % 2
    return "visium" if len(positions) > 2 and (parity == parity[0]).all() else "st"


def build_connectivities(
    adata: AnnData,
    *,
    library_key: str | None,
    spatial_key: str = Key.spatial,
    layout: Layout = "auto",
    positions: np.ndarray | None = None,
) -> sparse.csr_matrix:
    """Build the spot graph by squidpy's rules (:func:`squidpy.gr.spatial_neighbors_knn`, ``_grid``), per library.

    Spots are queried in the order of their grid position (row, then column), so that ties between equally
    distant spots are broken alike whatever the order of ``adata``'s rows.

    Legacy ST (the paper's rule): the 4 nearest spots in grid coordinates (squidpy's generic k-nearest-neighbour
    graph), kept when at most 2 grid units away, no self-loops. Visium: the 6 hexagonal neighbours (squidpy's grid
    graph: the 6 nearest spots closer than 1.3 times the median of those distances). The same
    :class:`~sklearn.neighbors.NearestNeighbors` queries as squidpy's give the same graph without importing squidpy
    (and through it spatialdata, dask and scikit-image) while training: 0.07 GB less at the peak on her2st.
    ``adata`` is not modified.
    """
    if layout not in ("auto", "st", "visium"):
        raise ValueError(f"`layout` must be 'auto', 'st' or 'visium', got {layout!r}.")
    libraries = get_libraries(adata, library_key)
    positions = grid_positions(adata, spatial_key, libraries) if positions is None else positions
    spatial = get_spatial(adata, spatial_key) if layout != "st" else None
    lattice = positions.astype(np.float64)
    rows, cols, built = [], [], set()
    for lib in libraries.cat.categories:
        idx = np.flatnonzero((libraries == lib).to_numpy())
        own = detect_layout(positions[idx]) if layout == "auto" else layout
        built.add(own)
        coords = spatial if own == "visium" else lattice
        # the neighbour queries break ties (spots equally far, at array borders) by input order: query the spots in
        # the order of their grid position, so that the graph does not depend on the order of adata's rows
        idx = idx[np.lexsort((coords[idx, 1], coords[idx, 0], positions[idx, 0], positions[idx, 1]))]
        xy = coords[idx]
        k = VISIUM_NEIGHBOURS if own == "visium" else max(1, min(ST_NEIGHBOURS, len(idx) - 1))
        source, target = _nearest(xy, k)
        dist = np.linalg.norm(xy[source] - xy[target], axis=1)
        if own == "visium":
            keep = dist < np.median(dist) * VISIUM_DISTANCE_FACTOR
        else:
            keep = dist <= ST_MAX_GRID_DISTANCE
        if len(idx) > 1 and not keep.any():
            warnings.warn(
                f"Library {lib!r}: no spot has a neighbour by the {own} rule, so its graph has no edges; check "
                f"`spatial_key` and `layout`, or put your own graph in `adata.obsp`.",
                UserWarning,
                stacklevel=3,
            )
        rows.append(idx[source[keep]])
        cols.append(idx[target[keep]])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    conn = sparse.csr_matrix((np.ones(rows.size, dtype=np.float32), (rows, cols)), shape=(adata.n_obs, adata.n_obs))
    conn.setdiag(0)
    conn.eliminate_zeros()
    logger.info("built the %s spot graph (%d edges)", " and ".join(sorted(built)), conn.nnz)
    return conn


def _nearest(coords: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each point and its ``k`` nearest other points, as squidpy queries them; no pairs for a lone point."""
    if len(coords) < 2:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if len(coords) <= k:
        raise ValueError(
            f"A library has only {len(coords)} spots, too few for the Visium graph of {k} neighbours per spot; "
            "drop it, or put your own graph in `adata.obsp['spatial_connectivities']`."
        )
    _, target = NearestNeighbors(n_neighbors=k, radius=1, metric="euclidean").fit(coords).kneighbors()
    return np.repeat(np.arange(len(coords)), k), target.reshape(-1)


def get_connectivities(
    adata: AnnData,
    *,
    library_key: str | None,
    connectivity_key: str = Key.connectivities,
    spatial_key: str = Key.spatial,
    layout: Layout = "auto",
    positions: np.ndarray | None = None,
) -> sparse.csr_matrix:
    """``obsp[connectivity_key]`` when present, otherwise the graph of :func:`build_connectivities`."""
    if connectivity_key in adata.obsp:
        conn = sparse.csr_matrix(adata.obsp[connectivity_key])
    else:
        logger.info("`adata.obsp[%r]` not found; building the spot graph", connectivity_key)
        conn = build_connectivities(
            adata, library_key=library_key, spatial_key=spatial_key, layout=layout, positions=positions
        )
    return conn


def to_edge_index(conn: sparse.spmatrix) -> np.ndarray:
    """``(2, n_edges)`` edge index (source, target) from the connectivities of one library.

    ``conn[i, j]`` makes ``j`` a neighbour of ``i``. Self-loops are dropped; spots without neighbours give a
    warning.
    """
    coo = sparse.coo_matrix(conn)
    keep = (coo.row != coo.col) & (coo.data != 0)
    rows, cols = coo.row[keep], coo.col[keep]
    isolated = np.setdiff1d(np.arange(conn.shape[0]), rows)
    if isolated.size:
        warnings.warn(
            f"{isolated.size} spot(s) have no neighbours in the spot graph; the GNN gives them a zero message.",
            UserWarning,
            stacklevel=3,
        )
    return np.stack([cols, rows]).astype(np.int64)
