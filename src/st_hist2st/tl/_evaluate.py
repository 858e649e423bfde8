from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse, stats

from st_hist2st._constants import Key
from st_hist2st._data._graph import get_connectivities
from st_hist2st._data._targets import counts_total, expression_targets, get_counts, spot_totals
from st_hist2st._deprecation import prediction_passed_as_layer, renamed_arguments
from st_hist2st._utils import (
    check_adata,
    check_not_view,
    check_var_names,
    column_blocks,
    get_libraries,
    library_rows,
)
from st_hist2st.tl._moran import expected_morans_i, morans_i

logger = logging.getLogger(__name__)


def predicted_genes(adata: AnnData, key: str) -> list[str]:
    """Genes of ``layers[key]`` that hold predictions: ``uns[key]['genes']``, else those not all NaN."""
    if key not in adata.layers:
        raise KeyError(
            f"`adata.layers[{key!r}]` does not exist; run `hist2st.tl.predict` first, or pass `key=` naming the "
            f"layer with the predictions (layers: {list(adata.layers)})."
        )
    info = adata.uns.get(key)
    if isinstance(info, dict) and "genes" in info:
        return [str(g) for g in info["genes"]]
    values = np.asarray(adata.layers[key])
    return adata.var_names[~np.isnan(values).all(0)].tolist()


def chosen_genes(adata: AnnData, key: str, genes: Sequence[str] | str | None) -> list[str]:
    """``genes`` (one name or several), checked to have predictions in ``layers[key]``; default all of those."""
    predicted = predicted_genes(adata, key)
    if genes is None:
        return predicted
    genes = [genes] if isinstance(genes, str) else list(genes)
    known = set(predicted)
    missing = [g for g in genes if g not in known]
    if missing:
        raise KeyError(f"`genes` has genes without predictions in `layers[{key!r}]`, e.g. {missing[:5]}.")
    return genes


def recorded_median_total(adata: AnnData, key: str) -> float | None:
    """The training spots' median total count :func:`~st_hist2st.tl.predict` recorded in ``uns[key]``, if any."""
    info = adata.uns.get(key)
    return info.get("median_total") if isinstance(info, dict) else None


def observed_targets(adata: AnnData, key: str, layer: str | None, genes: Sequence[str] | None = None) -> pd.DataFrame:
    """Observed expression (raw counts in ``layer``) of ``genes`` as the targets; default the predicted genes.

    Normalised by each spot's total over the predicted genes, or over all genes where the model was trained
    with ``normalize_over='all'`` (recorded in ``uns[key]``).
    """
    predicted = predicted_genes(adata, key)
    genes = predicted if genes is None else list(genes)
    info = adata.uns.get(key)
    over = info.get("normalize_over", "genes") if isinstance(info, dict) else "genes"
    if over == "all":
        totals = spot_totals(adata, layer)
    else:  # over the predicted genes: their sum in the targets' own pass when they are all asked for
        totals = None if genes == predicted else counts_total(adata, predicted, layer)
    counts = get_counts(adata, genes, layer)
    return pd.DataFrame(expression_targets(counts, totals), index=adata.obs_names, columns=genes)


def spot_graph(
    adata: AnnData, library_key: str | None, connectivity_key: str, spatial_key: str
) -> sparse.csr_matrix | None:
    """``obsp[connectivity_key]``, else the graph by the paper's rule; ``None`` without spot coordinates."""
    if connectivity_key not in adata.obsp and spatial_key not in adata.obsm:
        logger.info("no spot graph and no coordinates: Moran's I is not computed")
        return None
    return get_connectivities(
        adata, library_key=library_key, connectivity_key=connectivity_key, spatial_key=spatial_key
    )


def rank_correlation(a: pd.Series | np.ndarray, b: pd.Series | np.ndarray) -> float:
    """Spearman correlation over the entries finite in both; NaN with fewer than 3."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 3:
        return float("nan")
    return float(stats.spearmanr(a[keep], b[keep]).statistic)


def interval_layers(adata: AnnData, key: str, genes: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The predictive intervals :func:`~st_hist2st.tl.predict` wrote with ``uncertainty=True``, by level name."""
    info = adata.uns.get(key)
    record = info.get("uncertainty") if isinstance(info, dict) else None
    if not isinstance(record, dict):
        return {}
    out, view = {}, adata[:, genes]
    for name, (lower, upper) in record.get("intervals", {}).items():
        if lower in adata.layers and upper in adata.layers:
            out[str(name)] = (
                np.asarray(view.layers[lower], dtype=np.float64),
                np.asarray(view.layers[upper], dtype=np.float64),
            )
        else:
            logger.warning("the interval layers %r and %r are gone: their coverage is not computed", lower, upper)
    return out


