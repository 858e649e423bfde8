"""Physical scale: micrometres per full-resolution pixel of each library, and crops of a physical size."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from anndata import AnnData

from st_hist2st._constants import Key
from st_hist2st._data._image import ImageSource

#: Diameter of a spot on each platform's array, in micrometres.
SPOT_DIAMETER_MICRONS = {"visium": 55.0, "st": 100.0}
#: Keys of ``uns['spatial'][library_id]['metadata']``: the scale when known, and a mark on pseudo-spots.
MICRONS_KEY, PSEUDO_SPOTS_KEY = "microns_per_pixel", "pseudo_spots"


def physical_record(crops: Mapping[str, Crop], patch_size: int) -> dict:
    """What a model records of the scale it was trained at: crop side and patch detail in micrometres."""
    known = [c for c in crops.values() if c.microns is not None]
    complete = len(known) == len(crops) and bool(known)
    return {
        "crop_microns": float(np.mean([c.microns for c in known])) if complete else None,
        "patch_microns_per_pixel": (
            float(np.mean([c.patch_microns_per_pixel(patch_size) for c in known])) if complete else None
        ),
        "microns_per_pixel": {lib: c.microns_per_pixel for lib, c in crops.items()},
        "scale_source": {lib: c.scale_source for lib, c in crops.items()},
    }


@dataclass(frozen=True)
class Crop:
    """Where and how large the patches of one library are cut.

    Attributes
    ----------
    source
        The image.
    side
        Crop side in full-resolution pixels.
    microns_per_pixel
        Micrometres per full-resolution pixel; ``None`` when unknown.
    scale_source
        How ``microns_per_pixel`` was found, for messages and the record.
    """

    source: ImageSource
    side: float
    microns_per_pixel: float | None = None
    scale_source: str = "unknown"

    @property
    def microns(self) -> float | None:
        """Crop side in micrometres."""
        return None if self.microns_per_pixel is None else self.side * self.microns_per_pixel

    @property
    def image_microns_per_pixel(self) -> float | None:
        """Micrometres per pixel of the image the crop is cut from (coarser than full resolution for hires)."""
        if self.microns_per_pixel is None:
            return None
        return self.microns_per_pixel / float(np.mean(np.abs(self.source.scale)))

    def patch_microns_per_pixel(self, patch_size: int) -> float | None:
        """The detail of the patch: the finer of the image's pixels and the crop resampled to ``patch_size``."""
        if self.microns is None:
            return None
        return max(self.image_microns_per_pixel, self.microns / patch_size)


def given_for_library(given: float | Mapping[str, float] | None, library_id: str, argument: str) -> float | None:
    """A positive figure given for every library, or per library (a mapping); ``None`` where none is given."""
    value = given.get(library_id) if isinstance(given, Mapping) else given
    if value is None:
        return None
    if not float(value) > 0:
        raise ValueError(f"`{argument}` must be positive, got {value} for library {library_id!r}.")
    return float(value)


def resolve_microns_per_pixel(
    adata: AnnData,
    library_id: str,
    layout: str,
    given: float | Mapping[str, float] | None,
    spot_diameter: float | None = None,
) -> tuple[float | None, str]:
    """Micrometres per full-resolution pixel of a library, and where the figure came from.

    From ``given`` (one figure, or one per library), else ``uns['spatial'][library_id]['metadata']
    ['microns_per_pixel']``, else ``spot_diameter`` (``spot_diameter_fullres``, or the SpatialData circles'
    diameter) and the platform's spot diameter (Visium 55 um, legacy ST 100 um, by the array's ``layout``; not
    for pseudo-spots of :func:`~st_hist2st.pp.tile`); ``None`` when none exists.
    """
    value = given_for_library(given, library_id, "microns_per_pixel")
    if value is not None:
        return value, "given as microns_per_pixel"
    entry = adata.uns.get(Key.spatial, {}).get(library_id, {})
    metadata = entry.get("metadata", {}) if isinstance(entry, Mapping) else {}
    if isinstance(metadata, Mapping) and metadata.get(MICRONS_KEY):
        return float(metadata[MICRONS_KEY]), f"uns['spatial'][{library_id!r}]['metadata'][{MICRONS_KEY!r}]"
    if isinstance(metadata, Mapping) and metadata.get(PSEUDO_SPOTS_KEY):
        return None, "unknown (pseudo-spots: their diameter is no platform's)"
    if spot_diameter and float(spot_diameter) > 0 and layout in SPOT_DIAMETER_MICRONS:
        microns = SPOT_DIAMETER_MICRONS[layout]
        how = f"spot diameter ({float(spot_diameter):.1f} px) = {microns:g} um ({layout})"
        return microns / float(spot_diameter), how
    return None, "unknown"


def warn_coarser_images(sections: list, training_microns_per_pixel: float | None, factor: float = 1.5) -> None:
    """Warn, with both figures, where an image has much coarser detail than the model's training patches."""
    if not training_microns_per_pixel:
        return
    coarse = {
        s.library_id: s.crop.image_microns_per_pixel
        for s in sections
        if s.crop is not None
        and s.crop.image_microns_per_pixel is not None
        and s.crop.image_microns_per_pixel > factor * training_microns_per_pixel
    }
    if coarse:
        figures = ", ".join(f"{lib}: {value:.2f}" for lib, value in coarse.items())
        warnings.warn(
            f"The images of {len(coarse)} librar{'y' if len(coarse) == 1 else 'ies'} have {figures} um per pixel, "
            f"much coarser than the {training_microns_per_pixel:.2f} um per pixel of the patches the model was "
            "trained on: the patches are blurred up-samplings. Predict from a finer image (the full-resolution "
            "image, e.g. an ImageContainer of the TIFF) where there is one.",
            UserWarning,
            stacklevel=3,
        )
