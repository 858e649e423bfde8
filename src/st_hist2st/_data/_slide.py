"""Whole-slide images read lazily: tiled TIFFs (OME-TIFF, SVS, NDPI) through tifffile's zarr store, others through OpenSlide."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

_MICRONS = {"nm": 1e-3, "µm": 1.0, "um": 1.0, "mm": 1e3, "cm": 1e4}


class SlideLevel:
    """One level of a slide's pyramid as a ``(height, width, 3)`` array read only where it is sliced.

    ``pixels_read`` counts the pixels read so far, so that a caller can check how much of the slide was read.
    """

    def __init__(self, array: Any, axes: str, name: str) -> None:
        self._array, self._axes, self.name = array, axes, name
        y, x = array.shape[axes.index("Y")], array.shape[axes.index("X")]
        channels = array.shape[axes.index("S")] if "S" in axes else array.shape[axes.index("C")] if "C" in axes else 1
        self.shape = (int(y), int(x), int(channels))
        self.dtype = array.dtype
        self.ndim = 3
        self.pixels_read = 0

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        rows, cols = (tuple(key) + (slice(None), slice(None)))[:2]
        selection = []
        for axis in self._axes:
            selection.append(rows if axis == "Y" else cols if axis == "X" else slice(None))
        window = np.asarray(self._array[tuple(selection)])
        order = [self._axes.index("Y"), self._axes.index("X")]
        order += [i for i, axis in enumerate(self._axes) if axis not in "YX"]
        window = window.transpose(order) if window.ndim == len(order) else window
        self.pixels_read += int(window.shape[0] * window.shape[1])
        return window

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:, :]
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"SlideLevel({self.name}, shape={self.shape})"


class OpenSlideLevel(SlideLevel):
    """One level of a slide read through OpenSlide (``pip install 'st-hist2st[slide]'``), as a lazy array."""

    def __init__(self, handle: Any, index: int, name: str) -> None:
        self._handle, self._index, self.name = handle, index, name
        width, height = handle.level_dimensions[index]
        self._downsample = float(handle.level_downsamples[index])
        self.shape, self.dtype, self.ndim = (int(height), int(width), 3), np.dtype(np.uint8), 3
        self.pixels_read = 0

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        rows, cols = (tuple(key) + (slice(None), slice(None)))[:2]
        (r0, r1, rstep), (c0, c1, cstep) = rows.indices(self.shape[0]), cols.indices(self.shape[1])
        if r1 <= r0 or c1 <= c0:
            return np.zeros((0 if r1 <= r0 else r1 - r0, 0 if c1 <= c0 else c1 - c0, 3), dtype=np.uint8)
        # OpenSlide places a region by its top-left corner in full-resolution pixels
        origin = (int(c0 * self._downsample), int(r0 * self._downsample))
        region = self._handle.read_region(origin, self._index, (c1 - c0, r1 - r0))
        window = np.asarray(region.convert("RGB"))[::rstep, ::cstep]
        self.pixels_read += int((r1 - r0) * (c1 - c0))
        return window


class Slide:
    """A pyramidal whole-slide image, opened without reading its pixels.

    Slicing a :class:`Slide` (``slide[y0:y1, x0:x1]``) reads that window of the full-resolution level; each
    level of the pyramid is :meth:`level`, and :meth:`level_for` picks the one nearest a resolution. Open one
    with :func:`st_hist2st.pp.read_slide`.

    Attributes
    ----------
    path
        The file.
    levels
        The pyramid's levels, full resolution first.
    downsamples
        Full-resolution pixels per pixel of each level.
    microns_per_pixel
        Micrometres per full-resolution pixel, from the file's metadata or as given; ``None`` when unknown.
    """

    def __init__(
        self, path: str | Path, microns_per_pixel: float | None = None, series: int = 0, reader: str = "auto"
    ) -> None:
        if reader not in ("auto", "tifffile", "openslide"):
            raise ValueError(f"`reader` must be 'auto', 'tifffile' or 'openslide', got {reader!r}.")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"No slide at {self.path}.")
        if microns_per_pixel is not None and not float(microns_per_pixel) > 0:
            raise ValueError(f"`microns_per_pixel` must be positive, got {microns_per_pixel}.")
        self._tiff = self._openslide = None
        if reader in ("auto", "tifffile"):
            error = self._open_tifffile(series)
            if error is None:
                self._finish(microns_per_pixel, _metadata_microns(self._tiff))
                return
            if reader == "tifffile":
                raise ValueError(f"{self.path}: tifffile cannot read it ({error}).")
        self._open_openslide()
        mpp = self._openslide.properties.get("openslide.mpp-x")
        self._finish(microns_per_pixel, float(mpp) if mpp else None)

    def _open_openslide(self) -> None:
        try:
            import openslide
        except ImportError:
            raise ValueError(
                f"{self.path} is not a TIFF-based slide that tifffile can read; OpenSlide reads more formats "
                "(MIRAX, Leica SCN, ...): `pip install 'st-hist2st[slide]'`. Or convert it to a pyramidal OME-TIFF "
                "(e.g. with bfconvert or vips tiffsave --tile --pyramid)."
            ) from None
        try:
            self._openslide = openslide.OpenSlide(str(self.path))
        except openslide.OpenSlideError as err:
            raise ValueError(f"{self.path}: neither tifffile nor OpenSlide can read it ({err}).") from None
        self.levels = [
            OpenSlideLevel(self._openslide, i, f"{self.path.name} level {i}")
            for i in range(self._openslide.level_count)
        ]

    def _open_tifffile(self, series: int) -> str | None:
        """Open the file with tifffile; the reason when it cannot."""
        import tifffile
        import zarr

        try:
            self._tiff = tifffile.TiffFile(self.path)
        except (tifffile.TiffFileError, ValueError) as err:
            return str(err)
        if not 0 <= series < len(self._tiff.series):
            raise ValueError(f"`series={series}`: {self.path} holds {len(self._tiff.series)} image series.")
        pages = self._tiff.series[series]
        axes = pages.axes
        if "Y" not in axes or "X" not in axes:
            raise ValueError(f"{self.path}: series {series} has axes {axes!r}, not an image.")
        store = zarr.open(pages.aszarr(), mode="r")
        arrays = [store] if hasattr(store, "shape") else [store[str(i)] for i in range(len(pages.levels))]
        self.levels = [SlideLevel(a, axes, f"{self.path.name} level {i}") for i, a in enumerate(arrays)]
        return None

    def _finish(self, given: float | None, recorded: float | None) -> None:
        full = self.levels[0].shape
        self.downsamples = [full[1] / level.shape[1] for level in self.levels]
        self.microns_per_pixel = float(given) if given is not None else recorded

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(height, width, channels)`` at full resolution."""
        return self.levels[0].shape

    @property
    def dtype(self) -> Any:
        """Pixel type."""
        return self.levels[0].dtype

    ndim = 3

    def __getitem__(self, key: Any) -> np.ndarray:
        return self.levels[0][key]

    def level(self, index: int) -> SlideLevel:
        """Level ``index`` of the pyramid (0 is full resolution)."""
        return self.levels[index]

    def level_for(self, microns_per_pixel: float, tolerance: float = 1.1) -> int:
        """The level whose resolution is nearest ``microns_per_pixel`` without being coarser.

        The coarsest level at most ``tolerance`` times coarser than asked (reading it is cheapest, and detail
        the model never saw in training does not help it), else full resolution.
        """
        if self.microns_per_pixel is None:
            raise ValueError(
                f"{self.path.name} records no micrometres per pixel; pass `microns_per_pixel=` to `read_slide`."
            )
        best = 0
        for i, downsample in enumerate(self.downsamples):
            if self.microns_per_pixel * downsample <= microns_per_pixel * tolerance:
                best = i
        return best

    def thumbnail(self, max_side: int = 2048) -> tuple[np.ndarray, float]:
        """A small image of the whole slide and its downsample (full-resolution pixels per pixel).

        The coarsest level at least ``max_side`` pixels on its longer side (or the full resolution), strided down
        to at most ``max_side``: only that level is read.
        """
        index = 0
        for i, level in enumerate(self.levels):
            if max(level.shape[:2]) >= max_side:
                index = i
        level = self.levels[index]
        image = level[:, :]
        stride = max(1, int(np.ceil(max(level.shape[:2]) / max_side)))
        return image[::stride, ::stride], self.downsamples[index] * stride

    def close(self) -> None:
        """Close the file."""
        for handle in (self._tiff, self._openslide):
            if handle is not None:
                handle.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        mpp = "unknown" if self.microns_per_pixel is None else f"{self.microns_per_pixel:.4g}"
        levels = ", ".join(f"{lv.shape[1]}x{lv.shape[0]}" for lv in self.levels)
        return f"Slide({self.path.name!r}, levels [{levels}], microns_per_pixel={mpp})"


