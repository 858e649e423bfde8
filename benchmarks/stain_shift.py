"""How the default's parts hold up on a section stained unlike the sections it was trained on.

Another lab's haematoxylin and eosin, or another scanner, change the colour of a whole slide. Here each held-out
her2st section's image is restained as a whole (:func:`st_hist2st.nn._augment.restain`: haematoxylin and
eosin each multiplied by ``1 - s`` or ``1 + s``, the four corners, ``--strength`` s) and predicted by the saved
outer models of ``benchmarks/blend.py`` (trained on the other three sections): the network alone, the colour
model of ``'blend'`` alone (ridge and forest, rank and forest chosen as :func:`st_hist2st.tl.fit` chooses them)
and the blend of the two (``--weight``, ``'blend'``'s 0.75). The colour model reads its features three ways:
as they are (``'blend'``), standardised within each section, or from the patches with each section's stains
mapped onto the training sections' mean (``colour_ridge_stains=True``, as :func:`st_hist2st.tl.fit` and
:func:`st_hist2st.tl.predict` do it). Which of the three is chosen by nested validation on the sections as
they are: for each held-out section, by the blend's mean r on the other three, each scored by the inner model
trained on the other two (``runs/pairs``).

    python benchmarks/stain_shift.py --out runs/pairs runs/wide

Prints, per held-out section and stain, the mean Pearson r over the genes of each, and the four-split means.
``--timing`` instead times the mapping on 2,048 patches of B4 (one thread: ``OMP_NUM_THREADS=1``): the stain
estimate, and the colour features with and without the mapped stains.

    OMP_NUM_THREADS=1 python benchmarks/stain_shift.py --out runs/wide --timing
"""

from __future__ import annotations

import argparse
import itertools
import logging
import time
import warnings

import numpy as np
import pandas as pd
import torch
from blend import model_groups, model_sections, network_prediction
from her2st import ROOT

import st_hist2st as hist2st
from st_hist2st._inference import section_stains, statistics_sample
from st_hist2st._model import fit_colour_ridge
from st_hist2st.nn import ColourRidge, patch_features
from st_hist2st.nn._augment import restain
from st_hist2st.nn._stains import stain_estimate, stain_normalised

FEATURES = ("as is", "per section", "stain-normalised")


def restained_image(image: np.ndarray, haematoxylin: float, eosin: float, rows: int = 512) -> np.ndarray:
    """A ``(H, W, 3)`` uint8 image with its haematoxylin and eosin multiplied by the factors, ``rows`` at a time."""
    scale = torch.tensor([[haematoxylin, eosin, 1.0]])
    out = np.empty_like(image)
    for start in range(0, image.shape[0], rows):
        part = torch.from_numpy(image[start : start + rows].copy()).permute(2, 0, 1).unsqueeze(0)
        out[start : start + rows] = restain(part, scale, torch.zeros(1, 3))[0].permute(1, 2, 0).numpy()
    return out


def held_section(adata, section: str, stain: tuple[float, float] | None):
    """``section`` of ``adata`` alone, its images restained with ``stain`` (haematoxylin, eosin factors)."""
    held = adata[adata.obs["library_id"] == section].copy()
    spatial = held.uns["spatial"][section]
    images = spatial["images"]
    if stain is not None:
        images = {key: restained_image(np.asarray(image), *stain) for key, image in images.items()}
    held.uns["spatial"] = {section: {**spatial, "images": images}}
    return held


def section_features(model, adata, libraries) -> list[tuple]:
    """``(section, patches, features)`` of each of ``libraries``, cut as ``model`` predicts."""
    out = []
    for section in model_sections(model, adata, libraries):
        patches = section.patches_of(np.arange(section.n_spots))
        out.append((section, patches, patch_features(patches)))
    return out


def standardised(features: torch.Tensor) -> torch.Tensor:
    """``features`` standardised over their spots (one section's)."""
    return (features - features.mean(0)) / features.std(0, correction=0).clamp_min(1e-6)


def fitted_colour_models(model, adata) -> dict[str, ColourRidge]:
    """``'blend'``'s colour model fitted on ``model``'s training sections, on each kind of :data:`FEATURES`; the
    stain-normalised one as :func:`st_hist2st.tl.fit` fits it (``colour_ridge_stains=True``)."""
    train = section_features(model, adata, model.preprocessing["train_libraries"])
    targets = torch.cat([section.targets for section, _, _ in train])
    names = np.repeat([section.library_id for section, _, _ in train], [section.n_spots for section, _, _ in train])
    out = {}
    for kind, read in (("as is", lambda f: f), ("per section", standardised)):
        features = torch.cat([read(f) for _, _, f in train])
        out[kind] = ColourRidge(len(model.genes), "auto", "auto").fit(features, targets, names)
    out["stain-normalised"] = ColourRidge(len(model.genes), "auto", "auto", stains=True)
    fit_colour_ridge(out["stain-normalised"], [section for section, _, _ in train], show_progress_bar=False)
    return out


