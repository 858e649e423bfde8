"""Time of the colour ridge's fit and prediction, with ``colour_ridge_rank='auto'`` and ``colour_ridge_trees='auto'``
as ``'blend'`` fits it, on many spots (Visium HD bins, cells pooled into spots).

Synthetic features of three training sections, with 50 genes driven by programmes that are not linear in them;
the seconds of :meth:`~st_hist2st.nn.ColourRidge.fit` (the choices of rank and forest included, the patches'
features not) and of predicting every training spot. Run with ``OMP_NUM_THREADS=1`` for one core.

    OMP_NUM_THREADS=1 python benchmarks/colour_ridge_scale.py 30000 150000 1000000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from st_hist2st.nn import ColourRidge
from st_hist2st.nn._colour_ridge import FEATURE_NAMES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spots", type=int, nargs="+", help="numbers of training spots, over three sections")
    parser.add_argument("--genes", type=int, default=50)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for n in args.spots:
        x = rng.normal(size=(n, len(FEATURE_NAMES))).astype(np.float32)
        y = np.abs(x[:, :5]) @ rng.normal(size=(5, args.genes)) + rng.normal(size=(n, args.genes))
        sections = np.repeat(["S0", "S1", "S2"], -(-n // 3))[:n]
        t0 = time.perf_counter()
        ridge = ColourRidge(args.genes, "auto", "auto").fit(torch.from_numpy(x), torch.from_numpy(y), sections)
        fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        with torch.inference_mode():
            ridge(torch.from_numpy(x))
        print(
            f"{n:,} spots: fit {fit:.1f} s (rank {ridge.fitted_rank}, forest's share {ridge.fitted_trees:g}, "
            f"leaves of {ridge.fitted_leaf}), prediction {time.perf_counter() - t0:.1f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