def _metadata_microns(tiff: Any) -> float | None:
    """Micrometres per full-resolution pixel from OME-XML, an Aperio description or the TIFF resolution tags."""
    if tiff.is_ome and tiff.ome_metadata:
        try:
            root = ET.fromstring(tiff.ome_metadata)
        except ET.ParseError:
            root = None
        pixels = None if root is None else next((e for e in root.iter() if e.tag.endswith("Pixels")), None)
        if pixels is not None and pixels.get("PhysicalSizeX"):
            unit = pixels.get("PhysicalSizeXUnit", "µm")
            if unit in _MICRONS:
                return float(pixels.get("PhysicalSizeX")) * _MICRONS[unit]
    page = tiff.pages[0]
    found = re.search(r"MPP\s*=\s*([0-9.]+)", page.description or "")
    if found:  # Aperio SVS
        return float(found.group(1))
    tags = page.tags
    if "XResolution" in tags and "ResolutionUnit" in tags:
        numerator, denominator = tags["XResolution"].value
        unit = int(tags["ResolutionUnit"].value)
        if numerator > 0 and unit in (2, 3):  # pixels per inch or per centimetre
            return (25400.0 if unit == 2 else 10000.0) * denominator / numerator
    return None


def read_slide(
    path: str | Path, *, microns_per_pixel: float | None = None, series: int = 0, reader: str = "auto"
) -> Slide:
    """Open a whole-slide image lazily: no pixel is read until a window of it is sliced.

    Pyramidal OME-TIFF, Aperio SVS, Hamamatsu NDPI and other tiled TIFFs are read through tifffile's zarr
    store, a tile at a time: a slide of 100,000 pixels a side is never held in memory. Formats tifffile cannot
    read (MIRAX, Leica SCN, ...) are read through OpenSlide when it is installed
    (``pip install 'st-hist2st[slide]'``). Pass the result as ``image`` to :func:`st_hist2st.pp.tile`, which
    lays pseudo-spots over its tissue and picks the pyramid level nearest the model's resolution.

    Parameters
    ----------
    path
        The slide file.
    microns_per_pixel
        Micrometres per full-resolution pixel; default the file's own (OME ``PhysicalSizeX``, Aperio ``MPP``,
        or the TIFF resolution tags).
    series
        Image series of the file (a slide file can also hold a label or macro image); tifffile only.
    reader
        ``'tifffile'``, ``'openslide'``, or ``'auto'``: tifffile, else OpenSlide.

    Returns
    -------
    A :class:`~st_hist2st.pp.Slide`.
    """
    return Slide(path, microns_per_pixel, series, reader)
