from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from st_hist2st._constants import Key
from st_hist2st._data._windows import DEFAULT_MAX_SPOTS
from st_hist2st._docs import inject_docs
from st_hist2st._inference import DEFAULT_WINDOW_CONTEXT
from st_hist2st._model import Hist2ST, resolve_model
from st_hist2st._uncertainty import check_levels, target_distribution
from st_hist2st._utils import check_adata, check_not_view, check_precision, check_var_names, get_libraries

logger = logging.getLogger(__name__)


@inject_docs
def predict(
    adata: AnnData,
    model: Hist2ST | str | Path | Sequence[Hist2ST | str | Path],
    image_key: str | None = None,
    *,
    library_key: str | None = Key.library,
    spatial_key: str = Key.spatial,
    connectivity_key: str = Key.connectivities,
    image: Any = None,
    crop_size: float | None = None,
    crop_microns: float | None = None,
    microns_per_pixel: float | Mapping[str, float] | str | None = None,
    coordinate_system: str | Mapping[str, str] | None = None,
    device: str | None = None,
    precision: str = "32-true",
    test_time_augmentation: bool = False,
    max_spots: int | None = DEFAULT_MAX_SPOTS,
    window_margin: int | None = None,
    window_context: int = DEFAULT_WINDOW_CONTEXT,
    uncertainty: bool = False,
    interval_levels: Sequence[float] = (0.8, 0.95),
    show_progress_bar: bool = True,
    key_added: str = Key.prediction,
    copy: bool = False,
) -> AnnData | None:
    """Predict expression from the H&E image with a trained Hist2ST model.

    The predictions are on the scale of the model's targets, ``log10(1 + 1e4 * c / sum(c))`` over the model's
    genes.

    Parameters
    ----------
    adata
        Spots with centres in ``obsm[spatial_key]`` and their images (as for :func:`st_hist2st.tl.fit`).
        With measured genes, every gene of the model must be among ``var_names``; with no genes at all
        (``adata.n_vars == 0``, an H&E-only slide) a new AnnData is
        returned.
    model
        A trained :class:`~st_hist2st.Hist2ST` or the folder it was saved in; or several, for the average of
        their predictions (an ensemble, e.g. of models trained with different ``seed``; they must predict the
        same genes in the same order). Each model crops with its own training settings unless ``image_key``
        or ``crop_size`` is given.
    image_key
        %(image_key)s Default the key the model was trained with.
    library_key
        %(library_key)s
    spatial_key
        %(spatial_key)s
    connectivity_key
        %(connectivity_key)s
    image
        %(image)s
    crop_size
        %(crop_size)s Default: the model's crop in micrometres where it recorded them, else its crop in pixels.
    crop_microns
        %(crop_microns)s Default the model's (the same piece of tissue as in training, at any resolution).
    microns_per_pixel
        %(microns_per_pixel)s
    coordinate_system
        %(coordinate_system)s
    device
        Torch device; default CUDA when available.
    precision
        ``'32-true'`` or ``'bf16-mixed'`` (bfloat16 autocast), as for :func:`~st_hist2st.tl.fit`; ``'32'`` and
        ``'bf16'`` are the same.
    test_time_augmentation
        Average the predictions over the 8 rotations by multiples of 90 degrees and mirrors of every patch (a
        tissue section has no orientation). Eight times the work; on the four held-out her2st sections it raised
        the mean Pearson r of the ``'fast'`` preset by 0.003-0.014 on the shared splits (see :doc:`/results`).
    max_spots
        Largest window of spots the network attends over at once. A section with more spots (Visium HD bins,
        pooled cells, a tiled whole slide) is split into overlapping spatial windows: each is a compact block
        of spots plus a margin of ``window_margin`` graph hops of neighbours, and every spot keeps the
        prediction of the one window whose block holds it. Time and memory are then linear in the number of
        spots. ``None`` attends over each whole section at once (memory quadratic in its spots without the
        fused attention kernel). See :doc:`/large_sections` for the measured default and its agreement with
        whole-section prediction.
    window_margin
        Graph hops of neighbours around each window's block; default the model's graph layers (``depth3``),
        so that the graph network sees every predicted spot's whole neighbourhood.
    window_context
        Spots drawn at random across the section that every window's Transformer also attends to, each
        weighted as the share of the spots outside the window it stands for, so that attention within a
        window estimates attention over the whole section; they are not predicted there. ``0``: each window
        attends to itself alone.
    uncertainty
        Also write the predictive uncertainty from the model's ZINB head (models trained with a ZINB loss,
        ``zinb`` above 0, as the ``'paper'`` preset is; add ``zinb=0.25, init_zinb_bias=True`` to ``'fast'``):
        the head's count distribution for a spot of median size, carried to the scale of the predictions
        (:doc:`/uncertainty`). Several models give the mixture of their distributions. A model's colour ridge
        (``colour_ridge``) moves the predictions but does not enter these intervals.
    interval_levels
        Levels of the central predictive intervals written with ``uncertainty=True``.
    show_progress_bar
        %(show_progress_bar)s
    key_added
        Name of the layer and of the ``uns`` entry written.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    With genes in ``adata``: ``None`` (or the copy with ``copy=True``), and ``adata`` gets

    - ``layers[key_added]``: ``(n_obs, n_vars)`` float32 predictions, NaN for genes the model does not predict;
    - ``uns[key_added]``: what produced the predictions (genes, image, crop size, libraries, settings, version,
      ``n_models``, and ``median_total``, the training spots' median total count, which
      :func:`~st_hist2st.tl.spatial_autocorr` reads); averaged models that differ in image, crop size or settings
      have theirs under ``'models'``;
    - with ``uncertainty=True``: ``layers[f'{key_added}_std']``, the predictive standard deviation, and for each
      level, such as 0.8, ``layers[f'{key_added}_lower80']`` and ``layers[f'{key_added}_upper80']``, the ends
      of the central predictive interval; their names are under ``uns[key_added]['uncertainty']``, which
      :func:`~st_hist2st.tl.evaluate` reads to report the intervals' coverage.

    Without genes: a new AnnData with the model's genes as ``var``, the predictions in ``X`` and
    ``layers[key_added]``, and ``obs``, ``obsm`` and ``uns['spatial']`` of ``adata``.
    """
    check_adata(adata)
    check_var_names(adata)
    precision = check_precision(precision, predict=True)
    models = [resolve_model(m) for m in (model if isinstance(model, list | tuple) else [model])]
    if not models:
        raise ValueError("`model` is an empty sequence; pass a trained model, or several to average.")
    for m in models:
        m._check_trained()
    model = models[0]
    for i, other in enumerate(models[1:], start=1):
        if list(other.genes) != list(model.genes):
            raise ValueError(
                f"`model[{i}]` predicts other genes than `model[0]` ({len(other.genes)} against "
                f"{len(model.genes)}, or in another order); models averaged must predict the same genes."
            )
    he_only = adata.n_vars == 0
    if not he_only:
        missing = [g for g in model.genes if g not in adata.var_names]
        if missing:
            raise KeyError(
                f"{len(missing)} of the model's {len(model.genes)} genes are not in `adata.var_names`, e.g. "
                f"{missing[:5]}. Predict on the model's genes or on `adata[:, []].copy()` (no genes), which "
                "returns a new AnnData with the model's genes."
            )
        if not copy:
            check_not_view(adata)
    kinds = {m.preprocessing.get("normalize_over", "genes") for m in models}
    if len(kinds) > 1:
        raise ValueError(
            f"The models' targets are normalised differently ({sorted(kinds)}: `normalize_over`); their predictions "
            "are on different scales and cannot be averaged."
        )
    over = kinds.pop()
    if uncertainty:
        interval_levels = check_levels(interval_levels)
        for i, m in enumerate(models):
            m.check_zinb()
            if "median_total" not in m.preprocessing:
                raise ValueError(
                    f"`model[{i}]` was trained before models recorded the median spot total, which "
                    "`uncertainty=True` needs to carry its counts to the predictions' scale; train it again."
                )
    pred, params = None, []
    for m in models:
        one = m.predict(
            adata,
            image_key,
            library_key=library_key,
            spatial_key=spatial_key,
            connectivity_key=connectivity_key,
            image=image,
            crop_size=crop_size,
            crop_microns=crop_microns,
            microns_per_pixel=microns_per_pixel,
            coordinate_system=coordinate_system,
            device=device,
            precision=precision,
            test_time_augmentation=test_time_augmentation,
            max_spots=max_spots,
            window_margin=window_margin,
            window_context=window_context,
            show_progress_bar=show_progress_bar,
            return_zinb=uncertainty,
        )
        if uncertainty:
            one, zinb = one
            params.append(zinb)
        pred = one if pred is None else pred + one
    pred /= len(models)
    total = median_total_of(models)
    spread = predictive_spread(params, total, interval_levels) if uncertainty else {}
    from st_hist2st import __version__

    info = {
        "genes": list(model.genes),
        "libraries": [str(x) for x in get_libraries(adata, library_key).cat.categories],
        **_settings(models, image_key, crop_size, crop_microns),
        "n_models": len(models),
        "precision": precision,
        "test_time_augmentation": test_time_augmentation,
        "max_spots": max_spots,
        "window_margin": window_margin,
        "window_context": window_context,
        "target": f"log10(1 + 1e4 * counts / sum(counts over {'all genes' if over == 'all' else 'the model genes'}))",
        "normalize_over": over,
        **({"median_total": total} if total is not None else {}),
        "package_version": __version__,
    }
    if uncertainty:
        info["uncertainty"] = {
            "std": f"{key_added}_std",
            "intervals": {
                level_name(level): [f"{key_added}_lower{level_name(level)}", f"{key_added}_upper{level_name(level)}"]
                for level in interval_levels
            },
            "median_total": total,
            "source": "ZINB head, spot of median size",
        }
    if he_only:
        out = AnnData(
            X=pred,
            obs=adata.obs.copy(),
            var=pd.DataFrame(index=pd.Index(model.genes)),
            obsm={k: v.copy() for k, v in adata.obsm.items()},
            uns={Key.spatial: adata.uns[Key.spatial]} if Key.spatial in adata.uns else {},
        )
        out.layers[key_added] = pred
        for suffix, values in spread.items():
            out.layers[key_added + suffix] = values
        out.uns[key_added] = info
        logger.info("returned a new AnnData with `layers[%r]` for %d genes", key_added, len(model.genes))
        return out
    if copy:
        adata = adata.copy()
    layer = np.full((adata.n_obs, adata.n_vars), np.nan, dtype=np.float32)
    idx = adata.var_names.get_indexer(model.genes)
    layer[:, idx] = pred
    adata.layers[key_added] = layer
    for suffix, values in spread.items():
        full = np.full((adata.n_obs, adata.n_vars), np.nan, dtype=np.float32)
        full[:, idx] = values
        adata.layers[key_added + suffix] = full
    adata.uns[key_added] = info
    logger.info("added `adata.layers[%r]` and `adata.uns[%r]`", key_added, key_added)
    return adata if copy else None


