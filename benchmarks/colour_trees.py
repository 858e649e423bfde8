"""The colour ridge's forest (``colour_ridge_trees='auto'``) on held-out her2st sections, and its blend with trained
models.

The colour ridge of ``'blend'`` predicts the leading expression programmes linearly from 18 colour and texture
features of each spot's patch. ``colour_ridge_trees`` gives a share of that to a forest of extremely randomised
trees on the same features (:class:`~st_hist2st.nn.ColourRidge`), which can learn a map that is not linear.
``'auto'`` chooses the share (0, 0.25, 0.5, 0.75, 1) and the fewest spots in a leaf (5, 10, 20) by leaving out
one training section at a time, after ``colour_ridge_rank='auto'`` has chosen the rank: fitted on the three
training sections of each split, as :func:`st_hist2st.tl.fit` fits it, that is nested validation, and its
held-out figure is printed beside the ridge alone and beside every candidate fixed (with the chosen rank; for
reference, not to choose by). The seconds ``tl.fit`` spends on the ridge (the patches' features and the fit)
are printed without the forest and with ``'auto'`` (run with ``OMP_NUM_THREADS=1`` for one core).

Then the saved models under ``--out`` (outer models, trained on three sections by ``benchmarks/her2st.py``;
models trained on the same sections are averaged, as :func:`st_hist2st.tl.predict` averages a list) are scored
on their held-out section alone: the network, blended at ``--weight`` with the ridge alone (``'blend'`` without
the forest) and with the forest ``'auto'`` chose, with the Spearman correlation between predicted and observed
Moran's I over the genes for each.

    python benchmarks/colour_trees.py
    python benchmarks/her2st.py --test SECTION --preset wide --seed 0 --out runs/wide
    python benchmarks/colour_trees.py --out runs/wide
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import numpy as np
import torch
from her2st import mean_r
from ridge_rank import add_blends, colour_inputs, print_table, ridge_r

from st_hist2st._model import fit_colour_ridge
from st_hist2st.nn import ColourRidge
from st_hist2st.nn._colour_ridge import AUTO_FORESTS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out", nargs="+", default=[], help="folders of the saved outer models (none: the ridge alone)"
    )
    parser.add_argument("--weight", type=float, default=0.5, help="the ridge's weight in the blend")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    adata, sections, groups, cut, features, targets = colour_inputs(args.out)
    name = {c: "ridge alone" if c[0] == 0 else f"{c[0]:g}, leaf {c[1]}" for c in AUTO_FORESTS}
    rows, held_out = [], {}
    for test in sections:
        train_on = [s for s in sections if s != test]
        fitted, seconds = {}, {}
        for trees in (0.0, "auto"):  # as tl.fit: the features, then the fit
            ridge = ColourRidge(targets[test].shape[1], "auto", trees)
            t0 = time.perf_counter()
            fit_colour_ridge(ridge, [cut[s] for s in train_on], False)
            seconds[trees], fitted[trees] = time.perf_counter() - t0, ridge
        auto = fitted["auto"]
        with torch.inference_mode():
            held = {k: mean_r(r(features[test]).numpy(), targets[test].numpy()) for k, r in fitted.items()}
        held_out[test] = {c: ridge_r(features, targets, train_on, test, auto.fitted_rank, *c) for c in AUTO_FORESTS}
        print(
            f"test {test}: held-out, each forest fixed: "
            + ", ".join(f"{name[c]} {r:.4f}" for c, r in held_out[test].items()),
            flush=True,
        )
        row = {
            "test": test,
            "rank": auto.fitted_rank or "full",
            "forest 'auto' chose": name[auto.fitted_trees, auto.fitted_leaf],
            "fit s, ridge alone": seconds[0.0],
            "fit s, 'auto'": seconds["auto"],
            "ridge alone": held[0.0],
            "forest 'auto'": held["auto"],
        }
        paths = groups.get(tuple(train_on))
        if paths:
            ridges = {
                f"blend, {label}": (fitted[trees].state_dict(), fitted[trees].fitted_trees)
                for label, trees in (("ridge alone", 0.0), ("forest 'auto'", "auto"))
            }
            add_blends(row, adata, paths, test, ridges, args.weight)
        rows.append(row)
    print_table(rows, args.weight, bool(groups), ["rank", "forest 'auto' chose"])
    print(
        "held-out mean r of each forest fixed: "
        + ", ".join(f"{name[c]} {np.mean([held[c] for held in held_out.values()]):.4f}" for c in AUTO_FORESTS)
    )


if __name__ == "__main__":
    main()