def covered(obs: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which observed values lie inside their interval, and which have one (finite ends)."""
    known = np.isfinite(lower) & np.isfinite(upper)
    return known & (obs >= lower) & (obs <= upper), known


def pearson_columns(pred: np.ndarray, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pearson r and two-sided p-value per column; NaN where either column is constant."""
    n = pred.shape[0]
    r = np.empty(pred.shape[1])
    for block in column_blocks(*pred.shape):
        pc, oc = pred[:, block] - pred[:, block].mean(0), obs[:, block] - obs[:, block].mean(0)
        denom = np.sqrt((pc**2).sum(0) * (oc**2).sum(0))
        with np.errstate(invalid="ignore", divide="ignore"):
            r[block] = np.where(denom > 0, (pc * oc).sum(0) / denom, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.clip(r, -1.0, 1.0)
        t = r * np.sqrt(max(n - 2, 0) / np.maximum(1 - r**2, 1e-300))
    p = 2 * stats.t.sf(np.abs(t), df=max(n - 2, 1)) if n > 2 else np.full_like(r, np.nan)
    return r, np.where(np.isnan(r), np.nan, p)


def evaluate(
    adata: AnnData,
    key: str = Key.prediction,
    *,
    layer: str | None = None,
    genes: Sequence[str] | None = None,
    library_key: str | None = Key.library,
    moran: bool = True,
    connectivity_key: str = Key.connectivities,
    spatial_key: str = Key.spatial,
    key_added: str | None = None,
    copy: bool | None = None,
    **deprecated: Any,
) -> pd.DataFrame | None:
    """Pearson r between predicted and observed expression, per gene and library, as the paper reports it.

    The observed counts are transformed exactly as the model's targets (``log10(1 + 1e4 * c / sum(c))``,
    the sum over the genes the model predicts, or over all genes for a model trained with
    ``normalize_over='all'``). A gene constant in a library (in the prediction or the observation) gets NaN
    there; NaNs are counted in the summary, not hidden.

    Where :func:`~st_hist2st.tl.predict` wrote predictive intervals (``uncertainty=True``), their coverage is
    reported too: the fraction of observed values inside each interval (``coverage80`` for the 80 % one; a
    calibrated model has about 0.8).

    Parameters
    ----------
    adata
        Spots with raw counts and predictions in ``layers[key]`` (from :func:`st_hist2st.tl.predict`).
    key
        Layer with the predictions (``key_added`` of :func:`~st_hist2st.tl.predict`).
    layer
        Layer with the raw counts; ``None`` uses ``X``.
    genes
        Genes to evaluate; default every predicted gene.
    library_key
        Column of ``obs`` with the section of each spot.
    moran
        Also compute each gene's Moran's I in each library, predicted and observed (:func:`scanpy.metrics.morans_i`
        on the spot graph, as :func:`squidpy.gr.spatial_autocorr` does), and their Spearman correlation over the
        genes: whether the prediction ranks spatially variable genes as the measurement does. Where
        :func:`~st_hist2st.tl.predict` recorded the training spots' median total count, also the Moran's I a
        measurement would show by :func:`~st_hist2st.tl.spatial_autocorr` (``moran_expected``) and its Spearman
        correlation with the observed one.

    connectivity_key
        Key of the spot graph in ``obsp`` for Moran's I; built by the paper's rule when absent.
    spatial_key
        Key of the spot centres in ``obsm``, to build the graph.
    key_added
        Name of the ``var`` column and ``uns`` entry written; default ``f'{key}_pearson'``.
    copy
        ``False``: write the results into ``adata`` and return ``None``. ``True``: return the table and leave
        ``adata`` alone. Not given: both, as before 0.2 (with a FutureWarning; the default becomes ``False``).

    Returns
    -------
    With ``copy=True``, the tidy table with columns ``gene``, ``library``, ``r``, ``pvalue`` (and ``moran_pred``,
    ``moran_obs``, ``moran_expected`` with ``moran``; ``coverage80`` and so on with intervals). Otherwise
    ``adata`` gets ``var[key_added]`` (mean r over libraries, NaN for genes not evaluated) and
    ``uns[key_added]`` (per library and overall: mean and median r, the number of NaN genes, with ``moran``
    ``moran_spearman`` and ``moran_expected_spearman``, with intervals ``coverage80`` and so on; the table under
    ``'table'``).
    """
    current = {"key": key, "layer": layer}
    renamed_arguments("evaluate", deprecated, {"counts_layer": "layer"}, current)
    key, layer = current["key"], current["layer"]
    if prediction_passed_as_layer("evaluate", adata, layer):
        key, layer = layer, None
    check_adata(adata)
    check_var_names(adata)
    if copy is not True:
        check_not_view(adata)
    key_added = f"{key}_pearson" if key_added is None else key_added
    genes = chosen_genes(adata, key, genes)
    obs = observed_targets(adata, key, layer, genes).to_numpy(np.float64)
    pred = np.asarray(adata[:, genes].layers[key], dtype=np.float64)
    libs = get_libraries(adata, library_key)
    conn = spot_graph(adata, library_key, connectivity_key, spatial_key) if moran else None
    total = recorded_median_total(adata, key)
    intervals = interval_layers(adata, key, genes)
    rows, summary = [], {}
    for lib, idx in library_rows(libs):
        r, p = pearson_columns(pred[idx], obs[idx])
        row = pd.DataFrame({"gene": genes, "library": lib, "r": r, "pvalue": p})
        summary[str(lib)] = {
            "mean_r": float(np.nanmean(r)) if np.isfinite(r).any() else float("nan"),
            "median_r": float(np.nanmedian(r)) if np.isfinite(r).any() else float("nan"),
            "n_genes": len(genes),
            "n_nan": int(np.isnan(r).sum()),
        }
        if conn is not None:
            graph = conn[idx][:, idx]
            row["moran_pred"], row["moran_obs"] = morans_i(graph, pred[idx]), morans_i(graph, obs[idx])
            summary[str(lib)]["moran_spearman"] = rank_correlation(row["moran_pred"], row["moran_obs"])
            if total is not None:
                row["moran_expected"] = expected_morans_i(graph, pred[idx], total, row["moran_pred"])[0]
                summary[str(lib)]["moran_expected_spearman"] = rank_correlation(row["moran_expected"], row["moran_obs"])
        for name, (lower, upper) in intervals.items():
            inside, known = covered(obs[idx], lower[idx], upper[idx])
            row[f"coverage{name}"] = inside.sum(0) / np.maximum(known.sum(0), 1)
            summary[str(lib)][f"coverage{name}"] = float(inside.sum() / max(known.sum(), 1))
        rows.append(row)
    table = pd.concat(rows, ignore_index=True)
    for lib, s in summary.items():
        logger.info("%s: mean r %.4f over %d genes (%d NaN)", lib, s["mean_r"], s["n_genes"], s["n_nan"])
    if copy is True:
        return table
    per_gene = table.groupby("gene", sort=False)["r"].mean()
    adata.var[key_added] = per_gene.reindex(adata.var_names).to_numpy(np.float64)
    valid = table["r"].dropna()
    adata.uns[key_added] = {
        "key": key,
        "mean_r": float(valid.mean()) if len(valid) else float("nan"),
        **{
            name: float(np.nanmean([v[name] for v in summary.values()]))
            for name in ("moran_spearman", "moran_expected_spearman")
            if conn is not None and all(name in v for v in summary.values())
        },
        **{f"coverage{name}": float(np.mean([v[f"coverage{name}"] for v in summary.values()])) for name in intervals},
        "n_nan": int(table["r"].isna().sum()),
        "libraries": summary,
        "table": table.astype({"library": str}),
    }
    logger.info("added `adata.var[%r]` and `adata.uns[%r]`", key_added, key_added)
    if copy is None:
        warnings.warn(
            "`tl.evaluate` returns the table only with `copy=True` from the next release (squidpy's rule: "
            "`copy=False` writes into `adata` and returns None). Pass `copy=False` or `copy=True` to choose now; "
            f"the table is also in `adata.uns[{key_added!r}]['table']`.",
            FutureWarning,
            stacklevel=2,
        )
        return table
    return None
