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

_MASK_SIDE = 1024


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of uint8 values."""
    hist = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    weight = np.cumsum(hist)
    mean = np.cumsum(hist * np.arange(256))
    total, total_mean = weight[-1], mean[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mean * weight - mean * total) ** 2 / (weight * (total - weight))
    return float(np.nanargmax(between[:-1]))


def tile(
    image: Any,
    *,
    spot_step: float,
    scale: float = 1.0,
    image_key: str = "hires",
    library_id: str = "slide",
    layout: str = "st",
    spot_diameter: float | None = None,
    min_tissue: float = 0.5,
    tissue_threshold: float | None = None,
    microns_per_pixel: float | None = None,
) -> AnnData:
    """Pseudo-spots on a regular grid over the tissue of an H&E image, to predict on a slide never sequenced.

    The tissue is found as the pixels no brighter than Otsu's threshold of the greyscale image (white glass is
    background). A grid point becomes a spot when at least ``min_tissue`` of the square of side
    ``spot_diameter`` around it is tissue.

    Parameters
    ----------
    image
        ``(height, width, 3)`` H&E image (numpy, dask or any array that can be sliced).
    spot_step
        Distance between neighbouring pseudo-spots, in full-resolution pixels (e.g. the ST array pitch, 200 um).
    scale
        Image pixels per full-resolution pixel (``tissue_{image_key}_scalef``); 1 when the image is full resolution.
    image_key
        Key under which the image is stored.
    library_id
        Name of the slide.
    layout
        ``'st'`` (square grid) or ``'visium'`` (hexagonal grid, ``array_row + array_col`` even).
    spot_diameter
        Side of the patch around each spot in full-resolution pixels (stored as ``spot_diameter_fullres``);
        default half of ``spot_step``.
    min_tissue
        Fraction of tissue a spot needs.
    tissue_threshold
        Greyscale value up to which a pixel is tissue; default Otsu's threshold.
    microns_per_pixel
        Micrometres per full-resolution pixel of the slide, when known: :func:`~st_hist2st.tl.predict` then
        cuts the physical crop size the model was trained with. Pseudo-spots have no platform spot diameter to
        infer it from.

    Returns
    -------
    AnnData with no genes, ``obs['library_id']``, ``obs['array_row']``/``['array_col']``, ``obsm['spatial']`` in
    full-resolution pixels and ``uns['spatial'][library_id]`` with the image and its scale factors: ready for
    :func:`st_hist2st.tl.predict`.
    """
    if layout not in ("st", "visium"):
        raise ValueError(f"`layout` must be 'st' or 'visium', got {layout!r}.")
    if spot_step <= 0 or scale <= 0:
        raise ValueError("`spot_step` and `scale` must be positive.")
    if not 0 <= min_tissue <= 1:
        raise ValueError(f"`min_tissue` must be in [0, 1], got {min_tissue}.")
    height, width = int(image.shape[0]), int(image.shape[1])
    spot_diameter = spot_step / 2 if spot_diameter is None else float(spot_diameter)
    stride = max(1, int(np.ceil(max(height, width) / _MASK_SIDE)))
    small = as_rgb_uint8(np.asarray(image[::stride, ::stride]), name="`image`")
    grey = (small.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).astype(np.uint8)
    threshold = otsu_threshold(grey) if tissue_threshold is None else float(tissue_threshold)
    tissue = grey <= threshold
    full_w, full_h = width / scale, height / scale
    if layout == "visium":
        dy = spot_step * np.sqrt(3) / 2
        rows = np.arange(int(full_h // dy) + 1)
        points = [
            (r, 2 * c + (r % 2), (c + (r % 2) / 2) * spot_step, r * dy)
            for r in rows
            for c in range(int(full_w // spot_step) + 1)
        ]
    else:
        points = [
            (r, c, c * spot_step, r * spot_step)
            for r in range(int(full_h // spot_step) + 1)
            for c in range(int(full_w // spot_step) + 1)
        ]
    grid = np.array(points, dtype=np.float64)
    offset_x = (full_w - grid[:, 2].max()) / 2
    offset_y = (full_h - grid[:, 3].max()) / 2
    xy = grid[:, 2:] + [offset_x, offset_y]
    half = spot_diameter * scale / 2 / stride
    cx, cy = xy[:, 0] * scale / stride, xy[:, 1] * scale / stride
    frac = np.array(
        [
            tissue[max(0, int(y - half)) : int(y + half) + 1, max(0, int(x - half)) : int(x + half) + 1].mean()
            if tissue[max(0, int(y - half)) : int(y + half) + 1, max(0, int(x - half)) : int(x + half) + 1].size
            else 0.0
            for x, y in zip(cx, cy, strict=True)
        ]
    )
    keep = frac >= min_tissue
    if not keep.any():
        raise ValueError(
            "No pseudo-spot covers enough tissue; lower `min_tissue` or set `tissue_threshold` "
            f"(Otsu's threshold here: {threshold:.0f})."
        )
    rows, cols = grid[keep, 0].astype(int), grid[keep, 1].astype(int)
    obs = pd.DataFrame(
        {Key.library: pd.Categorical([library_id] * int(keep.sum())), Key.array_row: rows, Key.array_col: cols},
        index=[f"{library_id}_{r}x{c}" for r, c in zip(rows, cols, strict=True)],
    )
    adata = AnnData(obs=obs)
    adata.obsm[Key.spatial] = xy[keep]
    adata.obsm["tissue_fraction"] = frac[keep][:, None]
    adata.uns[Key.spatial] = {
        library_id: {
            Key.images: {image_key: image},
            Key.scalefactors: {f"tissue_{image_key}_scalef": float(scale), "spot_diameter_fullres": spot_diameter},
            "metadata": {
                "source": "st_hist2st.pp.tile",
                "tissue_threshold": threshold,
                PSEUDO_SPOTS_KEY: True,
                **({MICRONS_KEY: float(microns_per_pixel)} if microns_per_pixel else {}),
            },
        }
    }
    logger.info("tiled %d pseudo-spots over the tissue (of %d grid points)", int(keep.sum()), len(keep))
    return adata
