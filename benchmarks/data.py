"""Load time and peak memory of the data layer.

Each case runs in a fresh process so that its peak RSS is its own:

- ``her2st``: the four shared sections with their full-resolution images (``datasets.her2st``), then
  patches, graph and targets for all 834 spots (``prepare_sections``);
- ``synthetic``: a 10,000-spot section on a 25,000 x 25,000 px image that is generated lazily block by block
  (a dask array, as a large image read from zarr would be), cut into patches.

    python benchmarks/data.py
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(os.environ.get("HIST2ST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "her2st"))


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def her2st() -> None:
    import st_hist2st as hist2st
    from st_hist2st._data._section import prepare_sections

    t0 = time.perf_counter()
    adata = hist2st.datasets.her2st(ROOT)
    t1 = time.perf_counter()
    print(
        f"her2st load: {adata.n_obs} spots x {adata.n_vars} genes, 4 sections in {t1 - t0:.1f} s; "
        f"peak RSS {peak_rss_gb():.2f} GB"
    )
    genes = (ROOT / "genes_785.txt").read_text().split()
    sections = prepare_sections(adata, "fullres", genes=genes, crop_size=112, show_progress_bar=False)
    t2 = time.perf_counter()
    n = sum(s.n_spots for s in sections)
    mb = sum(s.patches.numel() for s in sections) / 1e6
    print(
        f"her2st prepare: {n} patches ({mb:.0f} MB uint8), graphs and targets in {t2 - t1:.1f} s; "
        f"peak RSS {peak_rss_gb():.2f} GB"
    )


def synthetic(n_spots: int = 10_000, side: int = 25_000) -> None:
    import dask.array as da
    import numpy as np
    import pandas as pd
    from anndata import AnnData

    import st_hist2st as hist2st

    def block(block_info=None):
        (r0, r1), (c0, c1), _ = block_info[None]["array-location"]
        rows = np.arange(r0, r1, dtype=np.uint16)[:, None, None]
        cols = np.arange(c0, c1, dtype=np.uint16)[None, :, None]
        return ((rows * 3 + cols * 5 + np.array([0, 85, 170], dtype=np.uint16)) % 256).astype(np.uint8)

    image = da.map_blocks(block, chunks=((2048,) * (side // 2048) + (side % 2048,),) * 2 + ((3,),), dtype=np.uint8)
    grid = int(np.ceil(np.sqrt(n_spots)))
    step = (side - 400) / grid
    rr, cc = np.divmod(np.arange(n_spots), grid)
    adata = AnnData(obs=pd.DataFrame({"array_row": rr, "array_col": cc}, index=[f"s{i}" for i in range(n_spots)]))
    adata.obsm["spatial"] = np.stack([200 + cc * step, 200 + rr * step], axis=1)
    adata.uns["spatial"] = {
        "big": {"images": {"hires": image}, "scalefactors": {"tissue_hires_scalef": 1.0, "spot_diameter_fullres": 224}}
    }
    base = peak_rss_gb()
    t0 = time.perf_counter()
    patches = hist2st.pp.extract_patches(adata, "hires", library_key=None, show_progress_bar=False)
    dt = time.perf_counter() - t0
    print(
        f"synthetic: {n_spots} spots on a {side} x {side} px lazy image ({side * side * 3 / 1e9:.2f} GB as uint8), "
        f"224 px crops -> {patches.shape} in {dt:.1f} s ({n_spots / dt:.0f} spots/s); "
        f"peak RSS {peak_rss_gb():.2f} GB (before cropping {base:.2f} GB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=["her2st", "synthetic"], default=None)
    args = parser.parse_args()
    if args.case == "her2st":
        her2st()
    elif args.case == "synthetic":
        synthetic()
    else:
        for case in ("her2st", "synthetic"):
            subprocess.run([sys.executable, __file__, "--case", case], check=True)


if __name__ == "__main__":
    main()
