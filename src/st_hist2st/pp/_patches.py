from __future__ import annotations

from typing import Any

import numpy as np
from anndata import AnnData

from st_hist2st._constants import PATCH_SIZE, Key
from st_hist2st._data._section import extract_patches as _extract
from st_hist2st._utils import check_adata


def extract_patches(
    adata: AnnData,
    image_key: str,
    *,
    library_key: str | None = Key.library,
    spatial_key: str = Key.spatial,
    image: Any = None,
    crop_size: float | None = None,
    patch_size: int = PATCH_SIZE,
    show_progress_bar: bool = True,
) -> np.ndarray:
    """Cut one uint8 H&E patch per spot, as the model sees it.

    A square of side ``crop_size`` full-resolution pixels is cut around each spot centre and resized to
    ``patch_size``. Parts of a crop outside the image are white; a warning is raised when many patches are
    mostly outside. Only bands of the image around the spots are read, so lazily loaded (dask, zarr) images
    are never held whole.

    Parameters
    ----------
    adata
        Spots with centres (x, y) in full-resolution pixels in ``obsm[spatial_key]``.
    image_key
        Image to crop from: a key of ``uns['spatial'][library_id]['images']`` (scaled by
        ``scalefactors['tissue_{image_key}_scalef']``), a layer of the ImageContainer or an image element of
        the SpatialData object given as ``image``.
    library_key
        Column of ``obs`` with the section of each spot.
    spatial_key
        Key of the spot centres in ``obsm``.
    image
        A :class:`squidpy.im.ImageContainer` or :class:`spatialdata.SpatialData` to crop from instead of
        ``adata.uns['spatial']``.
    crop_size
        Side of the crop in full-resolution pixels; defaults to ``spot_diameter_fullres`` of each library.
        The paper uses 112 on her2st.
    patch_size
        Side of the returned patches in pixels.
    show_progress_bar
        Show a progress bar.

    Returns
    -------
    ``(n_obs, 3, patch_size, patch_size)`` uint8 array. ``adata`` is not modified.
    """
    check_adata(adata)
    patches, _ = _extract(
        adata,
        image_key,
        library_key=library_key,
        spatial_key=spatial_key,
        image=image,
        crop_size=crop_size,
        patch_size=patch_size,
        show_progress_bar=show_progress_bar,
    )
    return patches
