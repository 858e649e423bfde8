"""Bins and cells pooled into pseudo-spots, and predictions mapped back onto them."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData
from scipy.spatial import cKDTree

import st_hist2st as hist2st

MICRONS_PER_PIXEL = 3.125  # the synthetic slide's: 100 um spots of 32 px


def visium_hd_like(synthetic: AnnData, bin_microns: float = 16.0, seed: int = 0) -> AnnData:
    """Square bins over the synthetic slides, counts in ``X``, the scale as space ranger writes it."""
    rng = np.random.default_rng(seed)
    parts = []
    for lib in ("S0", "S1"):
        side = 400 * MICRONS_PER_PIXEL
        centres = np.arange(bin_microns / 2, side, bin_microns) / MICRONS_PER_PIXEL
        xx, yy = np.meshgrid(centres, centres)
        xy = np.stack([xx.ravel(), yy.ravel()], 1)
        counts = rng.poisson(0.3, (len(xy), synthetic.n_vars))
        obs = pd.DataFrame({"library_id": lib}, index=[f"{lib}_bin{i}" for i in range(len(xy))])
        parts.append(
            AnnData(X=sp.csr_matrix(counts, dtype=np.int64), obs=obs, var=synthetic.var[[]], obsm={"spatial": xy})
        )
    bins = anndata.concat(parts)
    bins.obs["library_id"] = bins.obs["library_id"].astype("category")
    bins.uns["spatial"] = {
        lib: {
            "images": dict(synthetic.uns["spatial"][lib]["images"]),
            "scalefactors": {"tissue_hires_scalef": 1.0, "microns_per_pixel": MICRONS_PER_PIXEL},
        }
        for lib in ("S0", "S1")
    }
    return bins


@pytest.mark.parametrize("layout", ["square", "hexagonal"])
def test_pooling_sums_counts_exactly_and_each_bin_goes_to_its_grid_cell(adata, layout):
    bins = visium_hd_like(adata)
    spots = hist2st.pp.pool(bins, 100.0, layout=layout)
    assignment = spots.uns["hist2st_pooling"]["assignment"]
    assert (assignment >= 0).all()
    assert spots.X.dtype == np.int64
    # every pseudo-spot's counts are the sum of its members', every count is kept
    for spot in (0, spots.n_obs // 2, spots.n_obs - 1):
        np.testing.assert_array_equal(spots.X[spot].toarray()[0], bins.X[assignment == spot].sum(0).A1)
    for lib in ("S0", "S1"):
        np.testing.assert_array_equal(
            spots[spots.obs["library_id"] == lib].X.sum(0).A1, bins[bins.obs["library_id"] == lib].X.sum(0).A1
        )
    np.testing.assert_array_equal(spots.obs["n_members"], np.bincount(assignment))
    # each bin is pooled into the grid cell around the nearest grid point; a spot sits at its members' mean
    step = 100.0 / MICRONS_PER_PIXEL
    for lib in ("S0", "S1"):
        b = (bins.obs["library_id"] == lib).to_numpy()
        s = np.flatnonzero((spots.obs["library_id"] == lib).to_numpy())
        xy, local = bins.obsm["spatial"][b], np.searchsorted(s, assignment[b])
        grid = spots.obs[["array_col", "array_row"]].to_numpy()[s].astype(float)
        if layout == "square":
            points = grid * step
        else:
            points = grid * [step / 2, step * np.sqrt(3) / 2]
        offset = xy[0] - points[local[0]]  # the grid's origin, where the section's first bin is
        if layout == "square":
            offset = offset + step / 2
        distance = np.linalg.norm(xy - (points[local] + offset), axis=1)
        nearest, _ = cKDTree(points + offset).query(xy)
        np.testing.assert_allclose(distance, nearest, atol=1e-9)
        for k in (0, len(s) // 2):
            np.testing.assert_allclose(spots.obsm["spatial"][s[k]], xy[local == k].mean(0))
    if layout == "hexagonal":
        assert ((spots.obs["array_row"] + spots.obs["array_col"]) % 2 == 0).all()
        degree = np.diff(spots.obsp["spatial_connectivities"].indptr)
        assert np.median(degree) == 6
    entry = spots.uns["spatial"]["S0"]
    assert entry["images"]["hires"] is bins.uns["spatial"]["S0"]["images"]["hires"]  # not copied
    assert entry["scalefactors"]["spot_diameter_fullres"] == pytest.approx(step)
    assert entry["metadata"]["microns_per_pixel"] == MICRONS_PER_PIXEL


def test_pool_refuses_an_unknown_scale_and_bad_arguments(adata):
    bins = visium_hd_like(adata)
    del bins.uns["spatial"]
    with pytest.raises(ValueError, match="microns_per_unit="):
        hist2st.pp.pool(bins, 55.0)
    with pytest.raises(ValueError, match="`layout`"):
        hist2st.pp.pool(bins, 55.0, layout="hex", microns_per_unit=1.0)
    with pytest.raises(ValueError, match="`spot_microns`"):
        hist2st.pp.pool(bins, -5, microns_per_unit=1.0)
    cells = hist2st.pp.pool(bins, 55.0, microns_per_unit=1.0)  # coordinates in micrometres, as Xenium cells
    assert cells.uns["spatial"]["S0"]["scalefactors"]["spot_diameter_fullres"] == 55.0
    # a spatialdata-io Visium HD table: full-resolution pixels, no scale factors, bins of a known side
    spots = hist2st.pp.pool(bins, 55.0, bin_microns=16)
    assert spots.uns["hist2st_pooling"]["microns_per_unit"]["S0"] == pytest.approx(MICRONS_PER_PIXEL)


def test_predictions_on_pseudo_spots_map_back_onto_the_bins(adata, trained):
    bins = visium_hd_like(adata)
    bins.var_names = adata.var_names
    spots = hist2st.pp.pool(bins, 100.0, layout="square", min_members=20)
    dropped = spots.uns["hist2st_pooling"]["assignment"] < 0
    assert dropped.any()  # cells at the slide's edge hold fewer bins
    hist2st.tl.predict(spots, trained, show_progress_bar=False)
    assert spots.uns["hist2st"]["crop_microns"] == pytest.approx(trained.preprocessing["crop_microns"])
    shuffled = bins[np.random.default_rng(1).permutation(bins.n_obs)].copy()
    hist2st.pp.unpool(spots, shuffled)
    layer = shuffled.layers["hist2st"]
    spot = pd.Series(spots.uns["hist2st_pooling"]["assignment"], index=bins.obs_names)[shuffled.obs_names].to_numpy()
    np.testing.assert_array_equal(layer[spot >= 0], spots.layers["hist2st"][spot[spot >= 0]])
    assert np.isnan(layer[spot < 0]).all()
    assert shuffled.uns["hist2st"]["pooling"]["spot_microns"] == 100.0
    with pytest.raises(ValueError, match="not the AnnData that was pooled"):
        hist2st.pp.unpool(spots, adata)
