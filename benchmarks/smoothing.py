"""Would averaging each spot's prediction with its neighbours' make ``'blend'`` more accurate on a new section?

Measured expression varies smoothly over the tissue; a prediction from one patch carries that patch's noise.
For the models saved by ``benchmarks/blend.py`` (inner and outer, one or more seeds), this blends the network
(``colour_ridge=0``) and its colour ridge (``colour_ridge=1``) with weight ``w``, as ``'blend'`` does, and then
smooths the blend over the spot graph the network itself uses: ``(1 - a) * p + a * (mean of p over the spot's
neighbours)``, applied ``hops`` times. ``w``, ``a`` and ``hops`` are chosen together under the nested protocol
(by the inner models' mean r on the three training sections of a split) and only then scored on the held-out
section, with the outer models of every seed averaged.

The two ridge baselines of ``benchmarks/her2st.py --nested`` are smoothed the same way, with ``a`` and
``hops`` chosen by their own inner scores (a ridge fitted on two of the training sections, scored on the
third), so that the comparison says whether smoothing helps Hist2ST more than it helps any prediction.

    python benchmarks/smoothing.py --out runs/blend runs/seed1 runs/seed2
"""

from __future__ import annotations

import argparse
import itertools
import logging
import warnings

import numpy as np
import pandas as pd
from blend import fitted_ridge, her2st_and_saved_models, network_prediction, with_colour_ridge
from her2st import PAPER_CROP, colour_texture_features, mean_r, targets

import st_hist2st as hist2st

BLEND_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
#: ``(a, hops)``: no smoothing, then a share ``a`` of the neighbours' mean, once or twice.
SMOOTHINGS = [(0.0, 0)] + [(a, hops) for a in (0.25, 0.5, 0.75) for hops in (1, 2)]


def smooth(pred: np.ndarray, edge_index: np.ndarray, share: float, hops: int) -> np.ndarray:
    """``hops`` times ``(1 - share) * pred + share * (mean of pred over each spot's neighbours)``; a spot
    without neighbours keeps its own value."""
    src, dst = edge_index
    degree = np.bincount(dst, minlength=len(pred)).astype(np.float64)[:, None]
    for _ in range(hops):
        total = np.zeros_like(pred)
        np.add.at(total, dst, pred[src])
        neighbours = np.where(degree > 0, total / np.maximum(degree, 1), pred)
        pred = (1 - share) * pred + share * neighbours
    return pred


def network_and_ridge(adata, paths, section: str) -> tuple[np.ndarray, np.ndarray]:
    """The models' averaged network prediction of ``section`` and the colour ridge of the first, fitted on the
    sections it was trained on, as :func:`st_hist2st.tl.predict` gives them (genes in the models' order)."""
    models = [hist2st.Hist2ST.load(p) for p in paths]
    held = network_prediction(adata, models, section)
    state = fitted_ridge(models[0], adata).state_dict()
    hist2st.tl.predict(held, [with_colour_ridge(models[0], state, 1.0)], key_added="ridge", show_progress_bar=False)
    genes = models[0].genes
    return np.asarray(held[:, genes].layers["network"], np.float64), np.asarray(
        held[:, genes].layers["ridge"], np.float64
    )


def baseline_predictions(adata, genes, sections) -> dict[tuple[str, tuple[str, ...], str], np.ndarray]:
    """``(baseline, trained on, scored on) -> prediction`` of the two ridges of ``her2st.py --nested``, for every
    pair and triple of training sections and each section outside them."""
    from sklearn.linear_model import RidgeCV

    spot = hist2st.pp.extract_patches(adata, "fullres", crop_size=PAPER_CROP, show_progress_bar=False)
    wide = hist2st.pp.extract_patches(adata, "fullres", crop_size=4 * PAPER_CROP, show_progress_bar=False)
    wide_only = colour_texture_features(wide)
    features = {
        "ridge, 2 crops": np.concatenate([colour_texture_features(spot), wide_only], axis=1),
        "ridge, wide crop": wide_only,
    }
    y = targets(adata, genes)
    library = adata.obs["library_id"].to_numpy()
    out = {}
    for size in (2, 3):
        for trained_on in itertools.combinations(sections, size):
            tr = np.isin(library, trained_on)
            for name, x in features.items():
                mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-8
                model = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit((x[tr] - mu) / sd, y[tr])
                for section in (s for s in sections if s not in trained_on):
                    te = library == section
                    out[name, trained_on, section] = model.predict((x[te] - mu) / sd).astype(np.float64)
    return out


