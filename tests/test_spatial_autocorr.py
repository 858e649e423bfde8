from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import sparse, stats

import st_hist2st as hist2st
from st_hist2st.tl._moran import expected_morans_i, morans_i, poisson_target_variance

TOTAL = 2000.0  # counts of a spot


def _target(counts):
    return np.log10(1.0 + 1e4 * np.asarray(counts, dtype=np.float64) / TOTAL)


def _grid_graph(side: int) -> sparse.csr_matrix:
    """Rook neighbours on a ``side`` x ``side`` grid."""
    idx = np.arange(side * side).reshape(side, side)
    pairs = np.concatenate([np.c_[idx[:, :-1].ravel(), idx[:, 1:].ravel()], np.c_[idx[:-1].ravel(), idx[1:].ravel()]])
    graph = sparse.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(side * side,) * 2)
    return (graph + graph.T).tocsr()


def _expected_target(mean_counts):
    """The expected target of Poisson counts at each mean, summed over the distribution."""
    counts = np.arange(400)
    return stats.poisson.pmf(counts[None, :], np.ravel(mean_counts)[:, None]) @ _target(counts)


@pytest.mark.parametrize("mean_count", [0.02, 0.5, 3.0, 40.0, 2500.0])
def test_poisson_target_variance_is_the_variance_of_sampled_targets(mean_count):
    rng = np.random.default_rng(0)
    sampled = _target(rng.poisson(mean_count, 400_000))
    # the prediction is the expected target; the variance is that of the counts whose expected target it is
    predicted = sampled.mean()
    assert poisson_target_variance(np.array([predicted]), TOTAL)[0] == pytest.approx(sampled.var(), rel=0.02)


def test_poisson_target_variance_of_no_expression_is_zero_and_bad_totals_are_refused():
    np.testing.assert_array_equal(poisson_target_variance(np.array([0.0, -0.3]), TOTAL), [0.0, 0.0])
    for bad in (0, -5.0, np.nan, True):
        with pytest.raises(ValueError, match="`median_total` must be a positive number"):
            poisson_target_variance(np.array([0.5]), bad)


def test_expected_morans_i_is_that_of_simulated_measurements():
    side = 24
    graph = _grid_graph(side)
    y, x = np.divmod(np.arange(side * side), side)
    pattern = np.exp(-((x - 8.0) ** 2 + (y - 14.0) ** 2) / 60.0)  # one smooth blob
    # three genes with the same pattern at 0.2, 3 and 60 counts per spot on average
    means = np.stack([level * (0.2 + pattern) for level in (0.2, 3.0, 60.0)], axis=1)
    predicted = _expected_target(means).reshape(means.shape)
    expected, moran, share = expected_morans_i(graph, predicted, TOTAL)
    rng = np.random.default_rng(0)
    measured = np.mean([morans_i(graph, _target(rng.poisson(means))) for _ in range(60)], axis=0)
    np.testing.assert_allclose(expected, measured, atol=0.02)
    # the prediction is equally smooth at every depth; the measurement is not, and the expectation follows it
    np.testing.assert_allclose(moran, moran[0], atol=0.02)
    assert expected[0] < 0.5 * expected[2] and np.all(np.diff(share) > 0)
    assert measured[0] < 0.5 * measured[2]


def test_predictions_below_zero_are_read_as_no_expression():
    """A model predicts a little below 0 where a gene has no counts; no measurement shows that field."""
    side = 24
    graph = _grid_graph(side)
    y, x = np.divmod(np.arange(side * side), side)
    blob = np.exp(-((x - 8.0) ** 2 + (y - 14.0) ** 2) / 60.0)
    smooth = np.sin(x / 5.0) * np.cos(y / 6.0)
    # expressed only inside the blob, at 3 counts at most; outside it the model predicts a smooth field below 0
    means = 3.0 * np.clip(blob - 0.3, 0.0, None)
    partly = np.where(means > 0, _expected_target(means), -0.05 - 0.05 * (1 + smooth))
    nowhere = -0.1 - 0.05 * (1 + smooth)  # a gene without counts in training: a smooth field below 0
    predicted = np.stack([partly, nowhere], axis=1)
    expected, moran, share = expected_morans_i(graph, predicted, TOTAL)
    rng = np.random.default_rng(0)
    measured = np.mean([morans_i(graph, _target(rng.poisson(means[:, None]))) for _ in range(60)], axis=0)
    assert expected[0] == pytest.approx(measured[0], abs=0.02)
    assert np.isnan(expected[1]) and np.isnan(share[1])  # its measurement: zeros everywhere, no Moran's I
    np.testing.assert_allclose(moran, morans_i(graph, predicted))  # the predicted layer's own, unchanged
    assert moran[1] > 0.9


def _predicted_section(side=12, seed=0):
    """Predictions of four genes on a grid section: a smooth pattern at many and at few counts, a rough one,
    and a constant one."""
    rng = np.random.default_rng(seed)
    y, x = np.divmod(np.arange(side * side), side)
    smooth = np.sin(x / 3.0) + np.cos(y / 4.0)
    rough = rng.normal(size=side * side)
    pred = np.stack([1.0 + 0.2 * smooth, 0.05 + 0.01 * smooth, 1.0 + 0.2 * rough, np.full(side * side, 0.7)], axis=1)
    adata = AnnData(
        np.zeros((side * side, 5), dtype=np.float32),
        obs=pd.DataFrame({"library_id": pd.Categorical(["s"] * side * side)}, index=[f"c{i}" for i in range(side**2)]),
        var=pd.DataFrame(index=["many", "few", "rough", "flat", "unpredicted"]),
    )
    adata.obsm["spatial"] = np.c_[x, y].astype(np.float64) * 100.0
    adata.obsp["spatial_connectivities"] = _grid_graph(side)
    layer = np.full(adata.shape, np.nan, dtype=np.float32)
    layer[:, :4] = pred
    adata.layers["hist2st"] = layer
    adata.uns["hist2st"] = {"genes": ["many", "few", "rough", "flat"], "median_total": TOTAL}
    return adata


