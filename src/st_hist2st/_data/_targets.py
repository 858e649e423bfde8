"""Regression targets, raw counts and size factors, as the paper prepares them."""

from __future__ import annotations

import numpy as np
from anndata import AnnData

from st_hist2st._utils import column_blocks, get_matrix, to_dense


def get_counts(adata: AnnData, genes: list[str], layer: str | None = None) -> np.ndarray:
    """Raw counts of ``genes`` as a dense float32 ``(n_obs, n_genes)`` array, checked to be counts.

    Raises
    ------
    ValueError
        For NaN, negative or non-integer values.
    """
    matrix = get_matrix(adata, layer)
    idx = adata.var_names.get_indexer(genes)
    counts = to_dense(matrix[:, idx])
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    if np.isnan(counts).any():
        raise ValueError(f"{where} contains NaN; Hist2ST needs raw integer counts (pass `layer=` with the counts).")
    if (counts < 0).any():
        raise ValueError(f"{where} contains negative values; Hist2ST needs raw integer counts, not scaled data.")
    if not np.array_equal(counts, np.rint(counts)):
        raise ValueError(
            f"{where} contains non-integer values, so it does not hold raw counts (it looks normalised or "
            "log-transformed). Pass `layer=` naming the layer with raw counts, e.g. `adata.layers['counts']`."
        )
    return counts


def spot_totals(adata: AnnData, layer: str | None = None) -> np.ndarray:
    """Each spot's total count over all genes of ``adata`` (for ``normalize_over='all'``)."""
    return np.asarray(get_matrix(adata, layer).sum(1), dtype=np.float64).reshape(-1)


def counts_total(adata: AnnData, genes: list[str], layer: str | None = None) -> np.ndarray:
    """Each spot's total count over ``genes``, checked as :func:`get_counts` checks, a block of genes at a time."""
    total = np.zeros(adata.n_obs, dtype=np.float64)
    for block in column_blocks(adata.n_obs, len(genes)):
        total += get_counts(adata, genes[block], layer).sum(1, dtype=np.float64)
    return total


def expression_targets(counts: np.ndarray, totals: np.ndarray | None = None) -> np.ndarray:
    """The Hist2ST target ``log10(1 + 1e4 * c / sum(c))`` per spot.

    The sum is over the given genes (the paper's), or ``totals`` per spot when given. Spots with no counts get
    zeros.
    """
    target = np.array(counts, dtype=np.float64)  # one working copy, transformed in place
    total = target.sum(1, keepdims=True) if totals is None else np.asarray(totals, dtype=np.float64).reshape(-1, 1)
    target *= 1e4
    np.divide(target, total, out=target, where=total > 0)
    target[total[:, 0] <= 0] = 0.0
    np.add(target, 1.0, out=target)
    return np.log10(target, out=target).astype(np.float32)


def size_factors(counts: np.ndarray, totals: np.ndarray | None = None) -> np.ndarray:
    """Library size (over the given genes, or ``totals``) divided by its median within the section.

    1 where the median is 0.
    """
    total = np.asarray(counts, dtype=np.float64).sum(1) if totals is None else np.asarray(totals, dtype=np.float64)
    median = float(np.median(total)) if total.size else 0.0
    return (total / median if median > 0 else np.ones_like(total)).astype(np.float32)
