"""Moran's I of predictions, and the Moran's I a measurement with the predicted expression would show.

A prediction is each spot's expected expression, so it holds no sampling noise: every gene's predicted field
is about equally smooth. A measurement of the same section adds each spot's counting noise, which buries the
pattern of a gene with few counts and barely touches one with many. Moran's I is a ratio of the spatially
lagged covariance to the variance across spots; noise that is independent between spots adds to the variance
only, so the measurement's Moran's I is about the prediction's scaled by the share of the measured variance
that the predicted pattern holds.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import sparse, stats

from st_hist2st._utils import column_blocks, torch_threads_kept

#: Up to this mean count the mean and variance of the target are summed over the Poisson distribution (on a
#: grid of means); above it the delta method is within 0.2 % of that sum.
EXACT_UP_TO = 1000.0
_GRID = np.concatenate([[0.0], np.geomspace(1e-6, EXACT_UP_TO, 2000)])


def morans_i(graph: sparse.spmatrix, values: np.ndarray) -> np.ndarray:
    """Moran's I of each column of ``values`` ``(n_spots, n_genes)`` on ``graph``; NaN for a constant column."""
    import scanpy as sc

    values = np.asarray(values, dtype=np.float64)
    constant = np.ptp(values, axis=0) == 0
    out = np.full(values.shape[1], np.nan)
    if graph.nnz and (~constant).any():
        with torch_threads_kept():
            varying = values if not constant.any() else values[:, ~constant]
            out[~constant] = sc.metrics.morans_i(sparse.csr_matrix(graph), varying.T)
    return out


def poisson_target_variance(predicted: np.ndarray, median_total: float) -> np.ndarray:
    """Variance of the target ``log10(1 + 1e4 * c / T)`` for Poisson counts ``c`` at each predicted value.

    A spot has ``T`` counts (the training sections' median spot total) and each predicted value is the expected
    target of its gene's count, taken as Poisson: the variance is that of the Poisson distribution whose
    expected target is the prediction (tabulated over means up to :data:`EXACT_UP_TO` counts; the delta method
    above). Predictions at or below 0 have none.
    """
    scale = 1e4 / checked_median_total(median_total)
    predicted = np.asarray(predicted, dtype=np.float64)
    expected, variance = _poisson_table(scale)
    tabulated = np.interp(predicted, expected, variance, left=0.0)
    mean = np.clip((10.0**predicted - 1.0) / scale, 0.0, None)
    delta = (np.log10(np.e) * scale / (1.0 + scale * mean)) ** 2 * mean
    return np.where(predicted <= expected[-1], tabulated, delta)


def checked_median_total(value) -> float:
    """``value`` as a float, refused unless it is a positive, finite number of counts."""
    number = isinstance(value, int | float | np.number) and not isinstance(value, bool)
    if not number or not np.isfinite(value) or value <= 0:
        raise ValueError(f"`median_total` must be a positive number of counts, got {value!r}.")
    return float(value)


@lru_cache(maxsize=8)
def _poisson_table(scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of ``log10(1 + scale * c)`` for ``c`` Poisson, at each mean count of a grid."""
    counts = np.arange(int(EXACT_UP_TO + 12 * np.sqrt(EXACT_UP_TO) + 30))
    target = np.log10(1.0 + scale * counts)
    pmf = stats.poisson.pmf(counts[None, :], _GRID[:, None])
    first = pmf @ target
    return first, np.clip(pmf @ target**2 - first**2, 0.0, None)


def expected_morans_i(
    graph: sparse.spmatrix, predicted: np.ndarray, median_total: float, moran: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Moran's I a measurement of ``predicted`` ``(n_spots, n_genes)`` would show on ``graph``.

    Predicted values below 0, which no measured target takes, are read as no expression (0). Returns the
    expected Moran's I of the measurement, the Moran's I of the prediction as it is (``moran`` where it was
    computed already) and the signal share.
    """
    predicted = np.asarray(predicted, dtype=np.float64)
    moran = morans_i(graph, predicted) if moran is None else np.asarray(moran, dtype=np.float64)
    below = (predicted < 0).any(0)
    pattern = moran.copy()
    if below.any():
        pattern[below] = morans_i(graph, np.clip(predicted[:, below], 0.0, None))
    share = signal_share(predicted, median_total)
    return pattern * share, moran, share


def signal_share(predicted: np.ndarray, median_total: float) -> np.ndarray:
    """The share of a measurement's variance across spots that the prediction holds, per gene.

    The variance of ``predicted`` across spots over itself plus the mean Poisson variance of a spot's target
    (:func:`poisson_target_variance`), with values below 0 read as no expression (0); NaN for a gene that
    neither varies nor has counts.
    """
    signal, noise = np.zeros(predicted.shape[1]), np.zeros(predicted.shape[1])
    for block in column_blocks(*predicted.shape):
        expressed = np.clip(predicted[:, block], 0.0, None)
        signal[block] = expressed.var(0)
        noise[block] = poisson_target_variance(expressed, median_total).mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(signal + noise > 0, signal / (signal + noise), np.nan)
