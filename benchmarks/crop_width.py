"""How wide a crop the ridge baselines see best, chosen by nested validation on the shared her2st sections.

For each held-out section, every crop side (full-resolution pixels, each crop resized to 112 pixels) is scored
by inner leave-one-out on the three training sections alone; the side with the best mean inner r is fitted on
all three and scored on the held-out section. Features: the 14 colour features of ``benchmarks/her2st.py``
(mean and standard deviation per channel, an 8-bin grey histogram) and those with the four texture
statistics (18). No network is trained; it runs in a few minutes on one core.

    python benchmarks/crop_width.py --sides 112 224 448 672 896
"""

from __future__ import annotations

import argparse

import numpy as np
from her2st import ROOT, colour_texture_features, ridge_r, targets

import st_hist2st as hist2st


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sides", nargs="+", type=float, default=[112, 224, 448, 672, 896])
    args = parser.parse_args()
    genes = (ROOT / "genes_785.txt").read_text().split()
    adata = hist2st.datasets.her2st(ROOT)
    sections = list(adata.obs["library_id"].cat.categories)
    library = adata.obs["library_id"].to_numpy()
    y = targets(adata, genes)
    features = {}
    for side in args.sides:
        patches = hist2st.pp.extract_patches(adata, "fullres", crop_size=side, show_progress_bar=False)
        features[side] = colour_texture_features(patches)
    for name, columns in (("colour", slice(0, 14)), ("colour+texture", slice(None))):
        held_out = []
        for test in sections:
            train = [s for s in sections if s != test]
            inner = {
                side: np.mean(
                    [
                        ridge_r(f[:, columns], y, np.isin(library, [s for s in train if s != v]), library == v)[0]
                        for v in train
                    ]
                )
                for side, f in features.items()
            }
            chosen = max(inner, key=inner.get)
            r = ridge_r(features[chosen][:, columns], y, library != test, library == test)[0]
            held_out.append(r)
            scores = ", ".join(f"{side:g}: {score:.3f}" for side, score in inner.items())
            print(f"{name}, test {test}: inner r {{{scores}}}; chosen {chosen:g} px; held-out r {r:.3f}", flush=True)
        print(f"{name}: nested held-out mean r {np.mean(held_out):.3f}", flush=True)


if __name__ == "__main__":
    main()
