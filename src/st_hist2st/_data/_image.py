"""One image abstraction for the three places an H&E image can live.

Every source is turned into an :class:`ImageSource`: an ``(height, width, channels)`` array that is sliced lazily
(numpy, dask, xarray or zarr) plus the affine map from full-resolution (x, y) coordinates to its pixels.
"""

from __future__ import annotations

import mmap
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from anndata import AnnData

from st_hist2st._constants import Key


@dataclass(frozen=True)
class ImageSource:
    """An RGB image and the map from full-resolution coordinates to its pixels.

    A full-resolution point ``(x, y)`` lies at image pixel ``(row, col) = (y * scale[1] + offset[1],
    x * scale[0] + offset[0])``.

    Parameters
    ----------
    array
        ``(height, width, channels)`` array; only the windows that are cropped are ever read.
    scale
        Pixels of this image per full-resolution pixel along x and y.
    offset
        Image pixel of the full-resolution origin, along x and y.
    name
        Where the image came from, for messages.
    """

    array: Any
    scale: tuple[float, float]
    offset: tuple[float, float] = (0.0, 0.0)
    name: str = "image"

    @property
    def height(self) -> int:
        """Image height in pixels."""
        return int(self.array.shape[0])

    @property
    def width(self) -> int:
        """Image width in pixels."""
        return int(self.array.shape[1])

    def to_pixels(self, coords: np.ndarray) -> np.ndarray:
        """Map ``(n, 2)`` full-resolution (x, y) to ``(n, 2)`` image (x, y) pixel coordinates."""
        coords = np.asarray(coords, dtype=np.float64)
        return coords * np.asarray(self.scale) + np.asarray(self.offset)

    def read(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        """Read the window ``[row0, row1) x [col0, col1)`` (inside the image) as a uint8 RGB array."""
        window = np.asarray(self.array[row0:row1, col0:col1])
        return as_rgb_uint8(window, name=self.name)

    def release_pages(self) -> None:
        """Drop the pages read so far from this process when the image is a read-only memory map.

        Pages of a file mapped with ``np.load(..., mmap_mode='r')`` count towards the process's resident memory
        until they are unmapped, although the file holds them; they stay in the operating system's page cache,
        and a later read maps them again. Other arrays are left alone (a copy-on-write map may hold changes that
        exist nowhere else).
        """
        array = self.array
        if not isinstance(array, np.memmap) or array.mode != "r" or not hasattr(mmap, "MADV_DONTNEED"):
            return
        base = array
        while base is not None and not isinstance(base, mmap.mmap):
            base = getattr(base, "base", None)
        if base is not None:
            base.madvise(mmap.MADV_DONTNEED)


def as_rgb_uint8(window: np.ndarray, *, name: str = "image") -> np.ndarray:
    """Bring an image window to ``(h, w, 3)`` uint8: grey is repeated, alpha dropped, [0, 1] floats scaled."""
    if window.ndim == 2:
        window = window[..., None]
    if window.shape[-1] == 1:
        window = np.repeat(window, 3, axis=-1)
    elif window.shape[-1] == 4:
        window = window[..., :3]
    elif window.shape[-1] != 3:
        raise ValueError(f"{name} must have 1, 3 or 4 channels, got {window.shape[-1]}.")
    if window.dtype == np.uint8:
        return window
    if np.issubdtype(window.dtype, np.floating):
        # scanpy stores Visium images as float in [0, 1]
        scale = 255.0 if window.size == 0 or float(np.nanmax(window)) <= 1.0 else 1.0
        return np.clip(np.rint(window * scale), 0, 255).astype(np.uint8)
    if window.dtype == np.uint16:
        return (window // 257).astype(np.uint8)
    return np.clip(window, 0, 255).astype(np.uint8)


def image_from_anndata(adata: AnnData, image_key: str, library_id: str) -> ImageSource:
    """Image ``uns['spatial'][library_id]['images'][image_key]`` scaled by ``tissue_{image_key}_scalef``."""
    spatial = adata.uns.get(Key.spatial)
    if not isinstance(spatial, dict) or not spatial:
        raise KeyError(
            "`adata.uns['spatial']` holds no images. Store them as `uns['spatial'][library_id]['images']"
            "[image_key]` with `scalefactors` (the scanpy Visium layout), or pass `image=` with a squidpy "
            "ImageContainer or a SpatialData object."
        )
    if library_id not in spatial:
        raise KeyError(
            f"Library {library_id!r} has no entry in `adata.uns['spatial']` (libraries there: {list(spatial)}). "
            "Check `library_key=` or add the library's images."
        )
    entry = spatial[library_id]
    images = entry.get(Key.images, {})
    if image_key not in images:
        raise KeyError(
            f"Unknown `image_key={image_key!r}` for library {library_id!r}; available images: {list(images)}."
        )
    scalefactors = entry.get(Key.scalefactors, {})
    scale_name = f"tissue_{image_key}_scalef"
    if scale_name not in scalefactors:
        raise KeyError(
            f"Missing scale factor `adata.uns['spatial'][{library_id!r}]['scalefactors'][{scale_name!r}]`: "
            f"it maps `obsm['spatial']` (full-resolution pixels) onto the {image_key!r} image. Add it "
            "(1.0 for a full-resolution image)."
        )
    scale = float(scalefactors[scale_name])
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"Scale factor {scale_name!r} of library {library_id!r} must be positive, got {scale}.")
    return ImageSource(
        images[image_key], (scale, scale), name=f"uns['spatial'][{library_id!r}]['images'][{image_key!r}]"
    )


def image_from_container(container: Any, layer: str, library_id: str | None = None) -> ImageSource:
    """Layer ``layer`` of a squidpy :class:`~squidpy.im.ImageContainer` at its ``scale`` attribute.

    A container with several z-planes holds one library per plane, named by ``library_id``.
    """
    if layer not in container:
        raise KeyError(f"Unknown `image_key={layer!r}`; the ImageContainer has layers {list(container)}.")
    arr = container[layer]
    if "z" in arr.dims:
        zs = [str(z) for z in arr.coords["z"].values]
        if arr.sizes["z"] == 1:
            arr = arr.isel(z=0)
        elif library_id in zs:
            arr = arr.isel(z=zs.index(library_id))
        else:
            raise KeyError(f"Library {library_id!r} is not a z-plane of the ImageContainer (planes: {zs}).")
    arr = arr.transpose("y", "x", ...)
    scale = float(container.data.attrs.get("scale", 1.0))
    return ImageSource(arr.data, (scale, scale), name=f"ImageContainer[{layer!r}]")


def image_from_spatialdata(
    sdata: Any,
    element: str,
    *,
    library_id: str | None = None,
    table: AnnData | None = None,
    coordinate_system: str | Mapping[str, str] | None = None,
) -> ImageSource:
    """The image of one library in a SpatialData object, with the map from ``obsm['spatial']`` to its pixels.

    The library's rows annotate a region (the table's ``region`` column: a shapes element, e.g. the Visium
    spots of one sample), whose intrinsic coordinates ``obsm['spatial']`` holds. The image is the element named
    ``element``, or the one whose name contains it (``'hires'`` finds ``'sample1_hires_image'``), that has a
    transformation to a coordinate system of that region; the two transformations compose to the map from
    coordinates to pixels. Scales, flips and translations are supported, rotations not. Where several images or
    coordinate systems give different maps, ``coordinate_system`` (one name, or one per library) chooses.
    """
    from spatialdata.transformations import get_transformation

    names = [element] if element in sdata.images else [n for n in sdata.images if element in n]
    if not names:
        raise KeyError(f"Unknown `image_key={element!r}`; the SpatialData object has images {list(sdata.images)}.")
    wanted = coordinate_system.get(library_id) if isinstance(coordinate_system, Mapping) else coordinate_system
    region = _region(sdata, table, library_id)
    if region is not None:
        region_systems = get_transformation(_element(sdata, region), get_all=True)
        region_maps = {cs: _matrix(t) for cs, t in region_systems.items()}
    else:  # a table of no region: its coordinates are taken to be in the coordinate system asked for
        region_maps = {wanted or "global": np.eye(3)}
    candidates = []
    for name in names:
        image = _full_resolution(sdata.images[name])
        for cs, transform in get_transformation(sdata.images[name], get_all=True).items():
            if cs in region_maps and (wanted is None or cs == wanted):
                candidates.append((name, cs, np.linalg.solve(_matrix(transform), region_maps[cs]), image))
    where = f"region {region!r}" if region is not None else f"coordinate system {wanted or 'global'!r}"
    if not candidates:
        raise KeyError(
            f"No image matching `image_key={element!r}` ({names}) has a transformation to a coordinate system of "
            f"{where} (those: {list(region_maps)}); pass `coordinate_system=` naming one both share."
        )
    distinct = [c for i, c in enumerate(candidates) if not any(np.allclose(c[2], d[2]) for d in candidates[:i])]
    if len({c[0] for c in candidates}) > 1 or len(distinct) > 1:
        listing = ", ".join(f"{name!r} in {cs!r}" for name, cs, _, _ in candidates)
        raise ValueError(
            f"Library {library_id!r}: several images or coordinate systems fit `image_key={element!r}` ({listing}); "
            "pass the image element's full name as `image_key`, or `coordinate_system=`."
        )
    name, cs, matrix, image = candidates[0]
    if abs(matrix[0, 1]) > 1e-9 or abs(matrix[1, 0]) > 1e-9:
        raise ValueError(f"Image {name!r} is rotated or sheared against {where} in {cs!r}; not supported.")
    arr = image.transpose("y", "x", "c")
    return ImageSource(
        arr.data, (matrix[0, 0], matrix[1, 1]), (matrix[0, 2], matrix[1, 2]), name=f"SpatialData image {name!r}"
    )


def spatialdata_spot_diameter(sdata: Any, table: AnnData | None, library_id: str | None) -> float | None:
    """Diameter of the circles of the library's region (spatialdata-io's Visium spots), in its coordinates."""
    region = _region(sdata, table, library_id)
    if region is None or region not in sdata.shapes or "radius" not in sdata.shapes[region]:
        return None
    return 2.0 * float(np.median(sdata.shapes[region]["radius"]))


def spatialdata_microns_per_unit(sdata: Any, table: AnnData | None, library_id: str | None, system: str) -> float:
    """Micrometres per unit of ``obsm['spatial']``: the scale of the library's region in the micrometre ``system``.

    spatialdata keeps no units in memory, so the caller names the coordinate system that is in micrometres.
    """
    from spatialdata.transformations import get_transformation

    region = _region(sdata, table, library_id)
    if region is None:
        raise ValueError(
            f"Library {library_id!r}: the table names no region, so its coordinates cannot be placed in {system!r}; "
            "pass `microns_per_pixel=` as a number."
        )
    systems = get_transformation(_element(sdata, region), get_all=True)
    if system not in systems:
        raise KeyError(
            f"`microns_per_pixel={system!r}` names no coordinate system of region {region!r} (it has "
            f"{list(systems)}); name the one in micrometres, or pass a number."
        )
    linear = _matrix(systems[system])[:2, :2]
    return float(np.sqrt(abs(np.linalg.det(linear))))


def _region(sdata: Any, table: AnnData | None, library_id: str | None) -> str | None:
    """The element the table's rows of ``library_id`` annotate, where the table says so."""
    attrs = table.uns.get("spatialdata_attrs", {}) if table is not None else {}
    region_key = attrs.get("region_key") if isinstance(attrs, Mapping) else None
    if region_key is None or region_key not in table.obs:
        return None
    regions = [str(r) for r in table.obs[region_key].unique()]
    if library_id in regions:
        return library_id
    if len(regions) == 1:
        return regions[0]
    return None


def _element(sdata: Any, name: str) -> Any:
    for kind in ("shapes", "points", "labels", "images"):
        elements = getattr(sdata, kind, {})
        if name in elements:
            return elements[name]
    raise KeyError(f"The table annotates {name!r}, which the SpatialData object does not hold.")


def _full_resolution(image: Any) -> Any:
    """Level 0 of a multiscale image (a DataTree), or the image itself."""
    if hasattr(image, "children") and not hasattr(image, "dims"):
        return next(iter(image["scale0"].values()))
    return image


def _matrix(transform: Any) -> np.ndarray:
    """The 3 x 3 affine matrix of a spatialdata transformation on (x, y)."""
    return np.asarray(transform.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), dtype=np.float64)
