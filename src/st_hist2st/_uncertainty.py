"""The predictive distribution of the transformed expression, from the ZINB head's parameters.

The ZINB head gives, per spot and gene, the distribution of the counts of a spot of the section's median size
(size factor 1): mean ``mu``, dispersion ``theta`` and dropout probability ``pi``. The prediction's scale is
``y = log10(1 + 1e4 * c / total)``, with ``total`` the median spot total of the training sections. The
distribution of ``y`` is the distribution of ``c`` carried through that increasing map, so its quantiles are
the map of the count quantiles; its moments are summed over the counts. Several models (an ensemble) give the
mixture of their distributions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

#: Probability left in the upper tail when the sum over counts stops.
TAIL = 1e-6
#: Most counts summed over for one spot and gene; a distribution reaching beyond stops there.
MAX_COUNT = 200_000
#: Spot-gene pairs handled together.
CHUNK = 1 << 20


def check_levels(levels: Sequence[float]) -> list[float]:
    """Central interval levels as floats in (0, 1), sorted; one error naming the bad value."""
    out = []
    for level in levels:
        if isinstance(level, bool) or not isinstance(level, int | float) or not 0 < level < 1:
            raise ValueError(f"`interval_levels` must hold numbers in (0, 1), such as 0.8 or 0.95; got {level!r}.")
        out.append(float(level))
    return sorted(set(out))


def target_distribution(
    mean: np.ndarray,
    disp: np.ndarray,
    pi: np.ndarray,
    total: float,
    levels: Sequence[float] = (0.8, 0.95),
) -> tuple[np.ndarray, dict[float, tuple[np.ndarray, np.ndarray]]]:
    """Standard deviation and central intervals of ``log10(1 + 1e4 * c / total)`` for ZINB counts ``c``.

    Parameters
    ----------
    mean, disp, pi
        ZINB parameters, ``(n_models, n_spots, n_genes)`` (or ``(n_spots, n_genes)`` for one model); several
        models give their equal-weight mixture.
    total
        Total count of a spot of size factor 1 (the denominator of the targets).
    levels
        Levels of the central intervals, e.g. ``0.95`` for the 2.5 % and 97.5 % quantiles.

    Returns
    -------
    The ``(n_spots, n_genes)`` standard deviation, and per level the lower and upper ends of the interval;
    NaN where a parameter is not finite.
    """
    if total <= 0:
        raise ValueError(f"`total` must be positive, got {total}.")
    levels = check_levels(levels)
    mean, disp, pi = (np.asarray(a, dtype=np.float64) for a in (mean, disp, pi))
    if mean.ndim == 2:
        mean, disp, pi = mean[None], disp[None], pi[None]
    shape = mean.shape[1:]
    quantiles = sorted({q for level in levels for q in ((1 - level) / 2, (1 + level) / 2)})
    flat = [a.reshape(len(a), -1) for a in (mean, disp, pi)]
    size = flat[0].shape[1]
    std = np.full(size, np.nan)
    ends = np.full((len(quantiles), size), np.nan)
    finite = np.isfinite(flat[0]).all(0) & np.isfinite(flat[1]).all(0) & np.isfinite(flat[2]).all(0)
    given = np.flatnonzero(finite)
    for start in range(0, len(given), CHUNK):
        part = given[start : start + CHUNK]
        std[part], ends[:, part] = _moments_and_quantiles(
            *(torch.from_numpy(a[:, part]) for a in flat), total, quantiles
        )
    at = {q: ends[i].reshape(shape).astype(np.float32) for i, q in enumerate(quantiles)}
    intervals = {level: (at[(1 - level) / 2], at[(1 + level) / 2]) for level in levels}
    return std.reshape(shape).astype(np.float32), intervals


def _moments_and_quantiles(
    mean: torch.Tensor, disp: torch.Tensor, pi: torch.Tensor, total: float, quantiles: list[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Standard deviation and quantiles of the target for each pair (a column of the ``(n_models, n)`` inputs).

    The NB probabilities follow one another by ``p(c + 1) = p(c) * (c + disp) / (c + 1) * mean / (disp + mean)``;
    pairs whose probability of 0 counts is below the smallest float are summed in logarithms instead.
    """
    log_p0 = disp * (torch.log(disp) - torch.log(disp + mean))
    tiny = (log_p0 < -700).any(0)
    std, ends = np.empty(mean.shape[1]), np.empty((len(quantiles), mean.shape[1]))
    for logs in (False, True):
        pick = tiny if logs else ~tiny
        if pick.any():
            std[pick.numpy()], ends[:, pick.numpy()] = _sum_over_counts(
                mean[:, pick], disp[:, pick], pi[:, pick], log_p0[:, pick], total, quantiles, logs
            )
    return std, ends


def _sum_over_counts(
    mean: torch.Tensor,
    disp: torch.Tensor,
    pi: torch.Tensor,
    log_p0: torch.Tensor,
    total: float,
    quantiles: list[float],
    logs: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Sum the mixture's probabilities count by count, keeping only the pairs whose upper tail is still open."""
    size = mean.shape[1]
    ratio = mean / (disp + mean)
    keep = 1 - pi
    p = log_p0 if logs else torch.exp(log_p0)
    if logs:
        ratio, keep = torch.log(ratio), torch.log(keep.clamp_min(1e-300))
    std = np.zeros(size)
    below_all = np.full((len(quantiles), size), MAX_COUNT)
    q = torch.tensor(quantiles, dtype=torch.float64)[:, None]
    # the state of the pairs still open; `index` says where each belongs
    index = torch.arange(size)
    cdf = pi.mean(0)  # the zero-inflation's mass, all at 0 counts
    first, second = torch.zeros(size, dtype=torch.float64), torch.zeros(size, dtype=torch.float64)
    below = torch.zeros((len(quantiles), size), dtype=torch.int64)  # counts whose cdf is below each quantile
    for count in range(MAX_COUNT + 1):
        mass = (torch.exp(keep + p) if logs else keep * p).mean(0)
        y = float(np.log10(1 + 1e4 * count / total))
        cdf = cdf + mass
        first, second = first + mass * y, second + mass * (y * y)
        below += cdf < q
        # the pairs whose tail has closed are taken out every few counts: taking them out copies all the state,
        # and summing on over a closed tail only adds the little mass it holds
        if count % 8 == 0 or count == MAX_COUNT:
            done = (cdf >= 1 - TAIL) | (count == MAX_COUNT)
            if done.any():
                ids = index[done].numpy()
                m = cdf[done]
                std[ids] = (second[done] / m - (first[done] / m) ** 2).clamp_min(0).sqrt().numpy()
                below_all[:, ids] = below[:, done].numpy()
                if done.all():
                    break
                left = ~done
                index, cdf, first, second, below = index[left], cdf[left], first[left], second[left], below[:, left]
                p, disp, ratio, keep = p[:, left], disp[:, left], ratio[:, left], keep[:, left]
        step = (count + disp) / (count + 1)
        p = p + torch.log(step) + ratio if logs else p * step * ratio
    return std, np.log10(1 + 1e4 * below_all / total)