def level_name(level: float) -> str:
    """``0.8`` as ``'80'``, ``0.975`` as ``'97.5'``: the suffix of an interval's layers."""
    return f"{100 * level:g}"


def predictive_spread(params: list[np.ndarray], total: float, levels: list[float]) -> dict[str, np.ndarray]:
    """Layers (by suffix) of the standard deviation and intervals of the models' mixture of ZINB distributions."""
    stacked = np.stack(params, axis=1)  # (3, n_models, n_obs, n_genes)
    std, intervals = target_distribution(stacked[0], stacked[1], stacked[2], total, levels)
    out = {"_std": std}
    for level, (lower, upper) in intervals.items():
        out[f"_lower{level_name(level)}"], out[f"_upper{level_name(level)}"] = lower, upper
    return out


def _settings(
    models: list[Hist2ST], image_key: str | None, crop_size: float | None, crop_microns: float | None
) -> dict[str, Any]:
    """Image, crop, preset and architecture for ``uns``: once when the models share them, else per model."""
    inputs = [m.prediction_inputs(image_key, crop_size, crop_microns) for m in models]
    each = {
        "image_key": [key for key, _, _ in inputs],
        "crop_size": [size for _, size, _ in inputs],
        "crop_microns": [microns for _, _, microns in inputs],
        "preset": [m.preset for m in models],
        "architecture": [m.architecture.to_dict() for m in models],
    }
    if all(all(v == values[0] for v in values) for values in each.values()):
        return {key: values[0] for key, values in each.items()}
    return {"models": {f"model_{i}": {key: values[i] for key, values in each.items()} for i in range(len(models))}}


def median_total_of(models: Sequence[Hist2ST]) -> float | None:
    """The depth the models' averaged predictions stand for: the median of their median training spot totals.

    ``None`` when a model was trained before models recorded it.
    """
    totals = [m.preprocessing.get("median_total") for m in models]
    return float(np.median(totals)) if None not in totals else None