def colour_prediction(ridges: dict[str, ColourRidge], model, held) -> dict[str, np.ndarray]:
    """Each colour model's predictions for the one section of ``held``, ``(n_obs, n_vars)`` as its layers; the
    stain-normalised one reads the section as :func:`st_hist2st.tl.predict` does."""
    ((section, patches, features),) = section_features(model, held, list(held.uns["spatial"]))
    mapped = ridges["stain-normalised"]
    stains = section_stains(mapped, patches[statistics_sample(section.n_spots)])
    read = {
        "as is": features,
        "per section": standardised(features),
        "stain-normalised": mapped.features(patches, stains),
    }
    out = {}
    with torch.inference_mode():
        for kind, ridge in ridges.items():
            predicted = np.full(held.shape, np.nan, dtype=np.float32)  # NaN for genes not predicted, as tl.predict
            predicted[np.ix_(section.obs_index, held.var_names.get_indexer(model.genes))] = ridge(read[kind]).numpy()
            out[kind] = predicted
    return out


def scores(held, genes, predicted: np.ndarray) -> dict[str, float]:
    """Mean r and Moran's I Spearman of ``predicted`` on ``held`` (a :func:`network_prediction`)."""
    held.layers["hist2st"] = predicted
    held.uns["hist2st"] = held.uns["network"]
    hist2st.tl.evaluate(held, genes=genes, copy=False)
    summary = held.uns["hist2st_pearson"]
    return {"mean_r": summary["mean_r"], "moran": summary["moran_spearman"]}


def timing(model, adata, n: int = 2048, repeats: int = 2) -> None:
    """Print the time of the stain estimate and of the features with and without mapped stains on ``n`` patches."""
    torch.set_num_threads(1)
    (section,) = model_sections(model, adata, ["B4"])
    patches = section.patches_of(np.arange(section.n_spots)).repeat(-(-n // section.n_spots), 1, 1, 1)[:n]
    for _ in range(repeats):
        t0 = time.perf_counter()
        estimate = stain_estimate(patches)
        t1 = time.perf_counter()
        patch_features(patches)
        t2 = time.perf_counter()
        patch_features(stain_normalised(patches, estimate, estimate))
        t3 = time.perf_counter()
        print(
            f"{n} patches, one thread: stain estimate {t1 - t0:.2f} s; features {t2 - t1:.2f} s, with mapped stains "
            f"{t3 - t2:.2f} s ({(t3 - t2) / (t2 - t1):.2f}x)",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, nargs="+", help="folders of the saved inner and outer models")
    parser.add_argument("--strength", type=float, default=0.2, help="each stain multiplied by 1 - s or 1 + s")
    parser.add_argument("--weight", type=float, default=0.75, help="the colour model's weight in the blend")
    parser.add_argument("--timing", action="store_true", help="time the stain mapping instead")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    adata = hist2st.datasets.her2st(ROOT)
    sections = list(adata.obs["library_id"].cat.categories)
    groups = model_groups(args.out)
    if args.timing:
        timing(hist2st.Hist2ST.load(next(iter(groups.values()))[0]), adata)
        return
    w, s = args.weight, args.strength
    stains = [None, *itertools.product((1 - s, 1 + s), repeat=2)]

    def stain_name(stain) -> str:
        return "as scanned" if stain is None else f"H x{stain[0]:g}, E x{stain[1]:g}"

    inner: dict[tuple, float] = {}  # (held-out, inner section, kind) -> the blend's mean r there
    rows = []
    for test in sections:
        t0 = time.perf_counter()
        train_on = [x for x in sections if x != test]
        for v in train_on:
            paths = groups[tuple(sorted(set(train_on) - {v}))]
            models = [hist2st.Hist2ST.load(p) for p in paths]
            ridges = fitted_colour_models(models[0], adata)
            held = network_prediction(held_section(adata, v, None), models, v)
            for kind, colour in colour_prediction(ridges, models[0], held).items():
                inner[test, v, kind] = scores(held, models[0].genes, (1 - w) * held.layers["network"] + w * colour)[
                    "mean_r"
                ]
        choice = {kind: np.mean([inner[test, v, kind] for v in train_on]) for kind in FEATURES}
        chosen = max(choice, key=choice.get)
        print(f"test {test}: inner blend r " + ", ".join(f"{k} {r:.4f}" for k, r in choice.items()), flush=True)
        models = [hist2st.Hist2ST.load(p) for p in groups[tuple(train_on)]]
        ridges = fitted_colour_models(models[0], adata)
        for stain in stains:
            held = network_prediction(held_section(adata, test, stain), models, test)
            colour = colour_prediction(ridges, models[0], held)
            row = {"test": test, "stain": stain_name(stain), "chosen": chosen}
            figures = {"network": scores(held, models[0].genes, held.layers["network"])}
            for kind, predicted in colour.items():
                figures[f"colour, {kind}"] = scores(held, models[0].genes, predicted)
                figures[f"blend, {kind}"] = scores(
                    held, models[0].genes, (1 - w) * held.layers["network"] + w * predicted
                )
            row.update({name: f["mean_r"] for name, f in figures.items()})
            row["blend, chosen"] = figures[f"blend, {chosen}"]["mean_r"]
            row["Moran, blend chosen"] = figures[f"blend, {chosen}"]["moran"]
            rows.append(row)
            print(pd.Series(row).to_string(), flush=True)
        print(f"test {test}: {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 250)
    print(table.round(4).to_string(index=False))
    numeric = table.drop(columns=["test", "chosen"])
    print("mean over the four held-out sections, by stain:")
    print(numeric.groupby("stain", sort=False).mean().round(4).to_string())


if __name__ == "__main__":
    main()