def test_spatial_autocorr_ranks_a_smooth_gene_with_many_counts_first(tmp_path):
    adata = _predicted_section()
    before = adata.copy()
    table = hist2st.tl.spatial_autocorr(adata, copy=True)
    assert list(table.columns) == ["I", "I_prediction", "signal_share"]
    assert list(table.index[:3]) == ["many", "few", "rough"] and np.isnan(table.loc["flat", "I"])
    # the predicted layer alone ranks the two smooth genes alike
    assert table.loc["many", "I_prediction"] == pytest.approx(table.loc["few", "I_prediction"], abs=1e-6)
    assert table.loc["few", "I"] < 0.5 * table.loc["many", "I"]
    assert table.loc["rough", "I_prediction"] < 0.2
    assert "hist2st_moranI" not in adata.uns  # copy=True writes nothing
    assert hist2st.tl.spatial_autocorr(adata, key_added="svg") is None
    pd.testing.assert_frame_equal(adata.uns["svg"], table)
    adata.write_h5ad(tmp_path / "svg.h5ad")  # the table and the recorded depth survive a round trip
    read = ad.read_h5ad(tmp_path / "svg.h5ad")
    pd.testing.assert_frame_equal(read.uns["svg"], table)
    pd.testing.assert_frame_equal(hist2st.tl.spatial_autocorr(read, copy=True), table)
    del adata.uns["svg"]
    for slot in ("layers", "obsm", "obsp"):
        assert getattr(adata, slot).keys() == getattr(before, slot).keys()
    np.testing.assert_array_equal(adata.layers["hist2st"], before.layers["hist2st"])


def test_spatial_autocorr_scores_each_section_on_its_own_graph():
    one, two = _predicted_section(seed=0), _predicted_section(seed=1)
    two.obs_names = [f"d{i}" for i in range(two.n_obs)]
    two.obs["library_id"] = pd.Categorical(["t"] * two.n_obs)
    both = ad.concat([one, two], uns_merge="first")
    both.obs["library_id"] = pd.Categorical(both.obs["library_id"])
    both.obsp["spatial_connectivities"] = sparse.block_diag(
        [one.obsp["spatial_connectivities"], two.obsp["spatial_connectivities"]], format="csr"
    )
    table = hist2st.tl.spatial_autocorr(both, copy=True)
    singles = [hist2st.tl.spatial_autocorr(a, copy=True) for a in (one, two)]
    mean = (singles[0]["I"] + singles[1]["I"].reindex(singles[0].index)) / 2
    np.testing.assert_allclose(table["I"], mean.reindex(table.index))


def test_spatial_autocorr_refuses_what_it_cannot_score():
    adata = _predicted_section()
    with pytest.raises(KeyError, match=r"layers\['other'\]"):
        hist2st.tl.spatial_autocorr(adata, key="other", copy=True)
    with pytest.raises(KeyError, match="without predictions"):
        hist2st.tl.spatial_autocorr(adata, genes=["many", "unpredicted"], copy=True)
    del adata.uns["hist2st"]["median_total"]
    with pytest.raises(ValueError, match="median total count.*pass `median_total=`"):
        hist2st.tl.spatial_autocorr(adata, copy=True)
    table = hist2st.tl.spatial_autocorr(adata, median_total=TOTAL, copy=True)
    assert table.index[0] == "many"
    with pytest.raises(ValueError, match="`median_total` must be a positive number"):
        hist2st.tl.spatial_autocorr(adata, median_total=-1.0, copy=True)
    del adata.obsp["spatial_connectivities"], adata.obsm["spatial"]
    with pytest.raises(KeyError, match="spot graph or the spot centres"):
        hist2st.tl.spatial_autocorr(adata, median_total=TOTAL, copy=True)
    view = _predicted_section()[:50]
    with pytest.raises(ValueError, match="view"):
        hist2st.tl.spatial_autocorr(view)


def test_evaluate_reports_the_expected_morans_i_beside_the_predicted_one():
    adata = _predicted_section()
    rng = np.random.default_rng(0)
    counts = np.zeros(adata.shape, dtype=np.float32)
    counts[:, :4] = rng.poisson(20, size=(adata.n_obs, 4))
    adata.X = counts
    table = hist2st.tl.evaluate(adata, genes=["many", "few", "rough"], copy=True)
    ours = hist2st.tl.spatial_autocorr(adata, genes=["many", "few", "rough"], copy=True)
    np.testing.assert_allclose(table.set_index("gene")["moran_expected"], ours["I"].reindex(["many", "few", "rough"]))
    hist2st.tl.evaluate(adata, genes=["many", "few", "rough"], copy=False)
    assert "moran_expected_spearman" in adata.uns["hist2st_pearson"]
    del adata.uns["hist2st"]["median_total"]
    assert "moran_expected" not in hist2st.tl.evaluate(adata, copy=True).columns
