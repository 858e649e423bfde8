from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from st_hist2st._constants import Key
from st_hist2st._data._image import as_rgb_uint8
from st_hist2st._data._scale import MICRONS_KEY, PSEUDO_SPOTS_KEY

logger = logging.getLogger(__name__)


_MASK_SIDE = 2048


def tissue_mask(image: np.ndarray, threshold: float | None = None) -> tuple[np.ndarray, float]:
    """Tissue pixels of a small RGB image, and the threshold that separated them from the glass.

    Stained tissue is coloured and glass is white or grey, so the tissue is the pixels whose colour saturation
    is above scikit-image's Otsu threshold of the saturations (pale stroma included, which a threshold on
    brightness misses); a grey image, or a given ``threshold`` (a greyscale value), takes the pixels darker
    than it instead. A morphological closing then joins tissue broken by pale areas, and specks and holes
    smaller than 0.1 % of the image are dropped.
    """
    from skimage.filters import threshold_otsu
    from skimage.morphology import closing, disk, remove_small_holes, remove_small_objects

    rgb = as_rgb_uint8(np.asarray(image), name="`image`").astype(np.float32)
    brightest, darkest = rgb.max(-1), rgb.min(-1)
    saturation = (brightest - darkest) / np.maximum(brightest, 1.0)
    if threshold is None and np.ptp(saturation) > 0.05:
        threshold = float(threshold_otsu(saturation))
        tissue = saturation > threshold
    else:
        grey = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        if threshold is None:
            threshold = float(threshold_otsu(grey)) if np.ptp(grey) > 0 else float(grey.max())
        tissue = grey <= threshold
    small = max(4, int(1e-3 * tissue.size))
    tissue = closing(tissue, disk(2))
    tissue = remove_small_objects(tissue, max_size=small)
    tissue = remove_small_holes(tissue, max_size=small)
    return tissue, float(threshold)


def _box_fraction(mask: np.ndarray, cx: np.ndarray, cy: np.ndarray, half: float) -> np.ndarray:
    """Fraction of ``mask`` inside the square of half-side ``half`` (mask pixels) around each centre."""
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = mask.shape
    y0 = np.clip(np.floor(cy - half).astype(np.int64), 0, h)
    y1 = np.clip(np.floor(cy + half).astype(np.int64) + 1, 0, h)
    x0 = np.clip(np.floor(cx - half).astype(np.int64), 0, w)
    x1 = np.clip(np.floor(cx + half).astype(np.int64) + 1, 0, w)
    total = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    area = (y1 - y0) * (x1 - x0)
    return np.where(area > 0, total / np.maximum(area, 1), 0.0)


