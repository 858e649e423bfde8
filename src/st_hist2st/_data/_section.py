"""Turn an AnnData (with its images) into one model-ready :class:`Section` per library."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from tqdm.auto import tqdm

from st_hist2st._constants import MOSTLY_PADDED, PATCH_SIZE, Key
from st_hist2st._data._graph import Layout, detect_layout, get_connectivities, grid_positions, to_edge_index
from st_hist2st._data._image import (
    ImageSource,
    image_from_anndata,
    image_from_container,
    image_from_spatialdata,
    spatialdata_microns_per_unit,
    spatialdata_spot_diameter,
)
from st_hist2st._data._patches import crop_patches, padded_fraction
from st_hist2st._data._scale import Crop, resolve_microns_per_pixel
from st_hist2st._data._targets import expression_targets, get_counts, size_factors, spot_totals
from st_hist2st._utils import check_libraries, get_libraries, get_spatial

logger = logging.getLogger(__name__)


@dataclass
class Section:
    """One tissue section, ready for the model.

    Attributes
    ----------
    library_id
        Name of the section.
    obs_index
        Positions of its spots in the AnnData it came from.
    patches
        ``(n, 3, 112, 112)`` uint8 patches, one per spot; ``None`` when they are cut as needed
        (:meth:`patches_of`), for sections too large to hold them all.
    positions
        ``(n, 2)`` integer (column, row) grid positions.
    edge_index
        ``(2, n_edges)`` graph, local spot indices, messages flow from row 0 to row 1.
    targets, counts, size_factors
        ``(n, n_genes)`` transformed expression and raw counts, ``(n,)`` size factors; ``None`` without expression.
    median_total
        The median of the spots' totals, the denominator of the targets of a spot of size factor 1.
    crop
        The image, crop side and physical scale the patches were cut with.
    coords
        ``(n, 2)`` spot centres in full-resolution pixels, to cut patches from ``crop`` when ``patches`` is
        ``None``.
    """

    library_id: str
    obs_index: np.ndarray
    patches: torch.Tensor | None
    positions: torch.Tensor
    edge_index: torch.Tensor
    targets: torch.Tensor | None = None
    counts: torch.Tensor | None = None
    size_factors: torch.Tensor | None = None
    median_total: float | None = None
    crop: Crop | None = None
    coords: np.ndarray | None = None

    @property
    def n_spots(self) -> int:
        """Number of spots."""
        return len(self.obs_index)

    def patches_of(self, index: np.ndarray) -> torch.Tensor:
        """``(len(index), 3, 112, 112)`` uint8 patches of the spots ``index``, cut from the image if not held."""
        if self.patches is not None:
            return self.patches[torch.as_tensor(index, dtype=torch.long)]
        if self.crop is None or self.coords is None:
            raise ValueError(f"Section {self.library_id!r} holds neither patches nor the image to cut them from.")
        patches, _ = crop_patches(self.crop.source, self.coords[index], self.crop.side, patch_size=PATCH_SIZE)
        return torch.from_numpy(patches)


def resolve_image(
    adata: AnnData,
    image_key: str,
    library_id: str,
    image: Any = None,
    coordinate_system: str | Mapping[str, str] | None = None,
) -> ImageSource:
    """The image of ``library_id``: from ``image`` (ImageContainer or SpatialData) or ``adata.uns['spatial']``."""
    if image is None:
        return image_from_anndata(adata, image_key, library_id)
    kind = type(image).__name__
    if kind == "ImageContainer":
        return image_from_container(image, image_key, library_id)
    if kind == "SpatialData":
        return image_from_spatialdata(
            image, image_key, library_id=library_id, table=adata, coordinate_system=coordinate_system
        )
    if isinstance(image, ImageSource):
        return image
    raise TypeError(f"`image` must be a squidpy ImageContainer or a SpatialData object, got {kind}.")


def spot_diameter(adata: AnnData, library_id: str, image: Any = None) -> float | None:
    """Spot diameter in full-resolution pixels: ``spot_diameter_fullres``, or the SpatialData circles' radius."""
    try:
        return float(adata.uns[Key.spatial][library_id][Key.scalefactors]["spot_diameter_fullres"])
    except (KeyError, TypeError):
        pass
    if type(image).__name__ == "SpatialData":
        return spatialdata_spot_diameter(image, adata, library_id)
    return None


