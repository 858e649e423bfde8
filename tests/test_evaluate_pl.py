from __future__ import annotations

import types
import warnings

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import sparse, stats

import st_hist2st as hist2st
from st_hist2st._data._targets import expression_targets
from st_hist2st.tl._evaluate import observed_targets


def _predicted(n=30, genes=4, seed=0):
    rng = np.random.default_rng(seed)
    counts = rng.poisson(5, size=(n, genes)).astype(np.float32)
    counts[:, 3] = 0  # constant in every library
    adata = AnnData(counts, obs=pd.DataFrame({"library_id": pd.Categorical(["a"] * (n // 2) + ["b"] * (n - n // 2))}))
    adata.obs_names = [f"s{i}" for i in range(n)]
    adata.var_names = [f"g{i}" for i in range(genes)]
    pred = rng.normal(size=(n, genes)).astype(np.float32)
    pred[:, 3] = 1.0
    adata.layers["hist2st"] = pred
    adata.uns["hist2st"] = {"genes": list(adata.var_names), "n_models": 1}  # as tl.predict records it
    return adata


def test_evaluate_matches_a_hand_computed_r():
    adata = _predicted()
    table = hist2st.tl.evaluate(adata, copy=True)
    target = expression_targets(adata.X)
    a = (adata.obs["library_id"] == "a").to_numpy()
    expected = stats.pearsonr(adata.layers["hist2st"][a, 1], target[a, 1])
    row = table[(table["gene"] == "g1") & (table["library"] == "a")].iloc[0]
    assert row["r"] == pytest.approx(expected.statistic, abs=1e-6)
    assert row["pvalue"] == pytest.approx(expected.pvalue, rel=1e-4)
    assert set(table.columns) == {"gene", "library", "r", "pvalue"}
    assert len(table) == 8
    assert "hist2st_pearson" not in adata.uns and "hist2st_pearson" not in adata.var  # copy=True writes nothing


def test_evaluate_follows_squidpys_copy_rule_and_keeps_the_old_call_for_a_release():
    adata = _predicted()
    assert hist2st.tl.evaluate(adata, copy=False) is None
    written = adata.uns["hist2st_pearson"]["table"]
    with pytest.warns(FutureWarning, match="copy=True"):
        table = hist2st.tl.evaluate(_predicted())
    pd.testing.assert_frame_equal(table.astype({"library": str}), written)
    adata.layers["counts"] = adata.X.copy()
    with pytest.warns(FutureWarning, match="now `layer=`"):
        old = hist2st.tl.evaluate(adata, counts_layer="counts", copy=True)
    with pytest.warns(FutureWarning, match="`layer` now names the layer with the raw counts"):
        older = hist2st.tl.evaluate(adata, layer="hist2st", copy=True)
    pd.testing.assert_frame_equal(old, table)
    pd.testing.assert_frame_equal(older, table)


def test_evaluate_scores_one_library_as_it_scores_it_among_others():
    # one library is scored through a view of all rows, several through a mask of each one's rows
    both = _predicted()
    both.obsm["spatial"] = np.stack(np.divmod(np.arange(both.n_obs), 5), 1).astype(float)
    both.uns["hist2st"]["median_total"] = 20.0
    alone = both[both.obs["library_id"] == "b"].copy()
    among = hist2st.tl.evaluate(both, copy=True).query("library == 'b'").reset_index(drop=True)
    own = hist2st.tl.evaluate(alone, copy=True)
    assert "moran_expected" in own and own["r"].notna().sum() == 3
    pd.testing.assert_frame_equal(own.astype({"library": str}), among.astype({"library": str}))
    # spatial_autocorr averages over libraries: two identical libraries give the figures of one
    twin = alone.copy()
    twin.obs_names = [f"{name}_twin" for name in twin.obs_names]
    twin.obs["library_id"] = pd.Categorical(["twin"] * twin.n_obs)
    doubled = ad.concat([alone, twin], uns_merge="first")
    doubled.obs["library_id"] = doubled.obs["library_id"].astype("category")
    pd.testing.assert_frame_equal(
        hist2st.tl.spatial_autocorr(alone, copy=True), hist2st.tl.spatial_autocorr(doubled, copy=True)
    )


def test_evaluate_some_genes_normalises_by_all_predicted_genes():
    adata = _predicted()
    full = hist2st.tl.evaluate(adata, copy=True).set_index(["gene", "library"])
    some = hist2st.tl.evaluate(adata, genes=["g2", "g0"], copy=True).set_index(["gene", "library"])
    pd.testing.assert_frame_equal(some, full.loc[some.index])
    adata.X[0, 1] = 0.5  # a gene not asked for still counts in every spot's total, so it is checked too
    with pytest.raises(ValueError, match="non-integer"):
        hist2st.tl.evaluate(adata, genes=["g0"], copy=True)


def test_pearson_columns_in_blocks_equals_the_direct_formula():
    from st_hist2st.tl._evaluate import pearson_columns

    rng = np.random.default_rng(3)
    pred = rng.normal(size=(5000, 1700))  # more values than one block: the columns go in three blocks
    obs = 0.2 * pred + rng.normal(size=pred.shape)
    pred[:, 900] = 2.0  # constant, in the second block
    r, _ = pearson_columns(pred, obs)
    pc, oc = pred - pred.mean(0), obs - obs.mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        direct = (pc * oc).sum(0) / np.sqrt((pc**2).sum(0) * (oc**2).sum(0))
    np.testing.assert_allclose(r, direct, rtol=1e-12)
    assert np.isnan(r[900]) and np.isfinite(np.delete(r, 900)).all()


def test_evaluate_counts_constant_genes_as_nan():
    adata = _predicted()
    hist2st.tl.evaluate(adata, copy=False)
    table = adata.uns["hist2st_pearson"]["table"]
    assert table.loc[table["gene"] == "g3", "r"].isna().all()
    summary = adata.uns["hist2st_pearson"]
    assert summary["n_nan"] == 2
    assert summary["libraries"]["a"]["n_nan"] == 1
    assert np.isnan(adata.var.loc["g3", "hist2st_pearson"])
    assert summary["mean_r"] == pytest.approx(table["r"].mean())


def test_evaluate_needs_predictions():
    adata = _predicted()
    with pytest.raises(KeyError, match="tl.predict"):
        hist2st.tl.evaluate(adata, "nothing")


def test_region_ari_recovers_known_clusters():
    rng = np.random.default_rng(0)
    n, genes = 90, 20
    labels = np.repeat(["tumour", "stroma", "immune"], n // 3)
    centres = rng.normal(0, 5, size=(3, genes))
    pred = centres[np.repeat(np.arange(3), n // 3)] + rng.normal(0, 0.5, size=(n, genes))
    labels = labels.astype(object)
    labels[::10] = "undetermined"
    adata = AnnData(
        rng.poisson(3, size=(n, genes)).astype(np.float32),
        obs=pd.DataFrame({"library_id": pd.Categorical(["x"] * n), "label": labels}),
    )
    adata.obs_names = [f"s{i}" for i in range(n)]
    adata.layers["hist2st"] = pred.astype(np.float32)
    result = hist2st.tl.region_ari(adata, label_key="label")
    assert result.loc["x", "ari"] == pytest.approx(1.0)
    assert result.loc["x", "n_spots"] == n - n // 10
    assert result.loc["x", "n_clusters"] == 3
    unlabelled = hist2st.tl.region_ari(adata, n_clusters=3)
    assert "observed" in unlabelled.loc["x", "reference"]
    assert -1 <= unlabelled.loc["x", "ari"] <= 1


@pytest.fixture
def predicted(trained, adata):
    hist2st.tl.predict(adata, trained, show_progress_bar=False)
    hist2st.tl.evaluate(adata, copy=False)
    return adata


def test_spatial_pred_draws_on_given_axes_and_saves(predicted, tmp_path):
    fig, axes = plt.subplots(2, 2)
    out = hist2st.pl.spatial_pred(
        predicted, ["gene0", "gene1"], library_id="S1", ax=axes, save=tmp_path / "sp.png", return_fig=True, show=False
    )
    assert out is fig
    assert (tmp_path / "sp.png").stat().st_size > 0
    assert "r = " in axes[0, 1].get_title() and axes[0, 0].get_title() == "gene0 observed"
    # the r in the title is the library's own, as tl.evaluate reports it
    table = hist2st.tl.evaluate(predicted, copy=True)
    r = table.query("gene == 'gene1' and library == 'S1'")["r"].item()
    assert axes[1, 1].get_title() == f"gene1 predicted (r = {r:.2f})"
    # a shared colour scale per gene
    left, right = axes[0, 0].collections[0].get_clim(), axes[0, 1].collections[0].get_clim()
    assert left == right
    assert len(axes[0, 0].images) == 1  # the H&E under the spots
    with pytest.raises(ValueError, match="2 axes per gene"):
        hist2st.pl.spatial_pred(predicted, ["gene0"], ax=axes)
    plt.close("all")


def test_spatial_pred_own_scales_span_each_panels_values(predicted):
    axes = hist2st.pl.spatial_pred(predicted, ["gene0"], library_id="S1", shared_scale=False, show=False)
    spots = (predicted.obs["library_id"] == "S1").to_numpy()
    observed = observed_targets(predicted[spots], "hist2st", None)["gene0"].to_numpy()
    pred = np.asarray(predicted[spots, "gene0"].layers["hist2st"], dtype=np.float64).ravel()
    assert axes[0, 0].collections[0].get_clim() == pytest.approx((observed.min(), observed.max()), rel=1e-5)
    assert axes[0, 1].collections[0].get_clim() == pytest.approx((pred.min(), pred.max()), rel=1e-5)
    # the predictions span less than the measurement, so the two scales differ
    assert axes[0, 0].collections[0].get_clim() != axes[0, 1].collections[0].get_clim()
    plt.close("all")


def test_spatial_pred_draws_without_notices_and_shows_once(predicted, monkeypatch):
    shown = []
    monkeypatch.setattr(matplotlib, "get_backend", lambda: "module://matplotlib_inline.backend_inline")
    monkeypatch.setattr(plt, "show", lambda: shown.append(True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # a notebook's default: shown once, nothing returned for the cell to draw a second time
        assert hist2st.pl.spatial_pred(predicted, ["gene0"], library_id="S1") is None
    assert shown == [True]
    assert [str(w.message) for w in caught] == []
    with pytest.warns(FutureWarning, match="now `image_key=`"):
        axes = hist2st.pl.spatial_pred(predicted, "gene0", img_key="hires", show=False)
    assert axes.shape == (1, 2)
    plt.close("all")


def test_gene_correlation_and_history_plots(predicted, trained, tmp_path):
    fig, ax = plt.subplots()
    assert hist2st.pl.gene_correlation(predicted, ax=ax, save=tmp_path / "gc.png", show=False) is ax
    assert (tmp_path / "gc.png").exists()
    with pytest.warns(FutureWarning, match="pearson_key"):
        hist2st.pl.gene_correlation(predicted, key="hist2st_pearson", show=False)
    fig2, ax2 = plt.subplots()
    assert hist2st.pl.training_history(trained, ax=ax2, save=tmp_path / "th.png", return_fig=True, show=False) is fig2
    assert (tmp_path / "th.png").exists()
    plt.close("all")


def test_history_plot_leaves_out_an_epoch_cut_short():
    history = pd.DataFrame(
        {"epoch": [0, 1, 2], "train_loss": [3.0, 2.0, 9.0], "val_pearson": [0.1, 0.2, np.nan], "complete": [1, 1, 0]}
    )
    ax = hist2st.pl.training_history(types.SimpleNamespace(history=history), show=False)
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), [1, 2])
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), [3.0, 2.0])
    with pytest.raises(ValueError, match="within its first epoch"):
        hist2st.pl.training_history(types.SimpleNamespace(history=history.iloc[2:]), show=False)
    plt.close("all")


def test_spatial_pred_draws_spots_without_an_image_in_uns(predicted):
    # images kept elsewhere (a SpatialData object): the spots are drawn without the H&E under them
    del predicted.uns["spatial"]
    axes = hist2st.pl.spatial_pred(predicted, "gene0", library_id="S0", show=False)
    assert axes.shape == (1, 2) and axes[0, 1].collections and not axes[0, 1].images
    plt.close("all")


def test_evaluate_compares_morans_i_with_squidpys(adata):
    from st_hist2st.pl._utils import import_squidpy

    sq = import_squidpy()
    hist2st.pp.spatial_graph(adata)
    # a perfect prediction: the observed targets themselves, so the Moran's I of both agree exactly
    adata.layers["hist2st"] = expression_targets(adata.X.toarray())
    adata.uns["hist2st"] = {"genes": list(adata.var_names), "n_models": 1}
    table = hist2st.tl.evaluate(adata, copy=True)
    np.testing.assert_allclose(table["moran_pred"], table["moran_obs"])
    hist2st.tl.evaluate(adata, copy=False)
    assert adata.uns["hist2st_pearson"]["libraries"]["S0"]["moran_spearman"] == pytest.approx(1.0)
    # the statistic is squidpy's, on the same graph, for one library
    s0 = adata[adata.obs["library_id"] == "S0"].copy()
    s0.obsp["spatial_connectivities"] = adata.obsp["spatial_connectivities"][
        np.flatnonzero(adata.obs["library_id"] == "S0")
    ][:, np.flatnonzero(adata.obs["library_id"] == "S0")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = sq.gr.spatial_autocorr(s0, layer="hist2st", mode="moran", copy=True, n_perms=None)
    ours = table[table["library"] == "S0"].set_index("gene")["moran_obs"]
    np.testing.assert_allclose(ours.loc[reference.index], reference["I"], rtol=1e-6)


def test_spatial_pred_shows_several_libraries(predicted):
    axes = hist2st.pl.spatial_pred(predicted, ["gene0", "gene1"], library_id=["S0", "S1"], show=False)
    assert axes.shape == (4, 2)
    assert axes[0, 0].get_title() == "S0: gene0 observed" and axes[3, 1].get_title().startswith("S1: gene1 predicted")
    with pytest.raises(ValueError, match=r"Unknown `library_id` \['S9'\]"):
        hist2st.pl.spatial_pred(predicted, "gene0", library_id=["S0", "S9"], show=False)
    plt.close("all")


def test_morans_i_leaves_torch_threads_as_the_caller_set_them(monkeypatch):
    # numba's OpenMP layer, started by scanpy's first Moran's I in a process, resets the runtime torch shares
    import scanpy as sc
    import torch

    from st_hist2st.tl._evaluate import morans_i

    scanpy_morans_i = sc.metrics.morans_i

    def resets_threads(graph, values):
        result = scanpy_morans_i(graph, values)
        torch.set_num_threads(before + 1)
        return result

    monkeypatch.setattr(sc.metrics, "morans_i", resets_threads)
    before = torch.get_num_threads()
    graph = sparse.random(40, 40, density=0.1, format="csr", random_state=0)
    values = np.random.default_rng(0).normal(size=(40, 3))
    try:
        assert np.allclose(morans_i(graph, values), scanpy_morans_i(graph, values.T))
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)