def _grid(width: float, height: float, step: float, layout: str) -> np.ndarray:
    """``(n, 4)`` rows: array_row, array_col, x, y of a grid over the image, centred on it."""
    if layout == "visium":
        dy = step * np.sqrt(3) / 2
        r, c = np.meshgrid(np.arange(int(height // dy) + 1), np.arange(int(width // step) + 1), indexing="ij")
        r, c = r.ravel(), c.ravel()
        grid = np.stack([r, 2 * c + (r % 2), (c + (r % 2) / 2) * step, r * dy], axis=1).astype(np.float64)
    else:
        r, c = np.meshgrid(np.arange(int(height // step) + 1), np.arange(int(width // step) + 1), indexing="ij")
        r, c = r.ravel(), c.ravel()
        grid = np.stack([r, c, c * step, r * step], axis=1).astype(np.float64)
    grid[:, 2] += (width - grid[:, 2].max()) / 2
    grid[:, 3] += (height - grid[:, 3].max()) / 2
    return grid


def tile(
    image: Any,
    *,
    spot_step: float | None = None,
    spot_microns: float | None = None,
    model: Any = None,
    scale: float = 1.0,
    image_key: str = "hires",
    library_id: str = "slide",
    layout: str = "st",
    spot_diameter: float | None = None,
    min_tissue: float = 0.5,
    tissue_threshold: float | None = None,
    microns_per_pixel: float | None = None,
    level: int | None = None,
) -> AnnData:
    """Pseudo-spots on a regular grid over the tissue of an H&E image, to predict on a slide never sequenced.

    The tissue is found on a thumbnail of at most 2,048 pixels a side (:func:`~st_hist2st.pp.tissue_mask`: scikit-image's
    Otsu threshold of the colour saturation, and morphology), so a whole-slide image (:func:`~st_hist2st.pp.read_slide`) is read only at
    a coarse level here. A grid point becomes a spot when at least ``min_tissue`` of the square of side
    ``spot_diameter`` around it is tissue.

    Parameters
    ----------
    image
        ``(height, width, 3)`` H&E image (numpy, dask or any array that can be sliced), or a
        :class:`~st_hist2st.pp.Slide`.
    spot_step
        Distance between neighbouring pseudo-spots, in full-resolution pixels (e.g. the ST array pitch).
    spot_microns
        The same in micrometres (needs the slide's ``microns_per_pixel``). Default, with ``model``, the
        model's crop side in micrometres: pseudo-spots whose patches tile the tissue.
    model
        A trained :class:`~st_hist2st.Hist2ST` (or its folder) to tile for: its crop side gives the default
        spot diameter and step, and on a :class:`~st_hist2st.pp.Slide` its training resolution picks the
        pyramid level stored for prediction.
    scale
        Image pixels per full-resolution pixel (``tissue_{image_key}_scalef``) of an array; 1 when the image
        is full resolution. A :class:`~st_hist2st.pp.Slide` sets it from the level.
    image_key
        Key under which the image is stored.
    library_id
        Name of the slide.
    layout
        ``'st'`` (square grid) or ``'visium'`` (hexagonal grid, ``array_row + array_col`` even).
    spot_diameter
        Side of the patch around each spot in full-resolution pixels (stored as ``spot_diameter_fullres``);
        default the model's crop side with ``model``, else half of ``spot_step``.
    min_tissue
        Fraction of tissue a spot needs.
    tissue_threshold
        Greyscale value up to which a pixel is tissue; default Otsu's threshold of the colour saturation
        (:func:`~st_hist2st.pp.tissue_mask`).
    microns_per_pixel
        Micrometres per full-resolution pixel of the slide; default a :class:`~st_hist2st.pp.Slide`'s own.
        :func:`~st_hist2st.tl.predict` then cuts the physical crop size the model was trained with.
    level
        Pyramid level of a :class:`~st_hist2st.pp.Slide` to store for prediction; default the level nearest
        the model's training resolution without being coarser (:meth:`~st_hist2st.pp.Slide.level_for`), or
        full resolution without a model.

    Returns
    -------
    AnnData with no genes, ``obs['library_id']``, ``obs['array_row']``/``['array_col']``, ``obsm['spatial']`` in
    full-resolution pixels, ``obsm['tissue_fraction']`` and ``uns['spatial'][library_id]`` with the image (a
    slide's level, still unread) and its scale factors: ready for :func:`st_hist2st.tl.predict`.
    """
    from st_hist2st._data._slide import Slide
    from st_hist2st._model import resolve_model

    if layout not in ("st", "visium"):
        raise ValueError(f"`layout` must be 'st' or 'visium', got {layout!r}.")
    if not 0 <= min_tissue <= 1:
        raise ValueError(f"`min_tissue` must be in [0, 1], got {min_tissue}.")
    if not scale > 0:
        raise ValueError(f"`scale` must be positive, got {scale}.")
    is_slide = isinstance(image, Slide)
    if is_slide and scale != 1.0:
        raise ValueError("`scale` is for arrays; a Slide's levels carry their own scale (pass `level=`).")
    mpp = microns_per_pixel if microns_per_pixel is not None else (image.microns_per_pixel if is_slide else None)
    if mpp is not None and not float(mpp) > 0:
        raise ValueError(f"`microns_per_pixel` must be positive, got {mpp}.")
    crop_microns = patch_microns = None
    if model is not None:
        model = resolve_model(model)
        crop_microns = model.preprocessing.get("crop_microns")
        patch_microns = model.preprocessing.get("patch_microns_per_pixel")
    if spot_step is None:
        microns = spot_microns if spot_microns is not None else crop_microns
        if microns is None:
            raise ValueError(
                "Pass `spot_step=` (pixels) or `spot_microns=` (micrometres), or a `model=` that records its crop "
                "in micrometres."
            )
        if mpp is None:
            raise ValueError(
                f"Spots of {microns:g} um need the slide's scale: pass `microns_per_pixel=` (micrometres per "
                "full-resolution pixel), or `spot_step=` in pixels."
            )
        spot_step = float(microns) / float(mpp)
    if not spot_step > 0:
        raise ValueError(f"`spot_step` must be positive, got {spot_step}.")
    if spot_diameter is None:
        spot_diameter = crop_microns / float(mpp) if (crop_microns and mpp) else spot_step / 2
    spot_diameter = float(spot_diameter)

    if is_slide:
        height, width = image.shape[:2]
        thumbnail, per_mask_pixel = image.thumbnail(_MASK_SIDE)
        if level is None:
            level = image.level_for(patch_microns) if (patch_microns and image.microns_per_pixel) else 0
        if not 0 <= level < len(image.levels):
            raise ValueError(f"`level={level}`: the slide has levels 0 to {len(image.levels) - 1}.")
        stored, scale = image.level(level), 1.0 / image.downsamples[level]
    else:
        height, width = image.shape[0] / scale, image.shape[1] / scale
        stride = max(1, int(np.ceil(max(image.shape[0], image.shape[1]) / _MASK_SIDE)))
        thumbnail, per_mask_pixel = np.asarray(image[::stride, ::stride]), stride / scale
        stored = image
    tissue, threshold = tissue_mask(thumbnail, tissue_threshold)
    grid = _grid(float(width), float(height), spot_step, layout)
    xy = grid[:, 2:]
    frac = _box_fraction(
        tissue, xy[:, 0] / per_mask_pixel, xy[:, 1] / per_mask_pixel, spot_diameter / 2 / per_mask_pixel
    )
    keep = frac >= min_tissue
    if not keep.any():
        raise ValueError(
            "No pseudo-spot covers enough tissue; lower `min_tissue` or set `tissue_threshold` (a greyscale value; "
            f"the threshold found here: {threshold:.3g})."
        )
    rows, cols = grid[keep, 0].astype(int), grid[keep, 1].astype(int)
    obs = pd.DataFrame(
        {Key.library: pd.Categorical([library_id] * int(keep.sum())), Key.array_row: rows, Key.array_col: cols},
        index=[f"{library_id}_{r}x{c}" for r, c in zip(rows, cols, strict=True)],
    )
    adata = AnnData(obs=obs)
    adata.obsm[Key.spatial] = xy[keep]
    adata.obsm["tissue_fraction"] = frac[keep][:, None]
    metadata = {"source": "st_hist2st.pp.tile", "tissue_threshold": threshold, PSEUDO_SPOTS_KEY: True}
    if mpp:
        metadata[MICRONS_KEY] = float(mpp)
    if is_slide:
        metadata.update({"slide": str(image.path), "level": int(level)})
    adata.uns[Key.spatial] = {
        library_id: {
            Key.images: {image_key: stored},
            Key.scalefactors: {f"tissue_{image_key}_scalef": float(scale), "spot_diameter_fullres": spot_diameter},
            "metadata": metadata,
        }
    }
    logger.info("tiled %d pseudo-spots over the tissue (of %d grid points)", int(keep.sum()), len(keep))
    return adata
