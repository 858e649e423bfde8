from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest

import st_hist2st as hist2st

HER2ST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "her2st"

#: A model small enough to train in seconds on the synthetic data.
TINY = {
    "channel": 8,
    "patch_size": 14,
    "depth1": 1,
    "depth2": 1,
    "depth3": 1,
    "heads": 2,
    "dim_head": 16,
    "dropout": 0.0,
}


@pytest.fixture(autouse=True)
def _quiet():
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*GPU available.*")
        yield


@pytest.fixture(scope="session")
def _synthetic():
    return hist2st.datasets.synthetic(n_libraries=2, shape=(8, 8), n_genes=12, seed=0)


@pytest.fixture
def adata(_synthetic):
    return _synthetic.copy()


@pytest.fixture(scope="session")
def trained(_synthetic):
    """A tiny model with all of Hist2ST's heads (the paper's preset), trained for two epochs on the synthetic data."""
    return hist2st.tl.fit(
        _synthetic, "hires", preset="paper", max_epochs=2, show_progress_bar=False, accelerator="cpu", **TINY
    )


@pytest.fixture(scope="session")
def her2st_root():
    if not (HER2ST / "data" / "ST-cnts").is_dir():
        pytest.skip(f"her2st data not found at {HER2ST}")
    return HER2ST


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def squidpy_graph():
    """The Hist2ST spot graph as squidpy computes it, to check :func:`~st_hist2st.pp.spatial_graph` against.

    ST: the 4 nearest spots on the grid (``sq.gr.spatial_neighbors_knn``), kept within grid distance 2; Visium:
    squidpy's 6-neighbour grid graph (``sq.gr.spatial_neighbors_grid``).
    Computed on the rows sorted by grid position and returned in the order of ``adata``'s rows.
    """
    import squidpy as sq
    from anndata import AnnData

    from st_hist2st._data._graph import grid_positions

    def build(adata, layout):
        # squidpy breaks ties between equally distant spots by row order; st-hist2st by grid position (row, then
        # column), whatever the row order: give squidpy the rows in that order and put its graph back in ours
        positions, xy = grid_positions(adata), np.asarray(adata.obsm["spatial"])
        order = np.lexsort((xy[:, 1], xy[:, 0], positions[:, 0], positions[:, 1]))
        inverse = np.argsort(order)
        adata = adata[order]
        scratch = AnnData(obs=adata.obs[["library_id"]].copy())
        if layout == "visium":
            scratch.obsm["spatial"] = adata.obsm["spatial"]
            sq.gr.spatial_neighbors_grid(scratch, library_key="library_id", n_neighs=6)
            conn = scratch.obsp["spatial_connectivities"].tocsr()
        else:
            scratch.obsm["grid"] = grid_positions(adata).astype(float)
            sq.gr.spatial_neighbors_knn(scratch, spatial_key="grid", library_key="library_id", n_neighs=4)
            near = scratch.obsp["spatial_distances"].tocsr() <= 2
            conn = scratch.obsp["spatial_connectivities"].tocsr().multiply(near).tocsr()
        conn.setdiag(0)
        conn.eliminate_zeros()
        return conn[inverse][:, inverse].tocsr()

    return build


@pytest.fixture
def tiny():
    """Architecture settings of a model that trains in seconds."""
    return dict(TINY)
