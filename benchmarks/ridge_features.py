"""Would other features make the colour ridge of ``colour_ridge`` a better partner for the network?

For the models saved by ``benchmarks/blend.py`` (inner and outer, one or more seeds), fits ridge regressions
on variants of the 18 features of :func:`~st_hist2st.nn.patch_features` and scores the blend
``(1 - w) * network + w * ridge`` on the sections each model was not trained on, under the nested protocol:
the variant and the weight are chosen together by the inner models' mean r on the three training sections of
a split, and only then scored on its held-out section. The variants add, to the 18 features of the network's
wide patch: the same 18 on the spot's own quarter of the patch (``spot``) or its central half (``half``);
optical-density statistics after separating haematoxylin and eosin by colour deconvolution (Ruifrok
and Johnston's stain vectors, ``stains``); 8-bin histograms of each channel (``histograms``); the 18 averaged over the spot's
neighbours on the spot graph (``neighbours``); the four texture features of the patch at half and at a quarter of
its resolution (``coarser textures``); and, on the 18 alone, a penalty chosen per gene (``per-gene penalty``), all
products of two features (``pairs``), or features standardised over each section's own spots before the fit and
the prediction (``per-section``), as ``section_norm`` standardises the network's input.

    python benchmarks/ridge_features.py --out runs/blend runs/seed1 runs/seed2
"""

from __future__ import annotations

import argparse
import logging
import warnings

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from blend import her2st_and_saved_models, with_colour_ridge
from her2st import mean_r
from sklearn.linear_model import RidgeCV
from sklearn.preprocessing import PolynomialFeatures

import st_hist2st as hist2st
from st_hist2st.nn import patch_features
from st_hist2st.nn._colour_ridge import ALPHAS

#: Optical-density directions of haematoxylin, eosin and DAB (Ruifrok and Johnston's, as in scikit-image's
#: ``rgb_from_hed``), as rows; DAB, absent from H&E, takes up what the other two do not explain.
STAINS = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
STAINS = STAINS / np.linalg.norm(STAINS, axis=1, keepdims=True)

#: Feature blocks of each variant, and how its ridge is fitted.
VARIANTS = {
    "18 features (the package's)": (["base"], ""),
    "+ spot quarter": (["base", "spot"], ""),
    "+ central half": (["base", "half"], ""),
    "+ stains": (["base", "stains"], ""),
    "+ histograms": (["base", "histograms"], ""),
    "+ neighbours": (["base", "neighbours"], ""),
    "per-gene penalty": (["base"], "per-gene"),
    "pairs": (["base"], "pairs"),
    "+ coarser textures": (["base", "coarse"], ""),
    "per-section": (["base"], "per-section"),
}


def stain_features(patches: torch.Tensor) -> torch.Tensor:
    """Mean and standard deviation of each stain's density, the fraction of pixels dense in haematoxylin and in
    eosin (above 0.5), and the mean total optical density: ``(n, 9)``."""
    density = -torch.log((patches.float() + 1) / 256).permute(0, 2, 3, 1).flatten(1, 2)
    stains = density @ torch.as_tensor(np.linalg.inv(STAINS), dtype=torch.float32)
    return torch.cat(
        [
            stains.mean(1),
            stains.std(1),
            (stains[..., :2] > 0.5).float().mean(1),
            density.sum(-1).mean(1, keepdim=True),
        ],
        dim=1,
    )


def channel_histograms(patches: torch.Tensor) -> torch.Tensor:
    """An 8-bin histogram of each channel: ``(n, 24)``."""
    bins = patches.long() // 32
    return torch.cat([F.one_hot(bins[:, c].flatten(1), 8).float().mean(1) for c in range(3)], dim=1)


def centre(patches: torch.Tensor, fraction: float) -> torch.Tensor:
    """The central ``fraction`` of each patch's side."""
    side = patches.shape[-1]
    keep = round(side * fraction)
    start = (side - keep) // 2
    return patches[..., start : start + keep, start : start + keep].contiguous()


def neighbour_mean(features: np.ndarray, edge_index: np.ndarray) -> np.ndarray:
    """Each spot's mean of ``features`` over its neighbours (its own where it has none)."""
    sums, counts = np.zeros_like(features), np.zeros(len(features))
    np.add.at(sums, edge_index[1], features[edge_index[0]])
    np.add.at(counts, edge_index[1], 1)
    return np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], features)


