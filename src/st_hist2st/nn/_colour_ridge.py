"""A ridge regression on colour and texture features of each spot's patch, blended into the network's predictions."""

from __future__ import annotations

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

    Parameters
    ----------
    n_genes
        Number of genes predicted.
    rank
        Number of principal components of the training targets the predictions are projected onto; ``None``
        (or at least the number of genes or of training spots) keeps a ridge of full rank.

    Shapes
    ------
    input ``(n, 18)`` features, output ``(n, n_genes)``.
    """

    def __init__(self, n_genes: int, rank: int | None = None) -> None:
        super().__init__()
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int | np.integer) or rank < 1):
            raise ValueError(f"`rank` must be a whole number at least 1 (or None for a full-rank ridge), got {rank!r}.")
        self.rank = rank
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

    def fit(self, features: torch.Tensor, targets: torch.Tensor) -> ColourRidge:
        """Fit on ``(n, 18)`` features and ``(n, n_genes)`` targets of the training spots."""
        from sklearn.linear_model import RidgeCV

        x = features.double().cpu().numpy()
        y = targets.double().cpu().numpy()
        if len(x) < 2:
            raise ValueError(f"The colour ridge needs at least 2 training spots, got {len(x)}.")
        mean, scale = x.mean(0), x.std(0) + 1e-8
        ridge = RidgeCV(alphas=ALPHAS).fit((x - mean) / scale, y)
        weight, bias = reduced_rank(np.atleast_2d(ridge.coef_), np.atleast_1d(ridge.intercept_), y, self.rank)
        for name, value in (
            ("mean", mean),
            ("scale", scale),
            ("weight", weight),
            ("bias", bias),
            ("alpha", np.asarray(ridge.alpha_)),
        ):
            getattr(self, name).copy_(torch.as_tensor(value, dtype=torch.float32))
        return self

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear((features.float() - self.mean) / self.scale, self.weight, self.bias)


def reduced_rank(
    weight: np.ndarray, bias: np.ndarray, targets: np.ndarray, rank: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """A linear model's coefficients and intercepts, its predictions projected onto the leading programmes.

    ``weight`` is ``(n_genes, n_features)``, ``bias`` ``(n_genes,)``; the predictions are projected, around the
    means of the training ``targets`` (spots by genes), onto their ``rank`` leading principal components.
    Unchanged where ``rank`` is ``None`` or at least the number of genes or of spots.
    """
    if rank is None or rank >= min(len(targets) - 1, targets.shape[1]):
        return weight, bias
    means = targets.mean(0)
    # V^T V applied factor by factor: a genes x genes projection would not fit in memory for a transcriptome
    components = leading_components(targets - means, rank)
    return components.T @ (components @ weight), means + components.T @ (components @ (bias - means))


def leading_components(centred: np.ndarray, rank: int) -> np.ndarray:
    """The ``rank`` leading right singular vectors of ``centred`` (spots by genes), ``(rank, n_genes)``."""
    if min(centred.shape) <= 4096:
        return np.linalg.svd(centred, full_matrices=False)[2][:rank]
    from sklearn.utils.extmath import randomized_svd

    return randomized_svd(centred, rank, random_state=0)[2]
