"""Parameter descriptions shared by the public functions, written once (squidpy's pattern)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

DOCS = {
    "image_key": (
        "Image to crop patches from: a key of ``uns['spatial'][library_id]['images']`` (e.g. ``'hires'``, "
        "scaled onto ``obsm['spatial']`` by ``scalefactors['tissue_<image_key>_scalef']``), a layer of the "
        "ImageContainer or an image element of the SpatialData object given as ``image``."
    ),
    "image": (
        "A :class:`squidpy.im.ImageContainer` or :class:`spatialdata.SpatialData` with the images, used instead "
        "of ``adata.uns['spatial']``."
    ),
    "crop_size": "Side of the square cut around each spot centre, in full-resolution pixels (112 on her2st, as the paper).",
    "crop_microns": (
        "Side of the square cut around each spot, in micrometres, at each library's own scale (see "
        "``microns_per_pixel``); instead of ``crop_size``."
    ),
    "microns_per_pixel": (
        "Micrometres per full-resolution pixel: one figure, or one per library; for a SpatialData ``image``, "
        "also the name of its coordinate system in micrometres (e.g. Xenium's ``'global'``), whose "
        "transformation of each library's region gives the scale. Default "
        "``uns['spatial'][library_id]['metadata']['microns_per_pixel']`` where present, else "
        "``spot_diameter_fullres`` and the platform's spot diameter (Visium 55 um, legacy ST 100 um). The "
        "model records the micrometres it was trained at, so that it crops the same piece of tissue on any slide."
    ),
    "coordinate_system": (
        "For a SpatialData ``image``: the coordinate system in which the table's region and the image meet (one "
        "name, or one per library). Needed only where several fit; the error lists them."
    ),
    "library_key": "Column of ``obs`` with the section of each spot; one section when the default column is absent.",
    "spatial_key": "Key of the spot centres (x, y), in full-resolution pixels, in ``obsm``.",
    "connectivity_key": (
        "Key of the spot graph in ``obsp`` (squidpy's default); when absent, the graph is built by the paper's "
        "rule (see :func:`st_hist2st.pp.spatial_graph`)."
    ),
    "show_progress_bar": "Show progress bars: one for cutting the patches, one for training or predicting.",
}

_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def inject_docs(func: F) -> F:
    """Fill the ``%(name)s`` placeholders of ``func``'s docstring from :data:`DOCS` (an unknown name fails)."""
    if func.__doc__:
        func.__doc__ = _PLACEHOLDER.sub(lambda match: DOCS[match.group(1)], func.__doc__)
    return func
