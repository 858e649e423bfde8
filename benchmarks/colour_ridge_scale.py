"""Time and memory of the colour ridge's fit and prediction, with ``colour_ridge_rank='auto'`` and
``colour_ridge_trees='auto'`` as ``'blend'`` fits it, on many spots (Visium HD bins, cells pooled into spots).

Synthetic features of three training sections, with ``--genes`` genes driven by programmes that are not linear
in them; the seconds of :meth:`~st_hist2st.nn.ColourRidge.fit` (the choices of rank and forest included, the
patches' features not) and of predicting every training spot, and the peak resident memory each added over what
the process held before it (Linux: the peak is reset through ``/proc/self/clear_refs``). Each size runs in a fresh
process. Run with ``OMP_NUM_THREADS=1`` for one core.

    OMP_NUM_THREADS=1 python benchmarks/colour_ridge_scale.py 30000 150000 1000000
    OMP_NUM_THREADS=1 python benchmarks/colour_ridge_scale.py 150000 1000000 --genes 785
"""

from __future__ import annotations

import argparse
import multiprocessing
import time

import numpy as np
import torch

from st_hist2st.nn import ColourRidge
from st_hist2st.nn._colour_ridge import FEATURE_NAMES


def memory_gb(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (its peak since the last reset) of this process, in GB."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1e6 for line in status if line.startswith(field + ":"))


def reset_peak() -> float:
    """Reset the process's peak resident memory to what it holds now, and return that, in GB."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    return memory_gb("VmRSS")


def one_size(n: int, genes: int) -> str:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, len(FEATURE_NAMES))).astype(np.float32)
    y = np.empty((n, genes), dtype=np.float32)
    loadings = rng.normal(size=(5, genes))
    for part in np.array_split(np.arange(n), -(-n // 65536)):  # built in parts: only the float32 targets are held
        y[part] = np.abs(x[part, :5]) @ loadings + rng.normal(size=(len(part), genes))
    sections = np.repeat(["S0", "S1", "S2"], -(-n // 3))[:n]
    before = reset_peak()
    t0 = time.perf_counter()
    ridge = ColourRidge(genes, "auto", "auto").fit(torch.from_numpy(x), torch.from_numpy(y), sections)
    fit, fit_memory = time.perf_counter() - t0, memory_gb("VmHWM") - before
    before = reset_peak()
    t0 = time.perf_counter()
    with torch.inference_mode():
        predicted = ridge(torch.from_numpy(x))
    seconds, memory = time.perf_counter() - t0, memory_gb("VmHWM") - before
    return (
        f"{n:,} spots x {genes} genes (targets {y.nbytes / 1e9:.2f} GB): fit {fit:.1f} s, peak memory "
        f"+{fit_memory:.2f} GB (rank {ridge.fitted_rank}, forest's share {ridge.fitted_trees:g}, leaves of "
        f"{ridge.fitted_leaf}); prediction {seconds:.1f} s, peak memory +{memory:.2f} GB (its output "
        f"{predicted.numel() * 4 / 1e9:.2f} GB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spots", type=int, nargs="+", help="numbers of training spots, over three sections")
    parser.add_argument("--genes", type=int, default=50)
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    for n in args.spots:
        with context.Pool(1) as pool:
            print(pool.apply(one_size, (n, args.genes)), flush=True)


if __name__ == "__main__":
    main()
