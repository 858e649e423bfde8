"""Nested choice of the colour ridge's weight (``colour_ridge``) for trained Hist2ST models of the her2st sections.

``--train`` trains, for the four shared sections, one model on each pair of sections (the inner models of
nested validation: a model trained on two sections serves the two splits that hold out one of the other two)
and one on each three (the outer models), all with the same preset and seed, and saves them under ``--out``
(``--part K/N`` trains every N-th of the ten, from the K-th, so that N runs share the work).

Without ``--train``, every saved model under ``--out`` gets a :class:`~st_hist2st.nn.ColourRidge` fitted on
the sections it was trained on, as :func:`st_hist2st.tl.fit` fits it with ``colour_ridge`` above 0 (the
network is the same: the ridge is fitted after it and never changes its training), and is scored with each
``--weights`` on the sections it was not trained on. Then, for each held-out section, the weight is chosen by
the inner models' mean r on the other three sections (each scored by the model trained on the other two)
and reported on the held-out section with the outer model; also the Spearman correlation between predicted
and observed Moran's I over the genes, and between the Moran's I a measurement would show (``tl.spatial_autocorr``)
and the observed one. Models trained on the same sections, here or in another ``--out``
folder (other seeds), are averaged, as :func:`st_hist2st.tl.predict` averages a list of models. The scores are
kept beside the first of them (``NAME.scores.json``, or the names joined by ``+``), so that a run can score
the models trained so far and a later one only the rest.

    python benchmarks/blend.py --train --preset wide --out runs/blend --part 0/2 &
    python benchmarks/blend.py --train --preset wide --out runs/blend --part 1/2
    python benchmarks/blend.py --out runs/blend --weights 0 0.25 0.5 0.75 1

``--rank`` and ``--trees`` fit the ridge with that ``colour_ridge_rank`` and ``colour_ridge_trees`` (``auto``:
chosen on each model's training sections, as :func:`st_hist2st.tl.fit` chooses them); the default is the
full-rank ridge without a forest, with which ``'blend'``'s weight was first chosen. Several ``--trees`` make
each forest with each weight a candidate, chosen together by the inner models:

    python benchmarks/blend.py --out runs/blend --rank auto --trees 0 auto

Outer models of other seeds, trained by ``benchmarks/her2st.py``, join the averages (inner models stay one):

    python benchmarks/her2st.py --preset wide --seed 1 --out runs/seed1
    python benchmarks/blend.py --out runs/blend runs/seed1 runs/seed2
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import logging
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from her2st import ROOT, train_models

import st_hist2st as hist2st
from st_hist2st._data._section import prepare_sections
from st_hist2st._model import fit_colour_ridge
from st_hist2st.nn import Hist2STModule, patch_features


def train(adata, genes, sections, args) -> None:
    """The inner (pairs) and outer (all but one) models, every ``N``-th from the ``K``-th of ``--part K/N``."""
    k, n = (int(x) for x in args.part.split("/"))
    jobs = [(list(pair), [s for s in sections if s not in pair][0]) for pair in itertools.combinations(sections, 2)]
    jobs += [([s for s in sections if s != test], test) for test in sections]
    settings = argparse.Namespace(
        preset=args.preset, crop_size=None, models=1, epochs=None, precision=args.precision, seed=args.seed
    )
    for fit_on, validation in jobs[k::n]:
        path = Path(args.out[0]) / "+".join(fit_on)
        if path.exists():
            continue
        t0 = time.perf_counter()
        model = train_models(adata, genes, fit_on, validation, settings, {}, args.minutes)[0]
        model.save(path)
        print(f"{path}: {len(model.history)} epochs in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)


def with_colour_ridge(model: hist2st.Hist2ST, ridge_state: dict, weight: float, trees: float = 0.0) -> hist2st.Hist2ST:
    """A copy of ``model`` whose predictions blend in the colour ridge ``ridge_state`` with ``weight``; ``trees``:
    the share of its forest (``colour_ridge_trees``), where the state holds one."""
    blended = copy.copy(model)
    blended.architecture = replace(model.architecture, colour_ridge=weight, colour_ridge_trees=trees)
    blended.module = Hist2STModule(blended.architecture)
    blended.module.load_state_dict(model.module.state_dict(), strict=False)
    if blended.module.colour_ridge is not None:
        blended.module.colour_ridge.load_state_dict(ridge_state)
    return blended


def model_sections(model: hist2st.Hist2ST, adata, libraries) -> list:
    """The ``libraries`` of ``adata`` cut as :meth:`~st_hist2st.Hist2ST.predict` cuts them for ``model`` (its
    micrometres and field of view), with the targets of its genes."""
    image_key, crop_size, crop_microns = model.prediction_inputs()
    return prepare_sections(
        adata,
        image_key,
        genes=model.genes,
        library_key="library_id",
        libraries=libraries,
        layout=model.preprocessing.get("layout", "auto"),
        crop_size=crop_size,
        crop_microns=crop_microns,
        field_of_view=model.architecture.field_of_view,
        normalize_over=model.preprocessing.get("normalize_over", "genes"),
        show_progress_bar=False,
    )


def her2st_and_saved_models(folders) -> tuple:
    """her2st, its section names, the saved models under ``folders`` grouped by the sections they were trained
    on, the first of them loaded, and every section cut as that model predicts (:func:`model_sections`)."""
    adata = hist2st.datasets.her2st(ROOT)
    sections = list(adata.obs["library_id"].cat.categories)
    groups = model_groups(folders)
    first = hist2st.Hist2ST.load(next(iter(groups.values()))[0])
    cut = {s.library_id: s for s in model_sections(first, adata, sections)}
    return adata, sections, groups, first, cut


def features_of(section) -> torch.Tensor:
    """The colour ridge's 18 features of every spot of a cut ``section``."""
    return patch_features(section.patches_of(np.arange(section.n_spots)))