def default_crop_size(diameter: float | None, library_id: str) -> float:
    """The library's spot diameter (from :func:`spot_diameter`), the default crop side."""
    if diameter is None:
        raise KeyError(
            f"No `crop_size` given and no `uns['spatial'][{library_id!r}]['scalefactors']['spot_diameter_fullres']`"
            " to default to; pass `crop_size=` in full-resolution pixels (112 on her2st, as the paper)."
        )
    return diameter


def library_layouts(
    libraries: pd.Series, positions: np.ndarray, wanted: Sequence[str], layout: str = "auto"
) -> dict[str, str]:
    """The array layout (``'st'`` or ``'visium'``) of each wanted library: ``layout``, or detected from its grid."""
    if layout != "auto":
        return dict.fromkeys(wanted, layout)
    return {lib: detect_layout(positions[(libraries == lib).to_numpy()]) for lib in wanted}


def resolve_crops(
    adata: AnnData,
    image_key: str,
    libraries: Sequence[str],
    image: Any,
    crop_size: float | None,
    *,
    crop_microns: float | None = None,
    microns_per_pixel: float | Mapping[str, float] | str | None = None,
    layouts: Mapping[str, str] | None = None,
    fallback_crop_size: float | str | None = None,
    coordinate_system: str | Mapping[str, str] | None = None,
    field_of_view: float = 1.0,
) -> dict[str, Crop]:
    """Image, crop side and physical scale of each library, checked before any long work.

    The side is ``crop_size`` full-resolution pixels when given, else ``crop_microns`` micrometres at each
    library's own scale, else ``field_of_view`` spot diameters. ``layouts`` (``'st'`` or ``'visium'`` per
    library) give the platform's spot diameter, from which the scale follows when ``microns_per_pixel`` is not
    given. A library of unknown scale is refused with ``crop_microns``, or, with ``fallback_crop_size`` (a
    model's training crop in pixels, or ``'default'`` for ``field_of_view`` spot diameters), cropped so with a
    warning.
    """
    if crop_size is not None and crop_microns is not None:
        raise ValueError("Pass `crop_size` (pixels) or `crop_microns` (micrometres), not both.")
    if crop_microns is not None and not float(crop_microns) > 0:
        raise ValueError(f"`crop_microns` must be positive, got {crop_microns}.")
    crops = {}
    for lib in libraries:
        source = resolve_image(adata, image_key, lib, image, coordinate_system)
        layout = (layouts or {}).get(lib, "unknown")
        diameter = spot_diameter(adata, lib, image)
        if isinstance(microns_per_pixel, str):  # a SpatialData coordinate system in micrometres
            if type(image).__name__ != "SpatialData":
                raise TypeError(
                    f"`microns_per_pixel={microns_per_pixel!r}` names a coordinate system, which only a SpatialData "
                    "`image` has; pass a number."
                )
            mpp = spatialdata_microns_per_unit(image, adata, lib, microns_per_pixel)
            how = f"the coordinate system {microns_per_pixel!r}, in micrometres"
        else:
            mpp, how = resolve_microns_per_pixel(adata, lib, layout, microns_per_pixel, diameter)
        if crop_size is not None:
            side = float(crop_size)
        elif crop_microns is not None:
            if mpp is None and fallback_crop_size is not None:
                side = (
                    field_of_view * default_crop_size(diameter, lib)
                    if fallback_crop_size == "default"
                    else float(fallback_crop_size)
                )
                warnings.warn(
                    f"Library {lib!r} has no physical scale ({how}), so the model's {crop_microns:.0f} um crops "
                    f"cannot be matched; cropping {side:g} pixels instead. Pass `microns_per_pixel=` to crop the "
                    "same piece of tissue as in training.",
                    UserWarning,
                    stacklevel=4,
                )
                crops[lib] = Crop(source, side, None, how)
                continue
            if mpp is None:
                raise ValueError(
                    f"Library {lib!r} has no physical scale to cut crops of {crop_microns:g} um: pass "
                    "`microns_per_pixel=` (micrometres per full-resolution pixel), or `crop_size=` in pixels."
                )
            side = float(crop_microns) / mpp
        else:
            side = field_of_view * default_crop_size(diameter, lib)
        if not side > 0:
            raise ValueError(f"`crop_size` must be positive, got {side}.")
        crops[lib] = Crop(source, side, mpp, how)
    return crops


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
) -> tuple[np.ndarray, np.ndarray]:
    """Patches for every spot of ``adata`` (library by library) and the padded fraction of each."""
    coords = get_spatial(adata, spatial_key)
    libraries = get_libraries(adata, library_key)
    patches = np.empty((adata.n_obs, 3, patch_size, patch_size), dtype=np.uint8)
    padded = np.zeros(adata.n_obs)
    layouts = library_layouts(libraries, grid_positions(adata, spatial_key, libraries), libraries.cat.categories)
    crops = resolve_crops(
        adata,
        image_key,
        libraries.cat.categories,
        image,
        crop_size,
        crop_microns=crop_microns,
        microns_per_pixel=microns_per_pixel,
        layouts=layouts,
        coordinate_system=coordinate_system,
    )
    with tqdm(total=adata.n_obs, desc="cropping patches", unit="spot", disable=not show_progress_bar) as progress:
        for lib, crop in crops.items():
            idx = np.flatnonzero((libraries == lib).to_numpy())
            patches[idx], padded[idx] = crop_patches(
                crop.source, coords[idx], crop.side, patch_size=patch_size, progress=progress
            )
    warn_padding(padded, [crop.side for crop in crops.values()])
    return patches, padded


