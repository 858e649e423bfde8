"""Nested choice of the colour ridge's rank (``colour_ridge_rank``), and its blend with trained models.

The colour ridge of ``colour_ridge`` predicts each gene from 18 colour and texture features of the spot's patch
with coefficients of its own. With a rank, its predictions are projected onto that many principal components of
the training expression (reduced-rank regression, :class:`~st_hist2st.nn.ColourRidge`). The rank is chosen by
nested validation without a network: for each held-out section, a ridge of each rank is fitted on two of the
three training sections and scored on the third (each in turn); the rank of best mean inner r is fitted on all
three and scored on the held-out section. ``ColourRidge(rank='auto')``, the ridge of ``'blend'``, makes the
same choice when it is fitted on the three training sections; its choice is printed beside the script's, with
the seconds ``tl.fit`` spends on the ridge (the patches' features and the fit) with the rank fixed and with
``'auto'`` (run with ``OMP_NUM_THREADS=1`` for one core). The
patches are those of the first saved model under ``--out`` (its micrometres and field of view), or without
``--out`` those ``'blend'`` cuts (no network is then needed or scored).

Then the saved models under ``--out`` (outer models, trained on three sections by ``benchmarks/her2st.py``;
models trained on the same sections are averaged, as :func:`st_hist2st.tl.predict` averages a list) are scored
on their held-out section alone, blended at ``--weight`` with the full-rank ridge (the ``'blend'`` of before),
and blended with the ridge of the chosen rank; with the Spearman correlation between predicted and observed
Moran's I over the genes for each.

    python benchmarks/ridge_rank.py
    python benchmarks/her2st.py --test SECTION --preset wide --seed 0 --out runs/wide
    python benchmarks/ridge_rank.py --out runs/wide
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import numpy as np
import pandas as pd
import torch
from blend import blended_scores, features_of, her2st_and_saved_models
from her2st import ROOT, mean_r

import st_hist2st as hist2st
from st_hist2st._data._section import prepare_sections
from st_hist2st._model import fit_colour_ridge
from st_hist2st.nn import ColourRidge
from st_hist2st.nn._colour_ridge import MIN_SPOTS_PER_LEAF
from st_hist2st.nn._training import preset


def fitted_ridge(features, targets, trained_on, rank, trees=0.0, leaf=MIN_SPOTS_PER_LEAF) -> ColourRidge:
    """A :class:`ColourRidge` of ``rank`` (and forest of share ``trees``, leaves of ``leaf`` spots) fitted on the
    ``trained_on`` sections."""
    ridge = ColourRidge(targets[trained_on[0]].shape[1], rank, trees, leaf)
    return ridge.fit(torch.cat([features[s] for s in trained_on]), torch.cat([targets[s] for s in trained_on]))


def ridge_r(features, targets, trained_on, section, rank, trees=0.0, leaf=MIN_SPOTS_PER_LEAF) -> float:
    """Held-out mean r on ``section`` of :func:`fitted_ridge`."""
    ridge = fitted_ridge(features, targets, trained_on, rank, trees, leaf)
    with torch.inference_mode():
        predicted = ridge(features[section])
    return mean_r(predicted.numpy(), targets[section].numpy())


def her2st_as_blend_cuts() -> tuple:
    """her2st, its section names, and every section cut as ``'blend'`` cuts them for a fit (no saved models)."""
    adata = hist2st.datasets.her2st(ROOT)
    sections = list(adata.obs["library_id"].cat.categories)
    genes = (ROOT / "genes_785.txt").read_text().split()
    field_of_view = preset("blend")[0]["field_of_view"]
    cut = prepare_sections(
        adata, "fullres", genes=genes, libraries=sections, field_of_view=field_of_view, show_progress_bar=False
    )
    return adata, sections, {s.library_id: s for s in cut}


def colour_inputs(folders) -> tuple:
    """her2st, its section names, the saved models under ``folders`` grouped by the sections they were trained on,
    every section cut as the first of them predicts (or as ``'blend'`` cuts, without ``folders``), and each
    section's 18 colour features and targets."""
    if folders:
        adata, sections, groups, _, cut = her2st_and_saved_models(folders)
    else:
        (adata, sections, cut), groups = her2st_as_blend_cuts(), {}
    features = {name: features_of(s) for name, s in cut.items()}
    targets = {name: s.targets for name, s in cut.items()}
    return adata, sections, groups, cut, features, targets