def fitted_ridge(model: hist2st.Hist2ST, adata, rank: int | str | None = None, trees: float | str = 0.0):
    """A colour ridge (of ``rank``, with ``trees``, the share of its forest) fitted on the sections ``model`` was
    trained on, as :func:`st_hist2st.tl.fit` fits it."""
    ridge = hist2st.nn.ColourRidge(len(model.genes), rank, trees)
    fit_colour_ridge(ridge, model_sections(model, adata, model.preprocessing["train_libraries"]), False)
    return ridge


def model_groups(folders) -> dict[tuple[str, ...], list[Path]]:
    """The saved models under ``folders``, grouped by the sections they were trained on (seeds of one split)."""
    groups: dict[tuple[str, ...], list[Path]] = {}
    for folder in folders:
        for path in sorted(p for p in Path(folder).iterdir() if (p / "config.json").exists()):
            config = json.loads((path / "config.json").read_text())
            groups.setdefault(tuple(sorted(config["preprocessing"]["train_libraries"])), []).append(path)
    return groups


def network_prediction(adata, models, section: str):
    """``section`` of ``adata`` with the models' averaged network (no colour ridge) in ``layers['network']``, as
    :func:`st_hist2st.tl.predict` averages a list of models."""
    held = adata[adata.obs["library_id"] == section].copy()
    network = [with_colour_ridge(model, {}, 0.0) for model in models]
    hist2st.tl.predict(held, network, key_added="network", show_progress_bar=False)
    return held


