"""A synthetic ST experiment whose expression is a function of the image, for demos and tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from st_hist2st._constants import Key

# two stain colours (RGB) that a latent factor of each spot mixes: eosin-like pink and haematoxylin-like purple
_PINK, _PURPLE = np.array([230.0, 150.0, 190.0]), np.array([90.0, 60.0, 150.0])


def synthetic(
    n_libraries: int = 2,
    shape: tuple[int, int] = (12, 12),
    n_genes: int = 50,
    *,
    spot_step: int = 40,
    layout: str = "st",
    depth: float = 5000.0,
    seed: int = 0,
) -> AnnData:
    """Make a small spatial dataset whose gene expression depends on the colour of each spot's patch.

    Each spot has a latent factor that varies smoothly over the tissue; it sets the mix of a pink and a purple
    stain in the image around the spot and, through a random gene loading, the log-rate of every gene.

    Parameters
    ----------
    n_libraries
        Number of sections, named ``'S0'``, ``'S1'``, ...
    shape
        Grid rows and columns per section.
    n_genes
        Number of genes.
    spot_step
        Distance between neighbouring spots in full-resolution pixels.
    layout
        ``'st'`` for the square legacy ST grid, ``'visium'`` for a hexagonal grid.
    depth
        Mean UMI count per spot.
    seed
        Seed of the random generator.

    Returns
    -------
    AnnData in the layout :func:`st_hist2st.datasets.her2st` returns: counts in ``X``, ``obs['library_id']``,
    ``obs['array_row']``/``['array_col']``, ``obsm['spatial']`` and ``uns['spatial'][library]`` with a
    ``'hires'`` image at scale 1; the latent factor is kept in ``obs['factor']``.
    """
    if layout not in ("st", "visium"):
        raise ValueError(f"`layout` must be 'st' or 'visium', got {layout!r}.")
    rng = np.random.default_rng(seed)
    rows, cols = shape
    loadings = rng.normal(0.0, 2.0, size=n_genes)
    base = rng.normal(0.0, 0.5, size=n_genes)
    obs, coords, counts, spatial = [], [], [], {}
    for lib in range(n_libraries):
        name = f"S{lib}"
        rr, cc = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        rr, cc = rr.ravel(), cc.ravel()
        if layout == "visium":
            cc = 2 * cc + (rr % 2)  # Visium indexes a hexagonal grid with (row + col) even
            x = cc * spot_step / 2.0
            y = rr * spot_step * np.sqrt(3) / 2.0
        else:
            x, y = cc * float(spot_step), rr * float(spot_step)
        margin = spot_step
        x, y = x + margin, y + margin
        phase = rng.uniform(0, 2 * np.pi, size=4)
        factor = 0.5 + 0.5 * np.sin(x / (3.1 * spot_step) + phase[0]) * np.cos(y / (4.3 * spot_step) + phase[1])
        height, width = int(y.max() + 2 * margin), int(x.max() + 2 * margin)
        image = _paint(height, width, x, y, factor, spot_step, rng)
        rate = np.exp(base + (factor[:, None] - 0.5) * loadings)
        rate = rate / rate.sum(1, keepdims=True) * depth
        counts.append(rng.poisson(rate).astype(np.float32))
        coords.append(np.stack([x, y], axis=1))
        obs.append(
            pd.DataFrame(
                {Key.library: name, Key.array_row: rr, Key.array_col: cc, "factor": factor},
                index=[f"{name}_{r}x{c}" for r, c in zip(rr, cc, strict=True)],
            )
        )
        spatial[name] = {
            Key.images: {"hires": image},
            Key.scalefactors: {"tissue_hires_scalef": 1.0, "spot_diameter_fullres": 0.8 * spot_step},
            "metadata": {"source": "st_hist2st.datasets.synthetic", "seed": seed},
        }
    obs = pd.concat(obs)
    obs[Key.library] = pd.Categorical(obs[Key.library])
    adata = AnnData(
        X=sparse.csr_matrix(np.concatenate(counts)),
        obs=obs,
        var=pd.DataFrame(index=[f"gene{g}" for g in range(n_genes)]),
    )
    adata.obsm[Key.spatial] = np.concatenate(coords)
    adata.uns[Key.spatial] = spatial
    return adata


def _paint(height, width, x, y, mix, spot_step, rng) -> np.ndarray:
    """White image with a stained disc per spot whose colour mixes the two stains by ``mix``, plus texture."""
    image = np.full((height, width, 3), 245.0)
    radius = 0.45 * spot_step
    yy, xx = np.mgrid[-int(radius) : int(radius) + 1, -int(radius) : int(radius) + 1]
    disc = xx**2 + yy**2 <= radius**2
    for cx, cy, m in zip(np.rint(x).astype(int), np.rint(y).astype(int), mix, strict=True):
        colour = (1 - m) * _PINK + m * _PURPLE
        window = image[cy - int(radius) : cy + int(radius) + 1, cx - int(radius) : cx + int(radius) + 1]
        window[disc] = colour
    image += rng.normal(0.0, 12.0, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)
