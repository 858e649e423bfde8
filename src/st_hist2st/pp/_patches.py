from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from anndata import AnnData

from st_hist2st._constants import PATCH_SIZE, Key
from st_hist2st._data._section import extract_patches as _extract
from st_hist2st._docs import inject_docs
from st_hist2st._utils import check_adata


@inject_docs
def extract_patches(
    adata: AnnData,
    image_key: str,
    *,
    library_key: str | None = Key.library,
    spatial_key: str = Key.spatial,
    image: Any = None,
    crop_size: float | None = None,
    patch_size: int = PATCH_SIZE,
    crop_microns: float | None = None,
    microns_per_pixel: float | Mapping[str, float] | str | None = None,
    coordinate_system: str | Mapping[str, str] | None = None,
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
        %(image_key)s
    library_key
        %(library_key)s
    spatial_key
        %(spatial_key)s
    image
        %(image)s
    crop_size
        %(crop_size)s Default ``scalefactors['spot_diameter_fullres']`` of each library.
    patch_size
        Side of the returned patches in pixels.
    crop_microns
        %(crop_microns)s
    microns_per_pixel
        %(microns_per_pixel)s
    coordinate_system
        %(coordinate_system)s
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
        crop_microns=crop_microns,
        microns_per_pixel=microns_per_pixel,
        coordinate_system=coordinate_system,
        show_progress_bar=show_progress_bar,
    )
    return patches