def warn_padding(padded: np.ndarray, sides: Sequence[float], stacklevel: int = 3) -> None:
    """Warn once when many patches are mostly padding (cut outside the image), with the count and the fix."""
    n_padded, n_mostly = int((padded > 0).sum()), int((padded > MOSTLY_PADDED).sum())
    if n_padded:
        logger.info("%d of %d patches reach over the image border and were padded with white", n_padded, len(padded))
    if n_mostly > 0.05 * len(padded):
        sizes = ", ".join(f"{s:g}" for s in sorted(set(sides)))
        warnings.warn(
            f"{n_mostly} of {len(padded)} patches are more than half padding (cut outside the image), so the model "
            f"sees mostly white there. Check `crop_size` (here {sizes} full-resolution pixels), the image's scale "
            "factor and that `obsm['spatial']` is in full-resolution pixels.",
            UserWarning,
            stacklevel=stacklevel,
        )


def prepare_sections(
    adata: AnnData,
    image_key: str,
    *,
    genes: Sequence[str] | None,
    library_key: str | None = Key.library,
    libraries: Sequence[str] | None = None,
    layer: str | None = None,
    spatial_key: str = Key.spatial,
    connectivity_key: str = Key.connectivities,
    layout: Layout = "auto",
    image: Any = None,
    crop_size: float | None = None,
    crop_microns: float | None = None,
    microns_per_pixel: float | Mapping[str, float] | str | None = None,
    fallback_crop_size: float | str | None = None,
    coordinate_system: str | Mapping[str, str] | None = None,
    field_of_view: float = 1.0,
    n_pos: int | None = None,
    normalize_over: str = "genes",
    hold_patches_up_to: int | None = None,
    show_progress_bar: bool = True,
) -> list[Section]:
    """Check every input, then build one :class:`Section` per library.

    With ``genes=None`` no expression is read (prediction on H&E only). Without ``crop_size`` or
    ``crop_microns``, crops are ``field_of_view`` spot diameters wide. ``n_pos`` is the size of the model's
    grid-position embedding, ``None`` for a model without one. ``normalize_over`` divides each spot's counts
    by its total over the model's ``'genes'`` (the paper) or over ``'all'`` genes of ``adata``. A library of
    more than ``hold_patches_up_to`` spots keeps no patches: they are cut when needed
    (:meth:`Section.patches_of`); ``None`` cuts and holds all.
    """
    coords = get_spatial(adata, spatial_key)
    libs = get_libraries(adata, library_key)
    if adata.n_obs == 0:
        raise ValueError("`adata` has no spots.")
    wanted = check_libraries(list(libs.cat.categories), libraries, argument="libraries")
    positions = grid_positions(adata, spatial_key, libs)
    if n_pos is not None and positions.max() >= n_pos:
        raise ValueError(
            f"Grid positions go up to {int(positions.max())} but the model's position embedding holds at most "
            f"{n_pos} per axis. Train a model with `n_pos={64 * (int(positions.max()) // 64 + 1)}` (Visium needs "
            "128), or one without the embedding (`position_embedding=False`, as the 'fast' preset)."
        )
    counts_all = get_counts(adata, list(genes), layer) if genes is not None else None
    totals_all = spot_totals(adata, layer) if (genes is not None and normalize_over == "all") else None
    layouts = library_layouts(libs, positions, wanted, layout)
    crops = resolve_crops(
        adata,
        image_key,
        wanted,
        image,
        crop_size,
        crop_microns=crop_microns,
        microns_per_pixel=microns_per_pixel,
        layouts=layouts,
        coordinate_system=coordinate_system,
        fallback_crop_size=fallback_crop_size,
        field_of_view=field_of_view,
    )
    conn = get_connectivities(
        adata,
        library_key=library_key,
        connectivity_key=connectivity_key,
        spatial_key=spatial_key,
        layout=layout,
        positions=positions,
    )
    sections, padded_all = [], []
    n_spots = int(libs.isin(wanted).sum())
    with tqdm(total=n_spots, desc="cropping patches", unit="spot", disable=not show_progress_bar) as progress:
        for lib in wanted:
            idx = np.flatnonzero((libs == lib).to_numpy())
            if idx.size == 0:
                raise ValueError(f"Library {lib!r} has no spots.")
            sub = conn[idx][:, idx]
            outside = conn[idx].nnz - sub.nnz
            if outside:
                raise ValueError(
                    f"The spot graph has {outside} edges from library {lib!r} to other libraries. Build it per library,"
                    " e.g. `sq.gr.spatial_neighbors_grid(adata, library_key=...)` (Visium) or `hist2st.pp.spatial_graph`."
                )
            crop = crops[lib]
            if hold_patches_up_to is not None and len(idx) > hold_patches_up_to:
                patches, padded = None, padded_fraction(crop.source, coords[idx], crop.side)
                progress.update(len(idx))
            else:
                patches, padded = crop_patches(
                    crop.source, coords[idx], crop.side, patch_size=PATCH_SIZE, progress=progress
                )
                patches = torch.from_numpy(patches)
            padded_all.append(padded)
            section = Section(
                library_id=str(lib),
                obs_index=idx,
                patches=patches,
                positions=torch.from_numpy(positions[idx]),
                edge_index=torch.from_numpy(to_edge_index(sub)),
                crop=crop,
                coords=coords[idx],
            )
            if counts_all is not None:
                counts = counts_all[idx]
                section.counts = torch.from_numpy(counts)
                totals = None if totals_all is None else totals_all[idx]
                section.targets = torch.from_numpy(expression_targets(counts, totals))
                section.size_factors = torch.from_numpy(size_factors(counts, totals))
                section.median_total = float(np.median(counts.sum(1) if totals is None else totals))
            sections.append(section)
    warn_padding(np.concatenate(padded_all), [crop.side for crop in crops.values()], stacklevel=4)
    return sections
