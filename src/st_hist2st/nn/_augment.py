from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from st_hist2st.nn._stains import map_optical_density

_GREY = (0.299, 0.587, 0.114)


def dihedral(x: torch.Tensor, symmetry: int) -> torch.Tensor:
    """Patches ``x`` ``(..., H, W)`` under symmetry ``0 <= symmetry < 8`` of the square.

    A rotation by ``symmetry % 4`` times 90 degrees, then a mirror if ``symmetry >= 4``; any dtype, exact
    pixel values. Symmetry 0 is the identity and returns ``x`` itself.
    """
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"Patches must be square to rotate them by 90 degrees, got {tuple(x.shape[-2:])}.")
    if symmetry == 0:
        return x  # no copy on the plain prediction path
    y = torch.rot90(x, symmetry % 4, dims=(-2, -1))
    return y.flip(-1) if symmetry >= 4 else y


def random_dihedral(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each patch of ``x`` ``(N, C, H, W)`` under a random one of the 8 symmetries of the square (:func:`dihedral`)."""
    draw = torch.randint(8, (x.shape[0],), generator=generator).to(x.device)
    out = torch.empty_like(x)
    for symmetry in range(8):
        idx = (draw == symmetry).nonzero().squeeze(1)
        if idx.numel():
            out[idx] = dihedral(x[idx], symmetry)
    return out


class SectionAugment(nn.Module):
    r"""Random augmentations for self-distillation, one draw per pass applied to all patches of the section.

    Per pass, in order: greyscale with probability ``p_grey``, rotation by an angle uniform in
    ``[-max_angle, max_angle]`` degrees (nearest neighbour, corners filled with 0, as torchvision's
    ``RandomRotation``), horizontal flip with probability ``p_flip``. Runs batched on the patches' device;
    uint8 patches stay uint8.

    Shapes
    ------
    input ``(N, C, H, W)``, output ``(passes, N, C, H, W)`` of the same dtype.
    """

    def __init__(self, p_grey: float = 0.1, max_angle: float = 90.0, p_flip: float = 0.2) -> None:
        super().__init__()
        self.p_grey, self.max_angle, self.p_flip = p_grey, max_angle, p_flip
        self.chunk = 2048

    def forward(self, x: torch.Tensor, passes: int, generator: torch.Generator | None = None) -> torch.Tensor:
        n = x.shape[0]
        out = torch.empty((passes, *x.shape), dtype=x.dtype, device=x.device)
        for p, view in enumerate(self.draw(passes, generator)):
            for start in range(0, n, self.chunk):
                out[p, start : start + self.chunk] = self.transform(x[start : start + self.chunk], *view)
        return out

    def draw(self, passes: int, generator: torch.Generator | None = None) -> list[tuple[bool, float, bool]]:
        """The random ``(grey, angle, flip)`` of each pass, as :meth:`transform` takes them."""
        draws = torch.rand(passes, 3, generator=generator)
        return [
            (bool(d[0] < self.p_grey), float(d[1] * 2 - 1) * self.max_angle, bool(d[2] < self.p_flip)) for d in draws
        ]

    @staticmethod
    def transform(x: torch.Tensor, grey: bool, angle: float, flip: bool) -> torch.Tensor:
        """Apply one draw to a batch of patches; uint8 in, uint8 out (rounded as torchvision does)."""
        n, c, h, w = x.shape
        y = x.float()
        if grey and c == 3:
            weights = torch.tensor(_GREY, dtype=y.dtype, device=y.device).view(1, 3, 1, 1)
            y = (y * weights).sum(1, keepdim=True).expand(n, c, h, w)
        rad = math.radians(angle)
        sign = -1.0 if flip else 1.0
        # output pixel (u, v) samples the input at R(angle) @ (sign * u, v): a flip after the rotation
        theta = torch.tensor(
            [[math.cos(rad) * sign, -math.sin(rad), 0.0], [math.sin(rad) * sign, math.cos(rad), 0.0]],
            dtype=y.dtype,
            device=y.device,
        ).expand(n, 2, 3)
        grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
        y = F.grid_sample(y, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        if x.dtype == torch.uint8:
            return y.round_().clamp_(0, 255).to(torch.uint8)
        return y.to(x.dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p_grey={self.p_grey}, max_angle={self.max_angle}, p_flip={self.p_flip})"


#: Optical density of haematoxylin, eosin and DAB in R, G, B (Ruifrok and Johnston, 2001): one stain per row.
_RGB_FROM_HED = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))


def random_stain_jitter(x: torch.Tensor, strength: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each patch of ``x`` ``(N, 3, H, W)`` with its stains varied at random (Tellez et al., 2018).

    The pixels' optical densities are split into haematoxylin, eosin and DAB; per patch, each stain's amount
    is multiplied by a factor uniform in ``[1 - strength, 1 + strength]`` and shifted by an optical density
    uniform in ``[-strength, strength]``, as a different staining or scanner would (``restain``). uint8 in,
    uint8 out (rounded); the patches' dtype otherwise, on a 0-255 scale.
    """
    if x.shape[1] != 3:
        raise ValueError(f"Stain jitter needs RGB patches, got {x.shape[1]} channels.")
    n = x.shape[0]
    scale = 1 + strength * (2 * torch.rand(n, 3, generator=generator) - 1)
    shift = strength * (2 * torch.rand(n, 3, generator=generator) - 1)
    return restain(x, scale, shift)


def restain(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``x`` ``(N, 3, H, W)`` restained: each image's stains multiplied by ``scale`` and shifted by ``shift``.

    ``scale`` and ``shift`` (optical densities) are ``(N, 3)``, for haematoxylin, eosin and DAB in that order
    (Ruifrok and Johnston, 2001). uint8 in, uint8 out (rounded); the images' dtype otherwise, on a 0-255 scale.
    """
    if x.shape[1] != 3:
        raise ValueError(f"Restaining needs RGB images, got {x.shape[1]} channels.")
    rgb_from_hed = torch.tensor(_RGB_FROM_HED, dtype=torch.float32, device=x.device)
    hed_from_rgb = torch.linalg.inv(rgb_from_hed)
    # one 3 x 3 map of optical densities per image: od @ hed_from_rgb, then per stain a * s + b, then @ rgb_from_hed
    mix = hed_from_rgb.unsqueeze(0) * scale.to(x.device).unsqueeze(1) @ rgb_from_hed
    return map_optical_density(x, mix, shift.to(x.device) @ rgb_from_hed)
