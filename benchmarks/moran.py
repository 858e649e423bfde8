"""Does a model rank genes by spatial autocorrelation as the measurement does, and what does a trivial ranking get?

For a saved model and a held-out her2st section, prints the Spearman correlation over the model's genes
between the measured Moran's I and: the Moran's I of the predictions (what ``tl.evaluate`` reports as
``moran_spearman``); the Moran's I a measurement would show, by ``tl.spatial_autocorr`` (``tl.evaluate``'s
``moran_expected_spearman``); each gene's mean predicted and mean measured expression (rankings by depth
alone: a gene with more counts has less sampling noise); and, for a model with a ZINB head, the predicted
Moran's I scaled by the share of the gene's predicted variance that is signal rather than the head's sampling
noise. Then a ceiling
that needs no model: the Moran's I of the measured expression itself, projected on the top ``k`` principal
components of the other sections' measured expression (``--ranks``), the best that any prediction confined
to the expression programmes seen in training could reach, however accurate; and how many principal
components the predictions and the measurement spread their variance over.

    python benchmarks/her2st.py --test C4 --set zinb=0.25 init_zinb_bias=true --out runs/zinb
    python benchmarks/moran.py runs/zinb/model_C4_seed0 --section C4

Several models (seeds of one split) are averaged, as ``tl.predict`` averages them; the ZINB line needs one.

``--colour-ridge W`` (and ``--colour-ridge-rank K``) scores the model blended with a colour ridge (of rank ``K``)
fitted on its training sections, as ``'blend'`` predicts.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
from blend import fitted_ridge, with_colour_ridge
from her2st import ROOT

import st_hist2st as hist2st
from st_hist2st._data._targets import expression_targets, get_counts, spot_totals
from st_hist2st._uncertainty import target_distribution
from st_hist2st.tl._evaluate import observed_targets, rank_correlation, spot_graph
from st_hist2st.tl._moran import expected_morans_i, morans_i
from st_hist2st.tl._predict import median_total_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="+", help="saved model folders (several: their predictions averaged)")
    parser.add_argument("--section", default="C4", help="held-out her2st section")
    parser.add_argument("--ranks", type=int, nargs="+", default=[3, 10, 30, 100], help="principal components kept")
    parser.add_argument(
        "--colour-ridge",
        type=float,
        default=None,
        help="blend in a colour ridge fitted on the model's training sections with this weight (for models "
        "trained without one, as benchmarks/blend.py scores them)",
    )
    parser.add_argument("--colour-ridge-rank", type=int, default=None, help="with --colour-ridge: the ridge's rank")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    adata = hist2st.datasets.her2st(ROOT)
    held = adata[adata.obs["library_id"] == args.section].copy()
    models = [hist2st.Hist2ST.load(path) for path in args.model]
    if args.colour_ridge is not None:
        models = [
            with_colour_ridge(m, fitted_ridge(m, adata, args.colour_ridge_rank).state_dict(), args.colour_ridge)
            for m in models
        ]
    model = models[0]
    zinb = len(models) == 1 and model.training.zinb > 0
    result = [m.predict(held, return_zinb=zinb, show_progress_bar=False) for m in models]
    pred, params = result[0] if zinb else (np.mean(result, axis=0), None)
    held.layers["hist2st"] = np.full(held.shape, np.nan, dtype=np.float32)
    held.layers["hist2st"][:, held.var_names.get_indexer(model.genes)] = pred
    held.uns["hist2st"] = {"genes": model.genes, "normalize_over": model.preprocessing.get("normalize_over", "genes")}
    observed = observed_targets(held, "hist2st", model.preprocessing.get("layer"))[model.genes].to_numpy()
    graph = spot_graph(held, "library_id", "spatial_connectivities", "spatial")
    measured, predicted = morans_i(graph, observed), morans_i(graph, pred)
    print(f"{args.section}, {len(model.genes)} genes, {len(models)} model(s): Spearman with the measured Moran's I of")
    total = median_total_of(models)
    expected = expected_morans_i(graph, pred, total)[0]
    print(f"  the predictions' Moran's I: {rank_correlation(predicted, measured):.3f}")
    print(f"  the Moran's I a measurement would show (tl.spatial_autocorr): {rank_correlation(expected, measured):.3f}")
    print(f"  the mean predicted expression: {rank_correlation(pred.mean(0), measured):.3f}")
    print(f"  the mean measured expression: {rank_correlation(observed.mean(0), measured):.3f}")
    if params is not None:
        std, _ = target_distribution(*params, model.preprocessing["median_total"], (0.8,))
        signal, noise = pred.var(0), (std.astype(np.float64) ** 2).mean(0)
        scaled = predicted * signal / (signal + noise)
        print(f"  the predictions' Moran's I scaled by their signal share: {rank_correlation(scaled, measured):.3f}")
    for name, values in (("predictions", pred), ("measured expression", observed)):
        shares = np.cumsum(variance_shares(values))
        print(
            f"share of the variance of the {name} across spots in the top 1 / 3 components: {shares[0]:.3f} / "
            f"{shares[2]:.3f}; components for 90 %: {np.searchsorted(shares, 0.9) + 1}"
        )
    low, mid, high = np.nanpercentile(predicted, [5, 50, 95])
    mlow, mmid, mhigh = np.nanpercentile(measured, [5, 50, 95])
    print(
        f"Moran's I, 5th / 50th / 95th percentile: predicted {low:.3f} / {mid:.3f} / {high:.3f}, "
        f"measured {mlow:.3f} / {mmid:.3f} / {mhigh:.3f}"
    )
    others = adata[adata.obs["library_id"].isin(model.preprocessing["train_libraries"])]
    layer = model.preprocessing.get("layer")
    totals = spot_totals(others, layer) if model.preprocessing.get("normalize_over") == "all" else None
    training = expression_targets(get_counts(others, model.genes, layer), totals)
    for rank, projected in low_rank_projections(observed, training, args.ranks).items():
        print(
            f"  the measured expression on the top {rank} principal components of the training sections': "
            f"{rank_correlation(morans_i(graph, projected), measured):.3f}"
        )


def variance_shares(values: np.ndarray) -> np.ndarray:
    """The share of the variance of ``values`` (spots x genes) across spots in each principal component."""
    power = np.linalg.svd(values - values.mean(0), compute_uv=False) ** 2
    return power / power.sum()


def low_rank_projections(observed: np.ndarray, training: np.ndarray, ranks: list[int]) -> dict[int, np.ndarray]:
    """``observed`` (spots x genes) projected, around its own gene means, on the top principal components of
    ``training``: what is left of the measurement inside the expression programmes the training sections span."""
    _, _, components = np.linalg.svd(training - training.mean(0), full_matrices=False)
    centred, means = observed - observed.mean(0), observed.mean(0)
    return {k: centred @ components[:k].T @ components[:k] + means for k in ranks}


if __name__ == "__main__":
    main()