def add_blends(row: dict, adata, paths, test: str, ridges: dict, weight: float) -> None:
    """Add to ``row`` the held-out mean r and Moran's I Spearman on ``test`` of the models saved at ``paths``
    (averaged): their network alone, and blended at ``weight`` with each ridge of ``ridges`` (column name ->
    its state and forest share)."""
    models = [hist2st.Hist2ST.load(path) for path in paths]
    for column, (state, share) in ridges.items():
        scores = blended_scores(adata, models, state, test, [0.0, weight], share)
        for key, w in (("network", 0.0), (column, weight)):
            row[key] = scores[test, w]["mean_r"]
            row[f"{key}, Moran"] = scores[test, w]["moran_spearman"]
    row["models"] = len(models)


def print_table(rows: list[dict], weight: float, blended: bool, labels: list[str]) -> None:
    """The rows, one per held-out section, and the mean of every column but the ``labels``."""
    table = pd.DataFrame(rows).set_index("test")
    print(f"held-out mean r (blends at w={weight:g}) and Moran's I Spearman" if blended else "held-out mean r")
    print(table.round(4).to_string())
    means = table.drop(columns=labels).mean()
    print("mean: " + ", ".join(f"{k} {v:.4f}" for k, v in means.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out", nargs="+", default=[], help="folders of the saved outer models (none: the ridge alone)"
    )
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 5, 10, 20, 50], help="ranks tried (and full)")
    parser.add_argument("--weight", type=float, default=0.5, help="the ridge's weight in the blend")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    adata, sections, groups, cut, features, targets = colour_inputs(args.out)
    ranks = [None, *args.ranks]
    rows = []
    for test in sections:
        train_on = [s for s in sections if s != test]
        inner = {
            rank: np.mean([ridge_r(features, targets, [s for s in train_on if s != v], v, rank) for v in train_on])
            for rank in ranks
        }
        chosen = max(inner, key=inner.get)
        held = {rank: ridge_r(features, targets, train_on, test, rank) for rank in ranks}
        seconds, auto = {}, ColourRidge(targets[test].shape[1], "auto")
        for ridge in (ColourRidge(targets[test].shape[1], chosen), auto):  # as tl.fit: the features, then the fit
            t0 = time.perf_counter()
            fit_colour_ridge(ridge, [cut[s] for s in train_on], False)
            seconds[ridge.rank] = time.perf_counter() - t0
        print(
            f"test {test}: ridge by rank, inner / held-out: "
            + ", ".join(f"{rank or 'full'} {inner[rank]:.4f} / {held[rank]:.4f}" for rank in ranks),
            flush=True,
        )
        row = {
            "test": test,
            "rank": chosen or "full",
            "rank 'auto' chose": auto.fitted_rank or "full",
            "fit s, chosen rank": seconds[chosen],
            "fit s, 'auto'": seconds["auto"],
            "ridge": held[None],
            "ridge, chosen rank": held[chosen],
        }
        paths = groups.get(tuple(train_on))
        if paths:
            ridges = {
                f"blend, {name}": (fitted_ridge(features, targets, train_on, rank).state_dict(), 0.0)
                for name, rank in (("full", None), ("chosen rank", chosen))
            }
            add_blends(row, adata, paths, test, ridges, args.weight)
        rows.append(row)
    print_table(rows, args.weight, bool(groups), ["rank", "rank 'auto' chose"])


if __name__ == "__main__":
    main()
