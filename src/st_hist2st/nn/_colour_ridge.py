"""A ridge regression on colour and texture features of each spot's patch, blended into the network's predictions.

With ``trees``, extremely randomised trees on the same features join the ridge where it predicts the leading
expression programmes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from st_hist2st.nn._stains import stain_normalised

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
#: Number of extremely randomised trees in the forest of a ridge with ``trees`` above 0.
N_TREES = 100
#: Fewest training spots in a leaf of those trees; one in :data:`LEAVES_PER_TREE` of the spots where that is more.
MIN_SPOTS_PER_LEAF = 10
#: At most about this many leaves per tree, so that a forest fitted on a large section stays small.
LEAVES_PER_TREE = 256
#: Most training spots the colour model is fitted on: a sample of them, drawn with a fixed seed, beyond this many
#: (:func:`fitting_sample`). A ridge on 18 features and trees of at most :data:`LEAVES_PER_TREE` leaves gain little
#: from more, and the fit's time and memory (it holds the targets in float64 several times over while it chooses
#: rank and forest) stay bounded on Visium HD and on many sections.
MAX_COLOUR_SPOTS = 50_000
_TREE_BUFFERS = ("tree_feature", "tree_threshold", "tree_children", "tree_value", "tree_means", "tree_components")
#: Forests ``trees='auto'`` chooses among: (share, fewest spots in a leaf), by leave-one-section-out mean r.
AUTO_FORESTS = ((0.0, MIN_SPOTS_PER_LEAF), *((t, leaf) for t in (0.25, 0.5, 0.75, 1.0) for leaf in (5, 10, 20)))
#: The forest of ``trees='auto'`` where the training spots come from one section: the choice on most her2st splits.
SINGLE_SECTION_FOREST = (0.5, 5)
#: Spots predicted at once: the walk through the trees holds a few integers per spot and tree, the blend a few
#: values per spot and gene, so a large section's prediction holds little beside its output.
SPOT_CHUNK = 16384

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
    # counted in place: a one-hot of every pixel would hold 8 integers per pixel
    histogram = x.new_zeros(n, 8).scatter_add_(1, bins, x.new_ones(bins.shape)) / bins.shape[1]
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

    Fitted in closed form on the training spots after the network (:meth:`fit`; on a sample of 50,000 of them,
    drawn with a fixed seed, where there are more), on features standardised over those spots, with the penalty
    of least leave-one-spot-out error among 13 from 0.01 to 10,000 (scikit-learn's
    ``RidgeCV``). Until then :attr:`is_fitted` is false. :class:`~st_hist2st.nn.Hist2STModule` holds one where
    ``Architecture.colour_ridge`` is above 0.

    With a ``rank``, the fitted predictions are projected onto the ``rank`` leading principal components of the
    training targets (reduced-rank regression): each gene is then predicted from the few expression programmes
    that vary most over the training spots, instead of from coefficients of its own, which for a gene with
    little signal mostly fit noise. The projection is folded into the coefficients, so prediction costs the same.
    ``rank='auto'`` chooses it among 2, 5, 10, 20, 50 and full rank when :meth:`fit` is given the section of each
    spot: a ridge of each rank is fitted on all sections but one and scored on that one (mean Pearson r over the
    genes), in turn, and the rank of best mean score is kept as :attr:`fitted_rank`.

    With ``trees`` above 0, a forest of extremely randomised trees (scikit-learn's ``ExtraTreesRegressor``, 100
    trees, leaves of at least ``min_spots_per_leaf`` spots) learns the same features' map to
    the scores of the ``rank`` leading programmes (5 where the ridge is of full rank), which need not be linear;
    the prediction is then ``(1 - trees) * ridge + trees * forest``, the forest's scores taken back to the genes
    through the programmes. The forest is kept as tensors and walked in torch, so the module saves, loads and
    moves between devices as the ridge does. ``trees='auto'`` chooses the share (0, 0.25, 0.5, 0.75 or 1) and the
    fewest spots in a leaf (5, 10 or 20) as ``rank='auto'`` chooses the rank, after it, with that rank; the choice
    is kept as :attr:`fitted_trees` and :attr:`fitted_leaf`.

    Parameters
    ----------
    n_genes
        Number of genes predicted.
    rank
        Number of principal components of the training targets the predictions are projected onto; ``None``
        (or at least the number of genes or of training spots) keeps a ridge of full rank; ``'auto'`` chooses
        it at :meth:`fit`.
    trees
        Share of the forest in the predictions, in [0, 1]; ``0`` is the ridge alone; ``'auto'`` chooses it, with
        the leaves' size, at :meth:`fit`.
    min_spots_per_leaf
        Fewest training spots in a leaf of the forest (raised to one in 256 of them, so that a tree has at most
        about 256 leaves); where ``trees='auto'``, chosen instead.
    stains
        Read each section's patches with their haematoxylin and eosin mapped onto the training sections' mean
        (:meth:`features`, Macenko et al., 2009): a section stained or scanned unlike the training ones then
        gives the features the model was fitted on. The reference is set by :meth:`set_stain_reference`.

    Shapes
    ------
    input ``(n, 18)`` features, output ``(n, n_genes)``.
    """

    def __init__(
        self,
        n_genes: int,
        rank: int | str | None = None,
        trees: float | str = 0.0,
        min_spots_per_leaf: int = MIN_SPOTS_PER_LEAF,
        stains: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(stains, bool):
            raise ValueError(f"`stains` must be True or False, got {stains!r}.")
        if not is_rank(rank):
            raise ValueError(
                f"`rank` must be a whole number at least 1, 'auto' (chosen by leave-one-section-out) or None for a "
                f"full-rank ridge, got {rank!r}."
            )
        if not is_share(trees):
            raise ValueError(
                f"`trees` is the forest's share of the predictions, in [0, 1], or 'auto' (chosen by "
                f"leave-one-section-out), got {trees!r}."
            )
        if isinstance(min_spots_per_leaf, bool) or not isinstance(min_spots_per_leaf, int) or min_spots_per_leaf < 1:
            raise ValueError(f"`min_spots_per_leaf` must be a whole number at least 1, got {min_spots_per_leaf!r}.")
        self.rank = rank
        self.trees = trees if trees == "auto" else float(trees)
        self.min_spots_per_leaf = min_spots_per_leaf
        self.stains = stains
        #: The forest's share of the predictions (the chosen one where ``trees='auto'``; ``None`` until then).
        self.fitted_trees: float | None = None if trees == "auto" else float(trees)
        #: The fewest spots in a leaf :meth:`fit` asked of the forest (chosen where ``trees='auto'``).
        self.fitted_leaf: int | None = None if trees == "auto" else min_spots_per_leaf
        #: The rank :meth:`fit` projected onto (``None``: full rank); the chosen one where ``rank='auto'``.
        self.fitted_rank: int | None = None if rank == "auto" else rank
        n_features = len(FEATURE_NAMES)
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))
        self.register_buffer("weight", torch.zeros(n_genes, n_features))
        self.register_buffer("bias", torch.zeros(n_genes))
        self.register_buffer("alpha", torch.zeros(()))
        if stains:
            #: Haematoxylin and eosin vectors and concentration maxima every section's stains are mapped onto.
            self.register_buffer("reference_stains", torch.zeros(2, 3))
            self.register_buffer("reference_maxima", torch.zeros(2))
        if self.trees == "auto" or self.trees > 0:  # sized by fit (or by the state loaded)
            self.register_buffer("tree_feature", torch.zeros((0, 0), dtype=torch.long))
            self.register_buffer("tree_threshold", torch.zeros((0, 0)))
            self.register_buffer("tree_children", torch.zeros((0, 0, 2), dtype=torch.long))
            self.register_buffer("tree_value", torch.zeros((0, 0, 0)))
            self.register_buffer("tree_means", torch.zeros(n_genes))
            self.register_buffer("tree_components", torch.zeros((0, n_genes)))

    def set_stain_reference(self, estimates: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Map every section's stains onto the mean of ``estimates`` (each training section's ``stain_estimate``)."""
        if not self.stains:
            raise ValueError("This colour model reads the patches as they are (`stains=False`).")
        stains, maxima = (torch.stack(parts).mean(0) for parts in zip(*estimates, strict=True))
        self.reference_stains.copy_(stains)
        self.reference_maxima.copy_(maxima)

    def features(
        self, patches: torch.Tensor, estimate: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """The :func:`patch_features` this model reads from a section's ``patches``.

        With ``stains``, those of the patches with their stains (``estimate``, the section's) mapped onto the
        reference.
        """
        if not self.stains:
            return patch_features(patches)
        if estimate is None:
            raise ValueError("A colour model with `stains=True` needs the section's stain estimate.")
        reference = (self.reference_stains, self.reference_maxima)
        return patch_features(stain_normalised(patches, estimate, reference))

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` has set the coefficients."""
        return bool(self.alpha > 0)

    def fit(
        self, features: torch.Tensor, targets: torch.Tensor, sections: Sequence | np.ndarray | None = None
    ) -> ColourRidge:
        """Fit on ``(n, 18)`` features and ``(n, n_genes)`` targets of the training spots.

        ``sections`` names the section of each spot; ``rank='auto'`` and ``trees='auto'`` need it to choose by
        leave-one-section-out, and take rank 5 and half of a forest of leaves of 5 spots (the choices on her2st)
        where there is one section (or none given).
        """
        if len(features) < 2:
            raise ValueError(f"The colour ridge needs at least 2 training spots, got {len(features)}.")
        if sections is not None and len(sections) != len(features):
            raise ValueError(f"`sections` names {len(sections)} spots, the features {len(features)}.")
        sample = fitting_sample(len(features))
        if sample is not None:
            logger.info(
                "fitting the colour model on a sample of %d of the %d training spots", len(sample), len(features)
            )
            index = torch.from_numpy(sample)
            features, targets = features[index.to(features.device)], targets[index.to(targets.device)]
            sections = None if sections is None else np.asarray(sections)[sample]
        x = features.double().cpu().numpy()
        y = targets.double().cpu().numpy()
        # the ridges fitted leaving out one section at a time serve both choices
        folds = section_folds(x, y, sections) if "auto" in (self.rank, self.trees) else []
        if self.rank == "auto":
            self.fitted_rank = choose_rank(folds, y)
        x32 = features.float().cpu().numpy()  # the forest splits the float32 features it is walked with
        if self.trees == "auto":
            self.fitted_trees, self.fitted_leaf = choose_forest(folds, x32, y, self.fitted_rank)
        mean, scale, weight, bias, alpha = standardised_ridge(x, y)
        components = programmes(y, self.fitted_rank) if self.fitted_trees else None
        weight, bias = reduced_rank(weight, bias, y, self.fitted_rank, components)
        for name, value in (
            ("mean", mean),
            ("scale", scale),
            ("weight", weight),
            ("bias", bias),
            ("alpha", np.asarray(alpha)),
        ):
            getattr(self, name).copy_(torch.as_tensor(value, dtype=torch.float32))
        if self.fitted_trees:
            self._fit_forest(x32, y, components)
        return self

    def _fit_forest(self, features: np.ndarray, targets: np.ndarray, components: np.ndarray) -> None:
        """The forest from float32 ``features`` to the targets' scores on ``components``."""
        means = targets.mean(0)
        packed = packed_forest(extra_trees(features, (targets - means) @ components.T, self.fitted_leaf))
        packed["tree_means"], packed["tree_components"] = means, components
        for name, value in packed.items():
            tensor = torch.as_tensor(value)
            self._buffers[name] = (tensor.float() if tensor.is_floating_point() else tensor).to(self.alpha.device)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if len(features) <= SPOT_CHUNK:
            return self._predict(features.float())
        predicted = features.new_empty((len(features), len(self.bias)), dtype=torch.float32)
        for spots, part in self.chunks(features):
            predicted[spots] = part
        return predicted

    def chunks(self, features: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor]]:
        """The predictions for ``features``, ``SPOT_CHUNK`` (16,384) spots at a time, each with its slice of spots.

        A caller can use each chunk and let it go, holding no spots x genes array of the ridge's.
        """
        for start in range(0, len(features), SPOT_CHUNK):
            spots = slice(start, start + SPOT_CHUNK)
            yield spots, self._predict(features[spots].float())

    def _predict(self, features: torch.Tensor) -> torch.Tensor:
        linear = F.linear((features - self.mean) / self.scale, self.weight, self.bias)
        share = self.fitted_trees
        if not share or self.tree_value.numel() == 0:
            return linear
        forest = self.tree_means + self.forest_scores(features) @ self.tree_components
        return linear.mul_(1 - share).add_(forest, alpha=share)

    def forest_scores(self, features: torch.Tensor) -> torch.Tensor:
        """The forest's mean prediction of the programmes' scores for ``(n, 18)`` float32 features, ``(n, k)``."""
        n_trees, n_nodes = self.tree_feature.shape
        offsets = torch.arange(n_trees, device=features.device) * n_nodes
        node = offsets.expand(len(features), n_trees)  # index into the flattened trees; every walk starts at a root
        feature, threshold = self.tree_feature.flatten(), self.tree_threshold.flatten()
        children = self.tree_children.view(-1, 2)
        # a leaf is its own child on either side: the walk ends when no spot moves
        for _ in range(n_nodes):
            right = (features.gather(1, feature[node]) > threshold[node]).long()
            following = children[node, right] + offsets
            if torch.equal(following, node):
                break
            node = following
        return self.tree_value.view(n_trees * n_nodes, -1)[node].mean(1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        for name in _TREE_BUFFERS:  # the forest's size is the fitted one's
            if name in self._buffers and prefix + name in state_dict:
                self._buffers[name] = torch.empty_like(state_dict[prefix + name], device=self.alpha.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def packed_forest(forest) -> dict[str, np.ndarray]:
    """A fitted scikit-learn forest of regression trees as arrays of one shape, padded to the largest tree.

    ``tree_feature`` and ``tree_threshold`` (trees x nodes): a spot goes to the right child where its feature is
    above the threshold (float32, rounded down so that float32 features are sent where scikit-learn sends them);
    ``tree_children`` (trees x nodes x 2): left and right child, a leaf (and padding) its own; ``tree_value``
    (trees x nodes x outputs): the mean training target in each node.
    """
    trees = [estimator.tree_ for estimator in forest.estimators_]
    n_nodes = max(tree.node_count for tree in trees)
    n_outputs = trees[0].value.shape[1]
    feature = np.zeros((len(trees), n_nodes), dtype=np.int64)
    threshold = np.full((len(trees), n_nodes), np.inf, dtype=np.float32)
    children = np.tile(np.arange(n_nodes)[:, None], (len(trees), 1, 2))
    value = np.zeros((len(trees), n_nodes, n_outputs), dtype=np.float32)
    for k, tree in enumerate(trees):
        n = tree.node_count
        split = np.flatnonzero(tree.children_left[:n] >= 0)
        rounded = tree.threshold[split].astype(np.float32)
        above = rounded.astype(np.float64) > tree.threshold[split]
        rounded[above] = np.nextafter(rounded[above], np.float32(-np.inf))
        feature[k, split] = tree.feature[split]
        threshold[k, split] = rounded
        children[k, split, 0] = tree.children_left[split]
        children[k, split, 1] = tree.children_right[split]
        value[k, :n] = tree.value[:n, :, 0]
    return {"tree_feature": feature, "tree_threshold": threshold, "tree_children": children, "tree_value": value}


def is_share(trees) -> bool:
    """Whether ``trees`` is a valid forest share of :class:`ColourRidge`: ``'auto'`` or a number in [0, 1]."""
    if isinstance(trees, str):
        return trees == "auto"
    return not isinstance(trees, bool) and isinstance(trees, int | float | np.floating) and 0 <= trees <= 1


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


@dataclass
class Fold:
    """A ridge fitted on the spots of all training sections but one, to be scored on that one's."""

    #: The left-out section's spots.
    held: np.ndarray
    #: Their features, standardised over the other spots.
    standardised: np.ndarray
    #: The ridge's coefficients ``(n_genes, n_features)`` and intercepts, of full rank.
    weight: np.ndarray
    bias: np.ndarray
    #: The other spots' leading programmes, as many as the highest rank of :data:`AUTO_RANKS` (spots and genes
    #: allowing); ``None`` where there are none.
    components: np.ndarray | None


def section_folds(features: np.ndarray, targets: np.ndarray, sections: Sequence | np.ndarray | None) -> list[Fold]:
    """A :class:`Fold` for each section that can be left out; none where fewer than two can.

    A section can be left out where it and the rest have two spots each, for a correlation and a fit.
    """
    if sections is None:
        return []
    labels = np.asarray(sections)
    names = [n for n in dict.fromkeys(labels.tolist()) if 2 <= (labels == n).sum() <= len(labels) - 2]
    if len(names) < 2:
        return []
    folds = []
    for name in names:
        held = labels == name
        y = targets[~held]
        mean, scale, weight, bias, _ = standardised_ridge(features[~held], y)
        # one decomposition for every rank below the full one
        top = min(max(r for r in AUTO_RANKS if r is not None), len(y) - 1, y.shape[1])
        components = leading_components(y - y.mean(0), top) if top >= 1 else None
        folds.append(Fold(held, (features[held] - mean) / scale, weight, bias, components))
    return folds


def fold_mean_r(folds: list[Fold], targets: np.ndarray, predicted: list[np.ndarray]) -> float:
    """The mean over ``folds`` of the mean Pearson r over the genes on each fold's left-out spots.

    ``predicted`` holds each fold's prediction of its left-out spots' ``targets``.
    """
    from st_hist2st.nn._plan import pearson_per_gene  # _plan builds on the module, which holds this ridge

    total = 0.0
    for fold, prediction in zip(folds, predicted, strict=True):
        r = pearson_per_gene(torch.from_numpy(prediction), torch.from_numpy(targets[fold.held])).numpy()
        total += (np.nanmean(r) if np.isfinite(r).any() else np.nan) / len(folds)
    return total


def best(scores: list[float]) -> int:
    """The index of the best of ``scores`` (the first of equals; a score that is NaN never wins)."""
    return int(np.argmax(np.nan_to_num(np.asarray(scores), nan=-np.inf)))


def choose_rank(folds: list[Fold], targets: np.ndarray) -> int | None:
    """The rank of :data:`AUTO_RANKS` of best leave-one-section-out mean r over the genes.

    Each fold's ridge is projected onto each rank of the programmes of its training spots; each rank's r per gene
    on the left-out section, averaged over the genes and then over the ``folds``, ranks it; the first of the best
    wins. With fewer than two folds, :data:`SINGLE_SECTION_RANK`.
    """
    if not folds:
        logger.info(
            "the training spots come from one section, so the colour ridge's rank cannot be chosen by leaving a "
            "section out: rank %d, the choice on her2st",
            SINGLE_SECTION_RANK,
        )
        return SINGLE_SECTION_RANK

    def projected(fold: Fold, rank: int | None) -> np.ndarray:
        weight, bias = reduced_rank(fold.weight, fold.bias, targets[~fold.held], rank, fold.components)
        return fold.standardised @ weight.T + bias

    scores = [fold_mean_r(folds, targets, [projected(fold, rank) for fold in folds]) for rank in AUTO_RANKS]
    chosen = AUTO_RANKS[best(scores)]
    logger.info(
        "the colour ridge's rank by leave-one-section-out over %d sections: %s (mean r %s)",
        len(folds),
        chosen or "full",
        ", ".join(f"{rank or 'full'} {score:.4f}" for rank, score in zip(AUTO_RANKS, scores, strict=True)),
    )
    return chosen


def choose_forest(
    folds: list[Fold], features32: np.ndarray, targets: np.ndarray, rank: int | None
) -> tuple[float, int]:
    """The (share, fewest spots in a leaf) of :data:`AUTO_FORESTS` of best leave-one-section-out mean r.

    As :func:`choose_rank`, with each fold's ridge of ``rank`` and a forest of each leaf size on the same
    programmes (of the fold's training spots, from ``float32`` features), blended at each share. With fewer than
    two folds, :data:`SINGLE_SECTION_FOREST`.
    """
    if not folds:
        logger.info(
            "the training spots come from one section, so the colour ridge's forest cannot be chosen by leaving a "
            "section out: share %g, leaves of %d spots, the choice on most her2st splits",
            *SINGLE_SECTION_FOREST,
        )
        return SINGLE_SECTION_FOREST
    leaves = dict.fromkeys(leaf for share, leaf in AUTO_FORESTS if share)
    linear, forests = [], []  # each fold's predictions, which every candidate blends
    for fold in folds:
        y = targets[~fold.held]
        means = y.mean(0)
        components = programmes(y, rank, fold.components)
        weight, bias = reduced_rank(fold.weight, fold.bias, y, rank, components)
        linear.append(fold.standardised @ weight.T + bias)
        programme_scores = (y - means) @ components.T
        # on many spots the leaf sizes are raised to the same one, and one forest serves them
        size_of = {leaf: spots_per_leaf(len(y), leaf) for leaf in leaves}
        by_size = {}
        for leaf, size in size_of.items():
            if size not in by_size:
                trees = extra_trees(features32[~fold.held], programme_scores, leaf)
                by_size[size] = means + forest_predictions(trees, features32[fold.held]) @ components
        forests.append({leaf: by_size[size] for leaf, size in size_of.items()})

    def blended(share: float, leaf: int) -> list[np.ndarray]:
        return [
            ridge if share == 0 else (1 - share) * ridge + share * forest[leaf]
            for ridge, forest in zip(linear, forests, strict=True)
        ]

    scores = [fold_mean_r(folds, targets, blended(share, leaf)) for share, leaf in AUTO_FORESTS]
    share, leaf = AUTO_FORESTS[best(scores)]
    logger.info(
        "the colour ridge's forest by leave-one-section-out over %d sections: share %g, leaves of %d spots (mean r %s)",
        len(folds),
        share,
        leaf,
        ", ".join(f"{t:g}/{lf} {score:.4f}" for (t, lf), score in zip(AUTO_FORESTS, scores, strict=True)),
    )
    return share, leaf


def fitting_sample(n_spots: int) -> np.ndarray | None:
    """The training spots, of ``n_spots``, that the colour model is fitted on: sorted indices, or ``None`` for all.

    All where there are at most :data:`MAX_COLOUR_SPOTS`; else that many, drawn with a fixed seed.
    """
    if n_spots <= MAX_COLOUR_SPOTS:
        return None
    return np.sort(np.random.default_rng(0).choice(n_spots, MAX_COLOUR_SPOTS, replace=False))


def extra_trees(features: np.ndarray, scores: np.ndarray, leaf: int):
    """A fitted forest of :data:`N_TREES` extremely randomised trees from ``features`` to ``scores``.

    Its leaves hold at least ``leaf`` of the spots, or one in :data:`LEAVES_PER_TREE` of them where that is more
    (:func:`spots_per_leaf`).
    """
    from sklearn.ensemble import ExtraTreesRegressor

    forest = ExtraTreesRegressor(
        N_TREES, min_samples_leaf=spots_per_leaf(len(features), leaf), max_features=0.5, random_state=0
    )
    return forest.fit(features, scores[:, 0] if scores.shape[1] == 1 else scores)  # one output: a vector


def spots_per_leaf(n_spots: int, leaf: int) -> int:
    """The fewest spots in a leaf of a forest asked for ``leaf`` on ``n_spots`` training spots (:func:`extra_trees`)."""
    return max(leaf, -(-n_spots // LEAVES_PER_TREE))


def forest_predictions(forest, features: np.ndarray) -> np.ndarray:
    """The scores ``forest`` predicts for ``features``, ``(n, k)``; scikit-learn's are ``(n,)`` where ``k`` is 1."""
    return forest.predict(features).reshape(len(features), -1)


def programmes(targets: np.ndarray, rank: int | None, components: np.ndarray | None = None) -> np.ndarray:
    """The leading principal components of the training ``targets`` that a forest predicts.

    ``rank`` of them (:data:`SINGLE_SECTION_RANK` for a ridge of full rank), as many as the spots and genes allow:
    the first rows of ``components`` (from :func:`leading_components` of a higher rank) where it has enough.
    """
    n = min(rank or SINGLE_SECTION_RANK, len(targets) - 1, targets.shape[1])
    if components is not None and len(components) >= n:
        return components[:n]
    return leading_components(targets - targets.mean(0), n)


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
