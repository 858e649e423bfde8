"""Crop one uint8 patch per spot from an :class:`ImageSource`, a band of rows at a time."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from st_hist2st._constants import PAD_VALUE, PATCH_SIZE
from st_hist2st._data._image import ImageSource


def crop_windows(source: ImageSource, coords: np.ndarray, crop_size: float) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Top-left image pixel (x0, y0) of the crop around each spot and the crop sides in image pixels.

    Raises
    ------
    ValueError
        When a spot centre lies outside the image.
    """
    pix = source.to_pixels(coords)
    inside = (pix[:, 0] >= 0) & (pix[:, 0] < source.width) & (pix[:, 1] >= 0) & (pix[:, 1] < source.height)
    if not inside.all():
        bad = np.flatnonzero(~inside)
        raise ValueError(
            f"{bad.size} spot(s) lie outside {source.name} ({source.width} x {source.height} px), e.g. spot "
            f"{int(bad[0])} at image pixel (x, y) = {tuple(np.round(pix[bad[0]], 1))}. Check that "
            "`obsm['spatial']` is in full-resolution pixels and that the scale factor matches the image."
        )
    # a flipped axis (negative scale) cuts as many pixels; crop_patches turns the crop back
    side_x = max(1, int(np.floor(crop_size * abs(source.scale[0]) + 0.5)))
    side_y = max(1, int(np.floor(crop_size * abs(source.scale[1]) + 0.5)))
    # an even side has one more pixel before the centre than after; on a flipped axis that is after it
    before_x = side_x // 2 if source.scale[0] > 0 else side_x - 1 - side_x // 2
    before_y = side_y // 2 if source.scale[1] > 0 else side_y - 1 - side_y // 2
    x0 = np.floor(pix[:, 0] + 0.5).astype(np.int64) - before_x
    y0 = np.floor(pix[:, 1] + 0.5).astype(np.int64) - before_y
    return x0, y0, side_x, side_y


def padded_fraction(source: ImageSource, coords: np.ndarray, crop_size: float) -> np.ndarray:
    """The fraction of each spot's crop that lies outside the image (padded), without reading any pixel."""
    x0, y0, side_x, side_y = crop_windows(source, coords, crop_size)
    inside_x = np.clip(x0 + side_x, 0, source.width) - np.clip(x0, 0, source.width)
    inside_y = np.clip(y0 + side_y, 0, source.height) - np.clip(y0, 0, source.height)
    return 1.0 - inside_x * inside_y / (side_x * side_y)


def crop_patches(
    source: ImageSource,
    coords: np.ndarray,
    crop_size: float,
    *,
    patch_size: int = PATCH_SIZE,
    band_rows: int = 1024,
    show_progress_bar: bool = False,
    progress: tqdm | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut a square patch of side ``crop_size`` full-resolution pixels around each spot.

    The image is read a block of about ``band_rows`` x ``band_rows`` pixels at a time, and only where there
    are spots, so memory grows with the number of spots, not with the image, and a whole-slide image is read
    only where its tissue is. Parts outside the image are filled with white (255).

    Parameters
    ----------
    source
        The image.
    coords
        ``(n, 2)`` spot centres (x, y) in full-resolution pixels.
    crop_size
        Side of the crop in full-resolution pixels.
    patch_size
        Side of the returned patches; crops of another size are resized (bilinear, antialiased).
    band_rows
        Side of the blocks of image pixels read at once.
    show_progress_bar
        Show a progress bar over the spots.
    progress
        A progress bar of the caller's to advance by each spot instead (one bar for many libraries).

    Returns
    -------
    ``(n, 3, patch_size, patch_size)`` uint8 patches and the fraction of each patch that is padding.
    """
    n = len(coords)
    x0, y0, side_x, side_y = crop_windows(source, coords, crop_size)
    patches = np.empty((n, 3, patch_size, patch_size), dtype=np.uint8)
    padded = np.zeros(n, dtype=np.float64)
    # blocks of band_rows x band_rows pixels: a slide is read only where there are spots
    block = max(band_rows, 1)
    keys = np.stack([y0 // block, x0 // block])
    order = np.lexsort(keys[::-1])
    cuts = np.flatnonzero((np.diff(keys[:, order], axis=1) != 0).any(axis=0)) + 1 if n else []
    groups = np.split(order, cuts) if n else []
    own = progress is None
    if own:
        progress = tqdm(total=n, desc="cropping patches", unit="spot", disable=not show_progress_bar)
    for group in groups:
        gx0, gy0 = x0[group], y0[group]
        r0, r1 = max(0, int(gy0.min())), min(source.height, int(gy0.max()) + side_y)
        c0, c1 = max(0, int(gx0.min())), min(source.width, int(gx0.max()) + side_x)
        band = source.read(r0, r1, c0, c1)
        crops = np.full((len(group), side_y, side_x, 3), PAD_VALUE, dtype=np.uint8)
        for k, (cx, cy) in enumerate(zip(gx0, gy0, strict=True)):
            ya, yb = max(int(cy), r0), min(int(cy) + side_y, r1)
            xa, xb = max(int(cx), c0), min(int(cx) + side_x, c1)
            crops[k, ya - cy : yb - cy, xa - cx : xb - cx] = band[ya - r0 : yb - r0, xa - c0 : xb - c0]
            padded[group[k]] = 1.0 - max(yb - ya, 0) * max(xb - xa, 0) / (side_x * side_y)
        if source.scale[0] < 0:  # the image's x runs against the coordinates': mirror back
            crops = crops[:, :, ::-1]
        if source.scale[1] < 0:
            crops = crops[:, ::-1]
        patches[group] = resize_patches(np.ascontiguousarray(crops), patch_size)
        del band
        source.release_pages()
        progress.update(len(group))
    if own:
        progress.close()
    return patches, padded


def resize_patches(crops: np.ndarray, patch_size: int) -> np.ndarray:
    """``(n, h, w, 3)`` uint8 crops to ``(n, 3, patch_size, patch_size)`` uint8 patches."""
    chw = torch.from_numpy(crops).permute(0, 3, 1, 2)
    if chw.shape[-2:] == (patch_size, patch_size):
        return chw.contiguous().numpy()
    resized = F.interpolate(
        chw.float(), size=(patch_size, patch_size), mode="bilinear", antialias=True, align_corners=False
    )
    return resized.round_().clamp_(0, 255).to(torch.uint8).numpy()
