"""Prediction and training on sections of any size: seconds per 1,000 spots and peak memory.

Each figure comes from a fresh process (peak RSS is per process), on synthetic sections whose H&E image is
generated lazily, window by window, as it is read (nothing of it is held): Visium-like hexagonal grids of
10,000, 50,000 and 200,000 spots, a training step on a 50,000-spot section (through windows of
``max_spots`` spots), and ``pp.tile`` + prediction over a whole 60,000 x 60,000 px slide with an elliptic
piece of tissue; scoring (``tl.evaluate`` with Moran's I, then ``tl.spatial_autocorr``) of a prediction
of 785 genes on sections of 50,000 and 200,000 spots (``--score``; the extra memory is the peak RSS above the
RSS before scoring); with ``--profile``, the share of a prediction's time spent cutting and resizing the patches,
in the network and in the colour model's features (under cProfile). The model is the ``--preset`` (``'fast'`` by default; ``'blend'``, ``tl.fit``'s default, adds
the wide crop and the colour model) predicting 785 genes, trained for one epoch on the package's synthetic data
(its weights do not change the cost).

    python benchmarks/scale.py                       # everything, on the CPU
    python benchmarks/scale.py --preset blend        # tl.fit's default
    python benchmarks/scale.py --sizes 10000 --device cuda
    python benchmarks/scale.py --preset blend --sizes --train --slide --profile 3000
    python benchmarks/scale.py --sizes --train --slide --score 50000 200000
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

MICRONS_PER_PIXEL = 0.5
PITCH = 100 / MICRONS_PER_PIXEL  # Visium's 100 um between spot centres
N_GENES = 785
#: The functions whose share of a prediction's time ``--profile`` prints (cumulative: a function's callees count).
PROFILED = ("crop_patches", "resize_patches", "predict_windows", "patch_features")


class LazyHE:
    """A ``(height, width, 3)`` uint8 H&E-like image computed for each window as it is sliced.

    Pink stroma with purple nuclei-like blobs inside an ellipse (or everywhere), white glass outside.
    ``pixels_read`` counts the pixels generated.
    """

    def __init__(self, height: int, width: int, ellipse: bool = True) -> None:
        self.shape, self.dtype, self.ndim = (height, width, 3), np.dtype(np.uint8), 3
        self.ellipse = ellipse
        self.pixels_read = 0

    def __getitem__(self, key):
        rows, cols = key[:2]
        y = np.arange(*rows.indices(self.shape[0]), dtype=np.float32)[:, None]
        x = np.arange(*cols.indices(self.shape[1]), dtype=np.float32)[None, :]
        self.pixels_read += y.size * x.size
        blobs = np.sin(x * 0.21) * np.sin(y * 0.17) + 0.5 * np.sin((x + 2 * y) * 0.013)
        nuclei = blobs > 0.6
        out = np.empty((y.size, x.size, 3), dtype=np.uint8)
        out[..., 0] = np.where(nuclei, 90, 225)
        out[..., 1] = np.where(nuclei, 60, 150)
        out[..., 2] = np.where(nuclei, 150, 200)
        if self.ellipse:
            h, w = self.shape[:2]
            outside = ((x - w / 2) / (0.42 * w)) ** 2 + ((y - h / 2) / (0.35 * h)) ** 2 > 1
            out[outside] = 245
        return out


def section(n_spots: int, genes: list[str] | None = None):
    """A hexagonal grid of about ``n_spots`` spots over a lazily generated image; counts when ``genes``."""
    import anndata
    import pandas as pd
    import scipy.sparse as sp

    cols = int(np.ceil(np.sqrt(n_spots * 2 / np.sqrt(3))))
    rows = int(np.ceil(n_spots / cols))
    r, c = np.divmod(np.arange(rows * cols)[:n_spots], cols)
    xy = np.stack([(c + (r % 2) / 2) * PITCH, r * PITCH * np.sqrt(3) / 2], axis=1) + PITCH
    image = LazyHE(int(xy[:, 1].max() + 2 * PITCH), int(xy[:, 0].max() + 2 * PITCH), ellipse=False)
    obs = pd.DataFrame({"library_id": "big", "array_row": r, "array_col": 2 * c + (r % 2)})
    obs.index = obs.index.astype(str)
    x = None
    if genes is not None:
        rng = np.random.default_rng(0)
        x = sp.random(n_spots, len(genes), density=0.1, format="csr", random_state=rng, dtype=np.float32)
        x.data = np.ceil(x.data * 10)
    adata = anndata.AnnData(X=x, obs=obs)
    if genes is not None:
        adata.var_names = genes
    adata.obs["library_id"] = adata.obs["library_id"].astype("category")
    adata.obsm["spatial"] = xy
    adata.uns["spatial"] = {
        "big": {
            "images": {"hires": image},
            "scalefactors": {"tissue_hires_scalef": 1.0, "spot_diameter_fullres": 55 / MICRONS_PER_PIXEL},
            "metadata": {"microns_per_pixel": MICRONS_PER_PIXEL},
        }
    }
    return adata


def model(folder: Path, preset: str):
    """A model of ``preset`` for 785 genes, trained one epoch on the synthetic data (saved once, then loaded)."""
    import st_hist2st as hist2st

    if (folder / "config.json").exists():
        return hist2st.Hist2ST.load(folder)
    data = hist2st.datasets.synthetic(n_libraries=2, shape=(12, 12), n_genes=N_GENES, seed=0)
    fitted = hist2st.tl.fit(data, "hires", preset=preset, max_epochs=1, show_progress_bar=False, accelerator="cpu")
    fitted.save(folder)
    return fitted


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def current_rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 1024**3


def score(size: int) -> dict:
    """Seconds and extra memory of ``tl.evaluate(moran=True)`` and ``tl.spatial_autocorr`` on ``size`` spots."""
    import st_hist2st as hist2st

    genes = [f"gene{k}" for k in range(N_GENES)]
    adata = section(size, genes=genes)
    rng = np.random.default_rng(1)
    adata.layers["hist2st"] = rng.gamma(2.0, 0.25, (adata.n_obs, N_GENES)).astype(np.float32)
    adata.uns["hist2st"] = {"median_total": 800.0}  # as tl.predict records it
    before = current_rss_gb()
    t0 = time.perf_counter()
    table = hist2st.tl.evaluate(adata, "hist2st", moran=True, copy=True)
    evaluated = time.perf_counter() - t0
    ranked = hist2st.tl.spatial_autocorr(adata, "hist2st", copy=True)
    assert len(table) == N_GENES and len(ranked) == N_GENES
    return {
        "spots": adata.n_obs,
        "seconds": time.perf_counter() - t0,
        "evaluate_seconds": evaluated,
        "rss_before_gb": before,
        "prediction_gb": adata.layers["hist2st"].nbytes / 1024**3,
    }


def run_one(kind: str, size: int, device: str, folder: Path, preset: str) -> dict:
    import torch

    import st_hist2st as hist2st

    torch.manual_seed(0)
    if kind == "score":  # needs no model
        return score(size)
    net = model(folder, preset)
    if kind == "model":  # trained once, in a process of its own, so that no row's peak includes it
        return {"spots": 0, "seconds": 0.0}
    if kind == "predict":
        adata = section(size)
        t0 = time.perf_counter()
        out = hist2st.tl.predict(adata, net, device=device, show_progress_bar=False)
        seconds = time.perf_counter() - t0
        assert np.isfinite(out.X).all()
        return {"spots": adata.n_obs, "seconds": seconds}
    if kind == "profile":  # where a prediction's time goes, by the functions of PROFILED
        import cProfile
        import pstats

        adata = section(size)
        profile = cProfile.Profile()
        t0 = time.perf_counter()
        profile.runcall(hist2st.tl.predict, adata, net, device=device, show_progress_bar=False)
        seconds = time.perf_counter() - t0
        stats = pstats.Stats(profile).stats  # (file, line, name) -> (calls, ..., cumulative seconds, callers)
        shares = {name: sum(v[3] for k, v in stats.items() if k[2] == name) / seconds for name in PROFILED}
        return {"spots": adata.n_obs, "seconds": seconds, "shares": shares}
    if kind == "train":
        adata = section(size, genes=net.genes)
        t0 = time.perf_counter()
        hist2st.tl.fit(
            adata,
            "hires",
            preset=preset,
            max_epochs=1,
            crops_per_section=1,
            accelerator="gpu" if device == "cuda" else "cpu",
            show_progress_bar=False,
        )
        return {"spots": adata.n_obs, "seconds": time.perf_counter() - t0}
    if kind == "slide":
        image = LazyHE(size, size)
        t0 = time.perf_counter()
        spots = hist2st.pp.tile(image, model=net, microns_per_pixel=MICRONS_PER_PIXEL, layout="visium")
        tiled = time.perf_counter() - t0
        out = hist2st.tl.predict(spots, net, device=device, show_progress_bar=False)
        assert np.isfinite(out.X).all()
        return {
            "spots": spots.n_obs,
            "seconds": time.perf_counter() - t0,
            "tile_seconds": tiled,
            "read_fraction": image.pixels_read / (size * size),
        }
    raise ValueError(kind)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 50_000, 200_000])
    parser.add_argument("--train", type=int, nargs="*", default=[50_000], help="spots of the training section")
    parser.add_argument("--slide", type=int, nargs="*", default=[60_000], help="side of the whole slide, pixels")
    parser.add_argument("--profile", type=int, nargs="*", default=[], help="spots of sections to profile")
    parser.add_argument("--score", type=int, nargs="*", default=[50_000, 200_000], help="spots of sections to score")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="fast", help="the model's preset (tl.fit's default: 'blend')")
    parser.add_argument("--one", nargs=2, metavar=("KIND", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--model-folder", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", ".*GPU available.*")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    if args.one:
        result = run_one(args.one[0], int(args.one[1]), args.device, Path(args.model_folder), args.preset)
        result["peak_rss_gb"] = peak_rss_gb()
        print("RESULT " + json.dumps(result), flush=True)
        return
    import torch

    print(
        f"st-hist2st scale benchmark on {args.device}, preset {args.preset!r}; torch threads {torch.get_num_threads()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        jobs = [("model", 0)] + [("predict", n) for n in args.sizes] + [("train", n) for n in args.train]
        jobs += [("slide", n) for n in args.slide] + [("profile", n) for n in args.profile]
        jobs += [("score", n) for n in args.score]
        rows = []
        for kind, size in jobs:
            command = [
                sys.executable,
                __file__,
                "--one",
                kind,
                str(size),
                "--device",
                args.device,
                "--preset",
                args.preset,
            ]
            done = subprocess.run(command + ["--model-folder", str(folder)], capture_output=True, text=True)
            lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
            if done.returncode or not lines:
                print(f"{kind} {size}: failed\n{done.stderr[-3000:]}", flush=True)
                continue
            result = json.loads(lines[-1][7:])
            if kind == "model":
                continue
            rows.append((kind, size, result))
            extra = ""
            if kind == "slide":
                extra = f"  tile {result['tile_seconds']:.1f} s, {100 * result['read_fraction']:.1f} % of pixels read"
            if kind == "score":
                extra = (
                    f"  evaluate {result['evaluate_seconds']:.1f} s; above the RSS before scoring "
                    f"{result['peak_rss_gb'] - result['rss_before_gb']:.2f} GB (float32 prediction "
                    f"{result['prediction_gb']:.2f} GB)"
                )
            if kind == "profile":
                extra = "  under cProfile: " + ", ".join(f"{k} {100 * v:.0f} %" for k, v in result["shares"].items())
            print(
                f"{kind:8} {size:>7} -> {result['spots']:>7} spots  {result['seconds']:8.1f} s  "
                f"{1000 * result['seconds'] / result['spots']:6.2f} s/1k spots  "
                f"peak RSS {result['peak_rss_gb']:.2f} GB{extra}",
                flush=True,
            )
        predict = [r for kind, _, r in rows if kind == "predict"]
        if len(predict) >= 2:
            per_k = [r["seconds"] / r["spots"] for r in predict]
            print(f"s/1k spots, largest over smallest section: {per_k[-1] / per_k[0]:.2f} (target at most 1.3)")


if __name__ == "__main__":
    main()
