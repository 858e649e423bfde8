"""A ridge regression on colour and texture features of each spot's patch, blended into the network's predictions."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: Names of the :func:`patch_features`, in their order.
FEATURE_NAMES = (
    *(f"{stat} {channel}" for stat in ("mean", "std") for channel in ("red", "green", "blue")),
    *(f"grey {k}/8" for k in range(8)),
    "gradient mean",
    "gradient std",
    "laplacian variance",
    "dark fraction",
)
#: Ridge penalties tried, each scored by its leave-one-spot-out error over the training spots.
ALPHAS = np.logspace(-2, 4, 13)
#: Ranks a ridge of ``rank='auto'`` chooses among (``None``: full rank), by leave-one-section-out mean r.
AUTO_RANKS = (None, 2, 5, 10, 20, 50)
#: The rank of ``rank='auto'`` where the training spots come from one section: the choice on her2st.
SINGLE_SECTION_RANK = 5

logger = logging.getLogger(__name__)

_SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
_LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def patch_features(patches: torch.Tensor) -> torch.Tensor:
    """18 colour and texture features of each ``(n, 3, H, W)`` 0-255 patch, ``(n, 18)`` float32.

    Mean and standard deviation of each channel, an 8-bin histogram of the grey level (the channels' mean), the
    mean and standard deviation of the Sobel gradient magnitude of the grey image, the variance of its
    Laplacian and the fraction of dark pixels (grey below half). All are unchanged by rotations by multiples of
    90 degrees and mirrors, so one view of a patch gives them.
    """
    x = patches.float() / 255
    n = x.shape[0]
    flat = x.flatten(2)
    grey = x.mean(1, keepdim=True)
    bins = (grey.flatten(1) * 8).long().clamp_(0, 7)
    histogram = F.one_hot(bins, 8).float().mean(1)
    padded = F.pad(grey, (1, 1, 1, 1), mode="replicate")
    kernels = torch.stack([_SOBEL, _SOBEL.T, _LAPLACE]).unsqueeze(1).to(x.device)
    gx, gy, laplacian = F.conv2d(padded, kernels).unbind(1)
    magnitude = torch.hypot(gx, gy).flatten(1)
    texture = torch.stack(
        [
            magnitude.mean(1),
            magnitude.std(1, correction=0),
            laplacian.flatten(1).var(1, correction=0),
            (grey.flatten(1) < 0.5).float().mean(1),
        ],
        dim=1,
    )
    return torch.cat([flat.mean(-1), flat.std(-1, correction=0), histogram, texture], dim=1).view(n, -1)


class ColourRidge(nn.Module):
    r"""Ridge regression from :func:`~st_hist2st.nn.patch_features` to the transformed expression of every gene.

    Fitted in closed form on the training spots after the network (:meth:`fit`), on features standardised over
    those spots, with the penalty of least leave-one-spot-out error among 13 from 0.01 to 10,000 (scikit-learn's
    ``RidgeCV``). Until then :attr:`is_fitted` is false. :class:`~st_hist2st.nn.Hist2STModule` holds one where
    ``Architecture.colour_ridge`` is above 0.

    With a ``rank``, the fitted predictions are projected onto the ``rank`` leading principal components of the
    training targets (reduced-rank regression): each gene is then predicted from the few expression programmes
    that vary most over the training spots, instead of from coefficients of its own, which for a gene with
    little signal mostly fit noise. The projection is folded into the coefficients, so prediction costs the same.
    ``rank='auto'`` chooses it among 2, 5, 10, 20, 50 and full rank when :meth:`fit` is given the section of each
    spot: a ridge of each rank is fitted on all sections but one and scored on that one (mean Pearson r over the
    genes), in turn, and the rank of best mean score is kept as :attr:`fitted_rank`.

    Parameters
    ----------
    n_genes
        Number of genes predicted.
    rank
        Number of principal components of the training targets the predictions are projected onto; ``None``
        (or at least the number of genes or of training spots) keeps a ridge of full rank; ``'auto'`` chooses
        it at :meth:`fit`.

    Shapes
    ------
    input ``(n, 18)`` features, output ``(n, n_genes)``.
    """

    def __init__(self, n_genes: int, rank: int | str | None = None) -> None:
        super().__init__()
        if not is_rank(rank):
            raise ValueError(
                f"`rank` must be a whole number at least 1, 'auto' (chosen by leave-one-section-out) or None for a "
                f"full-rank ridge, got {rank!r}."
            )
        self.rank = rank
        #: The rank :meth:`fit` projected onto (``None``: full rank); the chosen one where ``rank='auto'``.
        self.fitted_rank: int | None = None if rank == "auto" else rank
        n_features = len(FEATURE_NAMES)
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))
        self.register_buffer("weight", torch.zeros(n_genes, n_features))
        self.register_buffer("bias", torch.zeros(n_genes))
        self.register_buffer("alpha", torch.zeros(()))

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` has set the coefficients."""
        return bool(self.alpha > 0)

    def fit(
        self, features: torch.Tensor, targets: torch.Tensor, sections: Sequence | np.ndarray | None = None
    ) -> ColourRidge:
        """Fit on ``(n, 18)`` features and ``(n, n_genes)`` targets of the training spots.

        ``sections`` names the section of each spot; ``rank='auto'`` needs it to choose the rank by
        leave-one-section-out, and takes 5 (the choice on her2st) where there is one section (or none given).
        """
        x = features.double().cpu().numpy()
        y = targets.double().cpu().numpy()
        if len(x) < 2:
            raise ValueError(f"The colour ridge needs at least 2 training spots, got {len(x)}.")
        if sections is not None and len(sections) != len(x):
            raise ValueError(f"`sections` names {len(sections)} spots, the features {len(x)}.")
        if self.rank == "auto":
            self.fitted_rank = choose_rank(x, y, sections)
        mean, scale, weight, bias, alpha = standardised_ridge(x, y)
        weight, bias = reduced_rank(weight, bias, y, self.fitted_rank)
        for name, value in (
            ("mean", mean),
            ("scale", scale),
            ("weight", weight),
            ("bias", bias),
            ("alpha", np.asarray(alpha)),
        ):
            getattr(self, name).copy_(torch.as_tensor(value, dtype=torch.float32))
        return self

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear((features.float() - self.mean) / self.scale, self.weight, self.bias)


def is_rank(rank) -> bool:
    """Whether ``rank`` is a valid rank of :class:`ColourRidge`: ``None``, ``'auto'`` or a whole number >= 1."""
    if rank is None or (isinstance(rank, str) and rank == "auto"):
        return True
    return not isinstance(rank, bool) and isinstance(rank, int | np.integer) and rank >= 1


def standardised_ridge(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """scikit-learn's ``RidgeCV`` over :data:`ALPHAS` on ``x`` standardised over its rows.

    Returns the features' means and scales, the coefficients ``(n_genes, n_features)`` and intercepts on the
    standardised features, and the penalty chosen.
    """
    from sklearn.linear_model import RidgeCV

    mean, scale = x.mean(0), x.std(0) + 1e-8
    ridge = RidgeCV(alphas=ALPHAS).fit((x - mean) / scale, y)
    return mean, scale, np.atleast_2d(ridge.coef_), np.atleast_1d(ridge.intercept_), np.asarray(ridge.alpha_)


def choose_rank(features: np.ndarray, targets: np.ndarray, sections: Sequence | np.ndarray | None) -> int | None:
    """The rank of :data:`AUTO_RANKS` of best leave-one-section-out mean r over the genes.

    For each section, ridges are fitted on the others' spots (features standardised over them) and projected onto
    each rank; each rank's r per gene on the section, averaged over the genes and then over the sections, ranks
    it; the first of the best wins. With fewer than two sections (of two spots or more),
    :data:`SINGLE_SECTION_RANK`.
    """
    labels = np.asarray(sections) if sections is not None else np.zeros(len(features))
    # a section is left out where it and the rest have two spots each, for a correlation and a fit
    names = [n for n in dict.fromkeys(labels.tolist()) if 2 <= (labels == n).sum() <= len(labels) - 2]
    if len(names) < 2:
        logger.info(
            "the training spots come from one section, so the colour ridge's rank cannot be chosen by leaving a "
            "section out: rank %d, the choice on her2st",
            SINGLE_SECTION_RANK,
        )
        return SINGLE_SECTION_RANK
    from st_hist2st.nn._plan import pearson_per_gene  # _plan builds on the module, which holds this ridge

    scores = np.zeros(len(AUTO_RANKS))
    for name in names:
        held = labels == name
        y = targets[~held]
        mean, scale, weight, bias, _ = standardised_ridge(features[~held], y)
        standardised = (features[held] - mean) / scale
        # one decomposition for every rank below the full one
        top = min(max(r for r in AUTO_RANKS if r is not None), len(y) - 1, y.shape[1])
        components = leading_components(y - y.mean(0), top) if top >= 1 else None
        for k, rank in enumerate(AUTO_RANKS):
            w, b = reduced_rank(weight, bias, y, rank, components)
            r = pearson_per_gene(torch.from_numpy(standardised @ w.T + b), torch.from_numpy(targets[held])).numpy()
            scores[k] += (np.nanmean(r) if np.isfinite(r).any() else np.nan) / len(names)
    chosen = AUTO_RANKS[int(np.argmax(np.nan_to_num(scores, nan=-np.inf)))]
    logger.info(
        "the colour ridge's rank by leave-one-section-out over %d sections: %s (mean r %s)",
        len(names),
        chosen or "full",
        ", ".join(f"{rank or 'full'} {score:.4f}" for rank, score in zip(AUTO_RANKS, scores, strict=True)),
    )
    return chosen


def reduced_rank(
    weight: np.ndarray, bias: np.ndarray, targets: np.ndarray, rank: int | None, components: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A linear model's coefficients and intercepts, its predictions projected onto the leading programmes.

    ``weight`` is ``(n_genes, n_features)``, ``bias`` ``(n_genes,)``; the predictions are projected, around the
    means of the training ``targets`` (spots by genes), onto their ``rank`` leading principal components (the
    first ``rank`` rows of ``components`` where given, from :func:`leading_components` of a higher rank).
    Unchanged where ``rank`` is ``None`` or at least the number of genes or of spots.
    """
    if rank is None or rank >= min(len(targets) - 1, targets.shape[1]):
        return weight, bias
    means = targets.mean(0)
    # V^T V applied factor by factor: a genes x genes projection would not fit in memory for a transcriptome
    components = leading_components(targets - means, rank) if components is None else components[:rank]
    return components.T @ (components @ weight), means + components.T @ (components @ (bias - means))


def leading_components(centred: np.ndarray, rank: int) -> np.ndarray:
    """The ``rank`` leading right singular vectors of ``centred`` (spots by genes), ``(rank, n_genes)``."""
    if min(centred.shape) <= 4096:
        return np.linalg.svd(centred, full_matrices=False)[2][:rank]
    from sklearn.utils.extmath import randomized_svd

    return randomized_svd(centred, rank, random_state=0)[2]
