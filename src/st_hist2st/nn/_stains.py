"""Haematoxylin and eosin of a section, estimated from its patches and mapped onto a reference's.

Macenko et al. (2009): a section stained or scanned unlike the training ones then gives the colour model the
colours it was fitted on.
"""

from __future__ import annotations

import math

import torch

#: Optical density below which a pixel counts as background (in any channel) in the stain estimate.
BACKGROUND_OD = 0.15
#: At most this many tissue pixels, drawn with a fixed seed (from four times as many pixels), give a section's
#: stain estimate.
STAIN_PIXELS = 200_000
#: Fewest tissue pixels a stain estimate is made from.
MIN_TISSUE_PIXELS = 1_000
#: Largest cosine between the two stain vectors found: above it the colours hold one stain, not two.
MAX_STAIN_COSINE = 0.99
#: Percentiles of the pixels' angle in the stains' plane that give the two stain vectors, and of each stain's
#: concentration that gives its maximum.
ANGLE_PERCENTILE, MAX_PERCENTILE = 0.01, 0.99


def optical_density(x: torch.Tensor) -> torch.Tensor:
    """Optical densities ``-log((x + 1) / 256)`` of 0-255 values, float32."""
    return -torch.log1p(x.float()).sub_(math.log(256.0))


def map_optical_density(x: torch.Tensor, mix: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """``(N, 3, H, W)`` 0-255 images with each pixel's optical densities ``od`` taken to ``od @ mix + offset``.

    ``mix`` is one ``(3, 3)`` map or one per image ``(N, 3, 3)``, ``offset`` ``(N, 3)``. uint8 in, uint8 out
    (rounded); the images' dtype otherwise, on a 0-255 scale.
    """
    od = torch.einsum("nchw,ncd->ndhw" if mix.dim() == 3 else "nchw,cd->ndhw", optical_density(x), mix)
    if offset is not None:
        od.add_(offset.view(len(x), 3, 1, 1))
    y = torch.exp(-od).mul_(256.0).sub_(1.0)
    if x.dtype == torch.uint8:
        return y.round_().clamp_(0, 255).to(torch.uint8)
    return y.clamp_(0, 255).to(x.dtype)


def stain_estimate(patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The haematoxylin and eosin vectors ``(2, 3)`` of one section's patches and their maxima ``(2,)``.

    ``patches`` are ``(n, 3, H, W)``, 0-255; a stain's maximum is the 99th percentile of its concentration over
    the tissue pixels (Macenko et al., 2009). The tissue pixels' optical densities are projected onto the plane
    of their two leading principal directions; the directions at the 1st and 99th percentile of the angle there
    are the two stains, haematoxylin the one that absorbs more red. Raises :class:`ValueError` where the patches
    hold fewer than 1,000 tissue pixels or their colours do not separate into two stains (a blank or greyscale
    image).
    """
    pixels = patches.permute(0, 2, 3, 1).reshape(-1, 3)
    if len(pixels) > 4 * STAIN_PIXELS:  # a fixed draw of pixels, enough to find STAIN_PIXELS of tissue
        generator = torch.Generator().manual_seed(0)
        pixels = pixels[torch.randint(len(pixels), (4 * STAIN_PIXELS,), generator=generator).to(pixels.device)]
    # on the CPU wherever the patches are: the same estimate on every device (at most 800,000 pixels)
    od = optical_density(pixels.cpu())
    od = od[(od > BACKGROUND_OD).all(1)]
    if len(od) < MIN_TISSUE_PIXELS:
        raise ValueError(
            f"{len(od)} tissue pixels in the patches, too few to estimate their haematoxylin and eosin (at least "
            f"{MIN_TISSUE_PIXELS:,}): are they blank, or not an H&E image?"
        )
    if len(od) > STAIN_PIXELS:
        od = od[torch.randperm(len(od), generator=torch.Generator().manual_seed(0))[:STAIN_PIXELS]]
    od = od.double()
    _, vectors = torch.linalg.eigh(torch.cov(od.T))
    plane = vectors[:, 1:]  # the two leading directions, each pointing into positive optical densities
    plane = plane * torch.where(plane.sum(0) < 0, -1.0, 1.0)
    projected = od @ plane
    angle = torch.atan2(projected[:, 1], projected[:, 0])
    low, high = torch.quantile(angle, torch.tensor([ANGLE_PERCENTILE, 1 - ANGLE_PERCENTILE], dtype=angle.dtype))
    stains = torch.stack([plane @ torch.stack([torch.cos(a), torch.sin(a)]) for a in (low, high)])
    if stains[0, 0] < stains[1, 0]:
        stains = stains.flip(0)
    cosine = float((stains[0] @ stains[1]) / (stains[0].norm() * stains[1].norm()))
    if not cosine < MAX_STAIN_COSINE:  # NaN included
        raise ValueError(
            "The patches' colours do not separate into haematoxylin and eosin (the two stains found point the "
            f"same way, cosine {cosine:.3f}): is it an H&E image?"
        )
    concentrations = torch.linalg.lstsq(stains.T, od.T).solution
    maxima = torch.quantile(concentrations, MAX_PERCENTILE, dim=1)
    if not bool((maxima > 0).all()):
        raise ValueError("The patches hold no measurable amount of one of the stains: is it an H&E image?")
    return stains.float(), maxima.float()


def stain_normalised(
    patches: torch.Tensor,
    estimate: tuple[torch.Tensor, torch.Tensor],
    reference: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """``(n, 3, H, W)`` 0-255 ``patches`` with their stains (``estimate``) mapped onto ``reference``'s.

    Each pixel's concentrations of the stains of ``estimate`` (from :func:`stain_estimate`) are scaled by the
    ratio of the maxima and recoloured with the reference's vectors. uint8 in, uint8 out (rounded).
    """
    # on the CPU: the estimate is there (stain_estimate), the reference wherever the model is
    (stains, maxima), (reference_stains, reference_maxima) = (
        (t.cpu().double() for t in p) for p in (estimate, reference)
    )
    # concentrations = od @ pinv(stains), scaled by the ratio of the maxima, recoloured: one 3 x 3 map per pixel
    mix = torch.linalg.pinv(stains.T).T * (reference_maxima / maxima) @ reference_stains
    return map_optical_density(patches, mix.float().to(patches.device))
