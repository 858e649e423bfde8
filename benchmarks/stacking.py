"""Would more of the network, or more views, make the blend of ``colour_ridge`` better?

For the models saved by ``benchmarks/blend.py`` (inner and outer, one or more seeds), blends three predictions
of each section a model was not trained on, with weights on a grid of quarters that sum to 1:

- the network (``'wide'``, without its ridge), from one view of each patch or averaged over the 8 rotations and
  mirrors (``test_time_augmentation=True``);
- a linear probe: a ridge on the network's spot representation (the input of its expression head, see
  ``benchmarks/probe.py``), fitted on the sections the model was trained on;
- the colour ridge of ``colour_ridge``: 18 colour and texture features of the network's patch.

The views and the weights are chosen together under the nested protocol (by the inner models' mean r on the
three training sections of a split), and only then scored on the held-out section, with the outer models of
every seed averaged. ``'blend'`` is one of the candidates: one view, weights ``(0.5, 0, 0.5)``.

    python benchmarks/stacking.py --out runs/blend runs/seed1 runs/seed2
"""

from __future__ import annotations

import argparse
import itertools
import logging
import warnings

import numpy as np
import pandas as pd
from blend import features_of, her2st_and_saved_models, with_colour_ridge
from her2st import mean_r
from probe import representation_and_prediction
from sklearn.linear_model import RidgeCV

import st_hist2st as hist2st
from st_hist2st.nn._colour_ridge import ALPHAS

#: Weights of (network, probe, colour ridge): quarters that sum to 1.
GRID = [w for w in itertools.product((0, 0.25, 0.5, 0.75, 1), repeat=3) if sum(w) == 1]
#: Penalties of the probe, whose 1,024 inputs need stronger ones than the 18 features.
PROBE_ALPHAS = np.logspace(0, 6, 13)


def ridge(x_train: list[np.ndarray], y_train: list[np.ndarray], x_test: np.ndarray, alphas) -> np.ndarray:
    """A ridge fitted on the concatenated training sections (features standardised over them) on ``x_test``."""
    x, y = np.concatenate(x_train).astype(np.float64), np.concatenate(y_train).astype(np.float64)
    mean, scale = x.mean(0), x.std(0) + 1e-8
    return RidgeCV(alphas=alphas).fit((x - mean) / scale, y).predict((x_test - mean) / scale)


def model_outputs(model, adata, sections, trained_on) -> dict[str, np.ndarray]:
    """The representation and one-view prediction on every section, and the 8-view one where not trained on."""
    out = {}
    for section in sections:
        out["rep", section], out["one", section] = representation_and_prediction(model, adata, section)
        if section not in trained_on:
            held = adata[adata.obs["library_id"] == section].copy()
            hist2st.tl.predict(held, [model], test_time_augmentation=True, show_progress_bar=False)
            out["eight", section] = np.asarray(held[:, model.genes].layers["hist2st"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, nargs="+", help="folders of the saved models")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    adata, sections, groups, _, cut = her2st_and_saved_models(args.out)
    features = {name: features_of(s).numpy() for name, s in cut.items()}
    targets = {name: s.targets.numpy().astype(np.float64) for name, s in cut.items()}
    parts = {}  # (trained on, scored on, seeds) -> {"one" | "eight" | "probe" | "ridge": prediction}
    for trained_on, paths in groups.items():
        outputs = [
            model_outputs(with_colour_ridge(hist2st.Hist2ST.load(p), {}, 0.0), adata, sections, trained_on)
            for p in paths
        ]
        for section in (s for s in sections if s not in trained_on):
            colour = ridge(
                [features[s] for s in trained_on], [targets[s] for s in trained_on], features[section], ALPHAS
            )
            probes = [
                ridge(
                    [o["rep", s] for s in trained_on], [targets[s] for s in trained_on], o["rep", section], PROBE_ALPHAS
                )
                for o in outputs
            ]
            for n in sorted({1, len(paths)}):  # the first folder's model alone (the inner models), and all seeds
                parts[trained_on, section, n] = {
                    "one": np.mean([o["one", section] for o in outputs[:n]], 0),
                    "eight": np.mean([o["eight", section] for o in outputs[:n]], 0),
                    "probe": np.mean(probes[:n], 0),
                    "ridge": colour,
                }
            print(f"{'+'.join(trained_on)} ({len(paths)} models) on {section} scored", flush=True)

    def score(key, views, weights) -> float:
        p = parts[key]
        w_net, w_probe, w_ridge = weights
        return mean_r(w_net * p[views] + w_probe * p["probe"] + w_ridge * p["ridge"], targets[key[1]])

    candidates = [(views, w) for views in ("one", "eight") for w in GRID]
    rows = []
    for test in sections:
        train_on = tuple(s for s in sections if s != test)
        inner_keys = [(tuple(sorted(set(train_on) - {v})), v, 1) for v in train_on]
        if (train_on, test, 1) not in parts or any(k not in parts for k in inner_keys):
            print(f"test {test}: skipped, its outer or inner models are not all under --out")
            continue
        inner = {c: np.mean([score(k, *c) for k in inner_keys]) for c in candidates}
        views, weights = max(inner, key=inner.get)
        seeds = max(n for (t, s, n) in parts if t == train_on and s == test)
        key = (train_on, test, seeds)
        rows.append(
            {
                "test": test,
                "seeds": seeds,
                "choice": f"{views} view{'s' * (views == 'eight')}, " + "/".join(f"{w:g}" for w in weights),
                "chosen": score(key, views, weights),
                "network": score(key, "one", (1, 0, 0)),
                "network, 8 views": score(key, "eight", (1, 0, 0)),
                "probe": score(key, "one", (0, 1, 0)),
                "ridge": score(key, "one", (0, 0, 1)),
                "'blend'": score(key, "one", (0.5, 0, 0.5)),
                "'blend', 8 views": score(key, "eight", (0.5, 0, 0.5)),
                "probe and ridge": score(key, "one", (0, 0.5, 0.5)),
            }
        )
    if rows:
        table = pd.DataFrame(rows).set_index("test")
        print("held-out mean r: the nested choice (views, weights of network/probe/ridge) and fixed blends")
        print(table.round(4).to_string())
        print(table.drop(columns=["choice", "seeds"]).mean().round(4).to_string())


if __name__ == "__main__":
    main()
