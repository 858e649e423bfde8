"""The Visium path on real space ranger outputs (../shared/data/visium), as squidpy reads them."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import st_hist2st as hist2st
from st_hist2st._data._graph import build_connectivities, detect_layout, grid_positions, infer_lattice

VISIUM = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "visium"


def read_visium(name: str):
    folder = VISIUM / name
    if not folder.is_dir():
        pytest.skip(f"Visium data not found at {folder}")
    from st_hist2st.pl._utils import import_squidpy

    sq = import_squidpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the readers' notices about their own dependencies
        return sq.read.visium(folder)


@pytest.mark.parametrize("name", ["mouse_brain_posterior", "mouse_placenta_cytassist"])
def test_the_hexagonal_lattice_and_graph_come_from_coordinates_alone(name, squidpy_graph):
    adata = read_visium(name)
    adata.obs["library_id"] = pd.Categorical([name] * adata.n_obs)
    truth = grid_positions(adata)
    bare = adata.copy()
    del bare.obs["array_row"], bare.obs["array_col"]
    inferred = grid_positions(bare)
    assert detect_layout(inferred) == "visium"
    offsets = np.unique(inferred - truth, axis=0)
    assert len(offsets) == 1, offsets  # the space ranger positions, shifted
    conn = build_connectivities(bare, library_key="library_id")
    assert (conn != squidpy_graph(adata, "visium")).nnz == 0


def test_a_turned_hexagonal_array_is_still_hexagonal():
    rows, cols = np.mgrid[0:12, 0:24]
    keep = (rows + cols) % 2 == 0
    xy = np.stack([cols[keep] * 50.0, rows[keep] * 50.0 * np.sqrt(3)], axis=1)  # spots 100 apart
    angle = np.deg2rad(17)
    turned = xy @ np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
    pos, layout = infer_lattice(turned)
    assert layout == "visium"
    assert len(np.unique(pos, axis=0)) == len(pos)  # no two spots on one lattice point
    assert (pos.sum(1) % 2 == pos.sum(1)[0] % 2).all()


def test_a_model_without_position_embedding_takes_any_array(adata, tiny):
    # grid positions beyond the embedding's 64 entries, as on Visium (up to 127)
    adata.obs["array_col"] = adata.obs["array_col"] * 20
    fast = hist2st.Hist2ST(list(adata.var_names), preset="fast", n_pos=64, **tiny)
    fast.is_trained = True
    assert np.isfinite(fast.predict(adata, image_key="hires", show_progress_bar=False)).all()
    paper = hist2st.Hist2ST(list(adata.var_names), preset="paper", n_pos=64, **tiny)
    paper.is_trained = True
    with pytest.raises(ValueError, match=r"n_pos=192.*position_embedding=False"):
        paper.predict(adata, image_key="hires", show_progress_bar=False)