def moran_spearman(adata, section: str, genes, pred: np.ndarray) -> float:
    """Spearman correlation over the genes between predicted and observed Moran's I, as ``tl.evaluate`` gives."""
    held = adata[adata.obs["library_id"] == section, genes].copy()
    held.layers["hist2st"] = pred.astype(np.float32)
    held.uns["hist2st"] = {"genes": list(genes)}
    hist2st.tl.evaluate(held, genes=list(genes), copy=False)
    return float(held.uns["hist2st_pearson"]["moran_spearman"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, nargs="+", help="folders of the saved models")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    adata, sections, groups, first, cut = her2st_and_saved_models(args.out)
    genes = first.genes
    library = adata.obs["library_id"].to_numpy()
    for name, section in cut.items():  # the predictions and the baselines come in the AnnData's order
        assert np.array_equal(section.obs_index, np.flatnonzero(library == name))
    graphs = {name: s.edge_index.numpy() for name, s in cut.items()}
    observed = {name: s.targets.numpy().astype(np.float64) for name, s in cut.items()}
    parts = {}  # (trained on, scored on, seeds) -> (network, ridge)
    for trained_on, paths in groups.items():
        for section in (s for s in sections if s not in trained_on):
            for n in sorted({1, len(paths)}):  # the first folder's model alone (the inner models), and all seeds
                parts[trained_on, section, n] = network_and_ridge(adata, paths[:n], section)
            print(f"{'+'.join(trained_on)} ({len(paths)} models) on {section} predicted", flush=True)
    bases = baseline_predictions(adata, genes, sections)

    def blend_score(key, w, smoothing) -> float:
        network, ridge = parts[key]
        return mean_r(smooth((1 - w) * network + w * ridge, graphs[key[1]], *smoothing), observed[key[1]])

    def base_score(name, trained_on, section, smoothing) -> float:
        return mean_r(smooth(bases[name, trained_on, section], graphs[section], *smoothing), observed[section])

    rows = []
    for test in sections:
        train_on = tuple(s for s in sections if s != test)
        inner_keys = [(tuple(sorted(set(train_on) - {v})), v, 1) for v in train_on]
        if (train_on, test, 1) not in parts or any(k not in parts for k in inner_keys):
            print(f"test {test}: skipped, its outer or inner models are not all under --out")
            continue
        candidates = list(itertools.product(BLEND_WEIGHTS, SMOOTHINGS))
        inner = {c: np.mean([blend_score(k, *c) for k in inner_keys]) for c in candidates}
        w, smoothing = max(inner, key=inner.get)
        seeds = max(n for (t, s, n) in parts if t == train_on and s == test)
        key = (train_on, test, seeds)
        network, ridge = parts[key]
        row = {
            "test": test,
            "seeds": seeds,
            "choice": f"w={w:g}, a={smoothing[0]:g} x{smoothing[1]}",
            "chosen": blend_score(key, w, smoothing),
            "chosen, Moran Sp.": moran_spearman(
                adata, test, genes, smooth((1 - w) * network + w * ridge, graphs[test], *smoothing)
            ),
            "'blend'": blend_score(key, 0.5, (0.0, 0)),
            "'blend' smoothed (inner choice of a)": None,
            "network": blend_score(key, 0.0, (0.0, 0)),
        }
        by_smoothing = {s: np.mean([blend_score(k, 0.5, s) for k in inner_keys]) for s in SMOOTHINGS}
        row["'blend' smoothed (inner choice of a)"] = blend_score(key, 0.5, max(by_smoothing, key=by_smoothing.get))
        for name in ("ridge, 2 crops", "ridge, wide crop"):
            inner_base = {s: np.mean([base_score(name, k[0], k[1], s) for k in inner_keys]) for s in SMOOTHINGS}
            chosen_base = max(inner_base, key=inner_base.get)
            row[name] = base_score(name, train_on, test, (0.0, 0))
            row[f"{name}, smoothed"] = base_score(name, train_on, test, chosen_base)
            row[f"{name}, smoothing"] = f"a={chosen_base[0]:g} x{chosen_base[1]}"
        rows.append(row)
        print(
            f"test {test}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())
        )
        print(
            "  inner r of 'blend' (w=0.5) by smoothing: "
            + ", ".join(f"a={s[0]:g} x{s[1]} {r:.4f}" for s, r in by_smoothing.items()),
            flush=True,
        )
    if rows:
        table = pd.DataFrame(rows).set_index("test")
        print("held-out mean r: the nested choice (blend weight w, smoothing a x hops), fixed blends and ridges")
        with pd.option_context("display.width", 250, "display.max_columns", 30):
            print(table.round(4).to_string())
        print(table.select_dtypes("number").drop(columns="seeds").mean().round(4).to_string())


if __name__ == "__main__":
    main()