def feature_blocks(section) -> dict[str, np.ndarray]:
    """Every block of features of one section's spots."""
    patches = section.patches_of(np.arange(section.n_spots))
    base = patch_features(patches).numpy()
    return {
        "base": base,
        "spot": patch_features(centre(patches, 0.25)).numpy(),
        "half": patch_features(centre(patches, 0.5)).numpy(),
        "stains": stain_features(patches).numpy(),
        "histograms": channel_histograms(patches).numpy(),
        "neighbours": neighbour_mean(base, section.edge_index.numpy()),
        "coarse": np.concatenate(
            [patch_features(F.avg_pool2d(patches.float(), k)).numpy()[:, -4:] for k in (2, 4)], axis=1
        ),
    }


def ridge_predictions(blocks, targets, trained_on, section, variant) -> np.ndarray:
    """Predictions on ``section`` of a ridge of ``variant`` fitted on the ``trained_on`` sections."""
    names, mode = VARIANTS[variant]

    def section_features(s: str) -> np.ndarray:
        x = np.concatenate([blocks[s][b] for b in names], 1).astype(np.float64)
        return (x - x.mean(0)) / (x.std(0) + 1e-8) if mode == "per-section" else x

    x = np.concatenate([section_features(s) for s in trained_on])
    y = np.concatenate([targets[s] for s in trained_on]).astype(np.float64)
    x_test = section_features(section)
    mean, scale = x.mean(0), x.std(0) + 1e-8
    x, x_test = (x - mean) / scale, (x_test - mean) / scale
    if mode == "pairs":
        expand = PolynomialFeatures(2, include_bias=False).fit(x)
        x, x_test = expand.transform(x), expand.transform(x_test)
        mean, scale = x.mean(0), x.std(0) + 1e-8
        x, x_test = (x - mean) / scale, (x_test - mean) / scale
    alphas = ALPHAS if mode in ("", "per-section") else np.logspace(-2, 5, 15)
    return RidgeCV(alphas=alphas, alpha_per_target=mode == "per-gene").fit(x, y).predict(x_test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, nargs="+", help="folders of the saved models")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0])
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    adata, sections, groups, first, cut = her2st_and_saved_models(args.out)
    blocks = {name: feature_blocks(section) for name, section in cut.items()}
    targets = {name: section.targets.numpy() for name, section in cut.items()}
    scores = {}  # (trained on, scored on, variant, weight) -> mean r
    for trained_on, paths in groups.items():
        network = [with_colour_ridge(hist2st.Hist2ST.load(path), {}, 0.0) for path in paths]
        for section in (s for s in sections if s not in trained_on):
            held = adata[adata.obs["library_id"] == section].copy()
            hist2st.tl.predict(held, network, show_progress_bar=False)
            spots = adata.obs_names[cut[section].obs_index]
            net = np.asarray(held[spots, first.genes].layers["hist2st"], dtype=np.float64)
            scores[trained_on, section, "", 0.0] = mean_r(net, targets[section])
            for variant in VARIANTS:
                ridge = ridge_predictions(blocks, targets, trained_on, section, variant)
                for w in args.weights:
                    scores[trained_on, section, variant, w] = mean_r((1 - w) * net + w * ridge, targets[section])
            print(f"{'+'.join(trained_on)} ({len(paths)} models) on {section} scored", flush=True)
    rows = []
    for test in sections:
        train_on = tuple(s for s in sections if s != test)
        inner_keys = [(tuple(sorted(set(train_on) - {v})), v) for v in train_on]
        if any((*key, "", 0.0) not in scores for key in [(train_on, test), *inner_keys]):
            print(f"test {test}: skipped, its outer or inner models are not all under --out")
            continue
        inner = {(v, w): np.mean([scores[(*k, v, w)] for k in inner_keys]) for v in VARIANTS for w in args.weights}
        variant, weight = max(inner, key=inner.get)
        rows.append(
            {
                "test": test,
                "choice": f"{variant}, w={weight:g}",
                "chosen": scores[train_on, test, variant, weight],
                "network": scores[train_on, test, "", 0.0],
                **{v: scores[train_on, test, v, 0.5] for v in VARIANTS},
            }
        )
    if rows:
        table = pd.DataFrame(rows).set_index("test")
        print("held-out mean r: the nested choice, the network alone, and each variant blended at w=0.5")
        print(table.round(4).to_string())
        print(table.drop(columns="choice").mean().round(4).to_string())


if __name__ == "__main__":
    main()