def blended_scores(held, model, ridge_state, weights, trees: float = 0.0) -> dict[tuple[str, float], dict[str, float]]:
    """Mean r and Moran's I Spearman on ``held`` (a :func:`network_prediction`) of ``(1 - w)`` times its network
    plus ``w`` times the ridge (with ``trees``, the share of its forest) on ``model``'s genes, for each ``w`` of
    ``weights``, blended as a model with ``colour_ridge=w`` blends them."""
    section = held.obs["library_id"].iloc[0]
    hist2st.tl.predict(
        held, [with_colour_ridge(model, ridge_state, 1.0, trees)], key_added="ridge", show_progress_bar=False
    )
    out = {}
    for weight in weights:
        held.layers["hist2st"] = (1 - weight) * held.layers["network"] + weight * held.layers["ridge"]
        held.uns["hist2st"] = held.uns["network"]
        hist2st.tl.evaluate(held, genes=model.genes, copy=False)
        summary = held.uns["hist2st_pearson"]
        kept = ("mean_r", "moran_spearman", "moran_expected_spearman")
        out[section, weight] = {k: v for k, v in summary.items() if k in kept}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, nargs="+", help="folders of the saved models (with --train: the first)")
    parser.add_argument("--train", action="store_true", help="train the models instead of scoring them")
    parser.add_argument("--part", default="0/1", help="with --train: K/N trains every N-th model from the K-th")
    parser.add_argument("--preset", default="wide")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=45.0, help="training time budget per model")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--rank", default="full", help="the ridge's rank (colour_ridge_rank): a number, auto or full")
    parser.add_argument(
        "--trees",
        nargs="+",
        default=["0"],
        help="the shares of the ridge's forest (colour_ridge_trees) or auto; with several, each with each weight is "
        "a candidate of the nested choice",
    )
    args = parser.parse_args()
    rank = None if args.rank == "full" else args.rank if args.rank == "auto" else int(args.rank)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    genes = (ROOT / "genes_785.txt").read_text().split()
    adata = hist2st.datasets.her2st(ROOT)
    sections = list(adata.obs["library_id"].cat.categories)
    if args.train:
        train(adata, genes, sections, args)
        return
    candidates = [(trees, weight) for trees in args.trees for weight in args.weights]

    def label(candidate: tuple[str, float]) -> str:
        return f"{candidate[1]:g}" if len(args.trees) == 1 else f"forest {candidate[0]}, w {candidate[1]:g}"

    groups = model_groups(args.out)  # models trained on the same sections (seeds) are averaged
    scores = {}  # (trained on, scored on, candidate) -> held_out figures
    for trained_on, paths in groups.items():
        names = "+".join(p.name for p in paths)
        rest = [s for s in sections if s not in trained_on]
        models, network = None, {}  # the network's pass on each section, shared by every ridge
        for trees in args.trees:
            share = trees if trees == "auto" else float(trees)
            # the full-rank ridge without a forest keeps the scores' first file name
            ridge_name = "" if rank is None and share == 0 else f".rank-{args.rank}.trees-{trees}"
            kept = paths[0].with_name(f"{paths[0].name if len(paths) == 1 else names}.scores{ridge_name}.json")
            found = {tuple(k): v for k, v in json.loads(kept.read_text())} if kept.exists() else {}
            if any((section, weight) not in found for section in rest for weight in args.weights):
                models = models or [hist2st.Hist2ST.load(path) for path in paths]
                ridge = fitted_ridge(models[0], adata, rank, share)
                print(f"{names}: ridge of rank {ridge.fitted_rank or 'full'}, forest's share {ridge.fitted_trees:g}")
                for section in rest:
                    if section not in network:
                        network[section] = network_prediction(adata, models, section)
                    found.update(
                        blended_scores(
                            network[section], models[0], ridge.state_dict(), args.weights, ridge.fitted_trees
                        )
                    )
                kept.write_text(json.dumps([[list(k), v] for k, v in found.items()]))
            for section in rest:
                for weight in args.weights:
                    scores[trained_on, section, (trees, weight)] = found[section, weight]
                    print(
                        f"{names} on {section}, {label((trees, weight))}: mean r {found[section, weight]['mean_r']:.4f}"
                    )
    rows = []
    for test in sections:
        train_on = [s for s in sections if s != test]
        needed = [(tuple(train_on), test)] + [(tuple(sorted(set(train_on) - {v})), v) for v in train_on]
        if any((*key, c) not in scores for key in needed for c in candidates):
            print(f"test {test}: skipped, its outer or inner models are not all under --out", flush=True)
            continue
        inner = {
            c: np.mean([scores[tuple(sorted(set(train_on) - {v})), v, c]["mean_r"] for v in train_on])
            for c in candidates
        }
        chosen = max(inner, key=inner.get)
        outer = {c: scores[tuple(train_on), test, c] for c in candidates}
        print(f"test {test}: inner r by " + ", ".join(f"{label(c)} {r:.4f}" for c, r in inner.items()), flush=True)
        network = [c for c in candidates if c[1] == 0.0]
        rows.append(
            {
                "test": test,
                "chosen": label(chosen),
                "hist2st": outer[network[0]]["mean_r"] if network else np.nan,
                "blended": outer[chosen]["mean_r"],
                "moran_spearman": outer[chosen]["moran_spearman"],
                "moran_expected": outer[chosen].get("moran_expected_spearman", np.nan),
                **{label(c) if len(args.trees) > 1 else f"w={label(c)}": outer[c]["mean_r"] for c in candidates},
            }
        )
    if not rows:
        return
    table = pd.DataFrame(rows).set_index("test")
    print(table.round(4).to_string())
    print("mean: " + ", ".join(f"{k} {v:.4f}" for k, v in table.drop(columns="chosen").mean().items()))


if __name__ == "__main__":
    main()
