"""Accuracy on real data: train on three shared her2st sections, test on the fourth.

Prints, per held-out section, the mean Pearson r over the 785 genes of ``genes_785.txt`` for Hist2ST and
for the ridge baselines of the nested report below (colour at the spot; colour and texture at the spot and on
a 4 times wider crop; the wider crop alone, and its ridge kept to rank 5 as ``'blend'``'s colour ridge is); for
the (averaged) models also the
Spearman correlation between predicted and observed Moran's I over the genes (and between the Moran's I a
measurement would show, by ``tl.spatial_autocorr``, and the observed one) and, for models trained with a ZINB
term, the coverage of their 80 % and 95 % predictive intervals.

    python benchmarks/her2st.py --test C3 --minutes 30 --preset fast

A training that takes longer than one sitting (``--preset paper`` on a CPU: about a minute per epoch) can be
stopped and continued: with ``--checkpoints DIR`` each model's training state is written to
``DIR/{held-out}_seed{seed}`` after every epoch, and the same command run again continues from there. Lightning
keeps the time already spent in the checkpoint, so ``--minutes`` is the budget of all sittings together.

    python benchmarks/her2st.py --test B4 --preset paper --minutes 120 --checkpoints runs/paper --out runs/paper
    python benchmarks/her2st.py --test B4 --preset paper --minutes 240 --checkpoints runs/paper --out runs/paper

The models crop the paper's 112 pixels around each spot (``--crop-size``), except where the preset (``'wide'``,
or the package's default ``'blend'``) or ``--set`` gives a ``field_of_view``: then they crop that many spot
diameters.

With ``--nested``, settings are chosen without looking at the held-out section: for each split, every
``--candidate`` is trained on two of the three training sections and scored on the third (each in turn), the
candidate with the best mean inner r is trained on all three, and only then scored on the held-out section.
A model trained on two sections serves the two splits that hold out one of the other two (each is scored on
the remaining one there), so each candidate trains once per pair of sections: 6 times for 4 sections, not 12.
``--inner-cache DIR`` keeps each inner training's scores, so that runs (one per candidate, in parallel) can
share them and a later run reads them instead of training again; ``--inner-only`` stops after the choices.
It prints, per split, each candidate's inner r, the choice, its held-out r (the average of ``--models``
models), the Spearman correlation between predicted (and expected measured) and observed Moran's I over the
genes, for models with
a ZINB head the coverage of their 80 % and 95 % predictive intervals, with ``--paper-minutes`` the held-out r
of one ``'paper'`` model trained for 350 epochs or that many minutes, and two ridge
baselines: colour features at the spot (14: mean and standard deviation per channel, an 8-bin grey
histogram), and colour with texture (Sobel gradient magnitude mean and standard deviation, variance of the
Laplacian, fraction of dark pixels) at the spot and on a 4 times wider crop (36 features), and the same 18
features on the wider crop alone (which the spot's own features only dilute on these sections), also with its
predictions projected onto the 5 leading principal components of the training expression (the rank of
``'blend'``'s colour ridge; a stronger baseline than the others on these sections).

    python benchmarks/her2st.py --nested --candidate fast= --candidate zinb=zinb=0.25,init_zinb_bias=true \
        --candidate wide=field_of_view=4,dihedral=true,crop_size=null --models 3 --paper-minutes 30 \
        --precision bf16-mixed
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import st_hist2st as hist2st
from st_hist2st._data._targets import expression_targets
from st_hist2st._training_run import LAST_CHECKPOINT
from st_hist2st.nn import patch_features
from st_hist2st.nn._colour_ridge import reduced_rank, standardised_ridge
from st_hist2st.nn._plan import pearson_per_gene
from st_hist2st.nn._training import preset

ROOT = Path(os.environ.get("HIST2ST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "her2st"))
#: The paper's crop on her2st, in full-resolution pixels: the ridge baselines' spot crop.
PAPER_CROP = 112.0


def colour_texture_features(patches: np.ndarray) -> np.ndarray:
    """18 per patch, those of the package's colour ridge (:func:`st_hist2st.nn.patch_features`): 14 of colour
    (mean and standard deviation of each channel, an 8-bin histogram of the grey level), then 4 of texture
    (mean and standard deviation of the Sobel gradient magnitude, variance of the Laplacian, fraction of dark
    pixels)."""
    return patch_features(torch.from_numpy(patches)).numpy()


def ridge_r(feats, y, tr, te, rank: int | None = None) -> tuple[float, np.ndarray]:
    """Held-out r and predictions of a ridge fitted on the ``tr`` spots; with a ``rank``, its predictions are
    projected onto that many principal components of the training targets, as ``colour_ridge_rank`` does."""
    feats, y = np.asarray(feats, dtype=np.float64), np.asarray(y, dtype=np.float64)
    mu, sd, weight, bias, _ = standardised_ridge(feats[tr], y[tr])
    weight, bias = reduced_rank(weight, bias, y[tr], rank)
    pred = (feats[te] - mu) / sd @ weight.T + bias
    return mean_r(pred, y[te]), pred


def ridge_baselines(adata, genes, train, test, crop_size) -> dict[str, float]:
    """Held-out r of the ridge baselines of the nested report (and of the wide crop's ridge of rank 5, the rank
    of ``'blend'``'s colour ridge)."""
    spot = hist2st.pp.extract_patches(adata, "fullres", crop_size=crop_size, show_progress_bar=False)
    wide = hist2st.pp.extract_patches(adata, "fullres", crop_size=4 * crop_size, show_progress_bar=False)
    at_spot = colour_texture_features(spot)
    colour = at_spot[:, :14]
    wide_only = colour_texture_features(wide)
    both = np.concatenate([at_spot, wide_only], axis=1)
    y = targets(adata, genes)
    tr = adata.obs["library_id"].isin(train).to_numpy()
    te = (adata.obs["library_id"] == test).to_numpy()
    return {
        "colour": ridge_r(colour, y, tr, te)[0],
        "colour+texture, 2 crops": ridge_r(both, y, tr, te)[0],
        "colour+texture, wide crop": ridge_r(wide_only, y, tr, te)[0],
        "colour+texture, wide crop, rank 5": ridge_r(wide_only, y, tr, te, rank=5)[0],
    }


def targets(adata, genes):
    counts = adata[:, genes].X.toarray()
    out = np.zeros_like(counts, dtype=np.float32)
    for lib in adata.obs["library_id"].cat.categories:
        idx = (adata.obs["library_id"] == lib).to_numpy()
        out[idx] = expression_targets(counts[idx])
    return out


def mean_r(pred, obs) -> float:
    r = pearson_per_gene(torch.as_tensor(pred), torch.as_tensor(obs)).numpy()
    return float(np.nanmean(r))


class PrintEpochs:
    """Lightning callback that prints each epoch's history row."""

    def __new__(cls):
        import lightning as L

        class _Print(L.Callback):
            def on_train_epoch_end(self, trainer, module):
                if module.history:
                    row = module.history[-1]
                    print("  " + " ".join(f"{k}={v:.4g}" for k, v in row.items()), flush=True)

        return _Print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test", nargs="*", default=None, help="held-out sections (default: each in turn)")
    parser.add_argument("--minutes", type=float, default=30.0, help="training time budget per split")
    parser.add_argument("--preset", default="fast")
    parser.add_argument(
        "--epochs", type=int, default=None, help="epochs of the learning-rate schedule (default: the preset's)"
    )
    parser.add_argument(
        "--crop-size",
        type=float,
        default=None,
        help="the spot crop in full-resolution pixels of the ridge baselines and, unless the preset or --set sets "
        f"a field_of_view, of the models (default {PAPER_CROP:g}, the paper's)",
    )
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the order of sections")
    parser.add_argument("--set", nargs="*", default=[], help="model settings, e.g. learning_rate=3e-4 bake=1")
    parser.add_argument(
        "--models",
        type=int,
        default=1,
        help="train this many models (seeds seed, seed+1, ...) within the budget and "
        "also report the average of their predictions",
    )
    parser.add_argument(
        "--out", default=None, help="write the training history and the trained model of each split here"
    )
    parser.add_argument(
        "--checkpoints",
        default=None,
        metavar="DIR",
        help="write each model's training state here after every epoch and continue from it when run again "
        "(--minutes then counts the earlier runs' time too); not with --nested",
    )
    parser.add_argument(
        "--nested", action="store_true", help="choose among --candidate by inner leave-one-out, then report"
    )
    parser.add_argument(
        "--candidate",
        action="append",
        default=[],
        metavar="NAME=KEY=VALUE,...",
        help="a candidate for --nested: a name and settings on top of --preset and --set ('fast=' alone: none); "
        "crop_size=448 crops wider than --crop-size, which stays the ridge baselines' spot crop",
    )
    parser.add_argument(
        "--inner-cache",
        default=None,
        metavar="DIR",
        help="with --nested, keep each inner training's scores here and reuse them (runs in parallel may share it)",
    )
    parser.add_argument(
        "--inner-only", action="store_true", help="with --nested, stop after the inner scores and the choices"
    )
    parser.add_argument(
        "--paper-minutes",
        type=float,
        default=0,
        help="with --nested, also train one 'paper' model per split for its 350 epochs or this many minutes",
    )
    args = parser.parse_args()
    if args.checkpoints and args.nested:
        parser.error("--checkpoints is for single trainings: --nested trains many candidates on the same sections")
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    settings = {
        k: json.loads(v) if v[0].isdigit() or v[0] in "-[{tfn" else v for k, v in (s.split("=") for s in args.set)
    }
    genes = (ROOT / "genes_785.txt").read_text().split()
    adata = hist2st.datasets.her2st(ROOT)
    sections = list(adata.obs["library_id"].cat.categories)
    if args.nested:
        nested(adata, genes, sections, args, settings)
        return
    print(f"her2st sections {sections}: {adata.n_obs} spots; {len(genes)} genes; budget {args.minutes} min per split")
    print(f"preset {args.preset!r} with {settings}")
    for test in args.test or sections:
        train = [s for s in sections if s != test]
        t0 = time.perf_counter()
        models = train_models(
            adata, genes, train, test, args, settings, args.minutes, [PrintEpochs()], checkpoints=args.checkpoints
        )
        minutes = (time.perf_counter() - t0) / 60
        held = adata[adata.obs["library_id"] == test].copy()
        observed = targets(held, genes)
        columns = held.var_names.get_indexer(genes)
        bases = ridge_baselines(adata, genes, train, test, args.crop_size or PAPER_CROP)
        print(
            f"test {test}: {len(models)} model(s) in {minutes:.1f} min; ridges: "
            + ", ".join(f"{k} {v:.4f}" for k, v in bases.items())
        )
        for tta in (False, True):
            views = "8 views" if tta else "plain"
            for k, model in enumerate(models):
                hist2st.tl.predict(held, model, test_time_augmentation=tta, show_progress_bar=False)
                r = mean_r(held.layers["hist2st"][:, columns], observed)
                print(
                    f"test {test}: Hist2ST seed {args.seed + k}, {views}: mean r = {r:.4f} after "
                    f"{len(model.history)} epochs",
                    flush=True,
                )
            if len(models) > 1:
                hist2st.tl.predict(held, models, test_time_augmentation=tta, show_progress_bar=False)
                r = mean_r(held.layers["hist2st"][:, columns], observed)
                print(f"test {test}: Hist2ST average of {len(models)} models, {views}: mean r = {r:.4f}", flush=True)
        scores = held_out(adata, genes, models, test)
        print(
            f"test {test}: Hist2ST {'average of the models' if len(models) > 1 else 'model'}: "
            + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()),
            flush=True,
        )
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            for k, model in enumerate(models):
                model.history.to_json(Path(args.out) / f"history_{test}_seed{args.seed + k}.json", orient="records")
                model.save(Path(args.out) / f"model_{test}_seed{args.seed + k}")


def parse_candidates(specs: list[str]) -> dict[str, dict]:
    """``NAME=KEY=VALUE,KEY=VALUE`` specs as named settings; a bare ``NAME=`` is the preset as it is."""
    candidates = {}
    for spec in specs or ["preset="]:
        name, _, rest = spec.partition("=")
        pairs = [item.split("=", 1) for item in rest.split(",") if item]
        candidates[name] = {k: json.loads(v) if v[0].isdigit() or v[0] in "-[{tfn" else v for k, v in pairs}
    return candidates


def model_crop(args, settings: dict) -> float | None:
    """The models' crop side: ``crop_size`` of the settings (which they lose), else ``--crop-size``, else none
    where the preset or the settings give a field of view (crops of that many spot diameters), else the paper's."""
    if "crop_size" in settings:
        return settings.pop("crop_size")
    if args.crop_size is not None:
        return args.crop_size
    arch, _ = preset(args.preset, **settings)
    return None if arch.get("field_of_view", 1) != 1 else PAPER_CROP


def train_models(adata, genes, train, validation, args, settings, minutes, callbacks=(), checkpoints=None) -> list:
    """``--models`` models (seeds ``--seed``, ``--seed`` + 1, ...) on ``train`` within ``minutes``; with a
    ``checkpoints`` folder, each keeps its training state there and continues the one it finds."""
    models, t0 = [], time.perf_counter()
    settings = dict(settings)
    crop_size = model_crop(args, settings)
    for k in range(args.models):
        left = minutes - (time.perf_counter() - t0) / 60
        keep = adata.obs["library_id"].isin([*train, validation]).to_numpy()
        subset = adata if keep.all() else adata[keep]  # a view: a copy would copy every full-resolution image
        state = {}
        if checkpoints:
            folder = Path(checkpoints) / f"{validation}_seed{args.seed + k}"
            state = {"checkpoint_dir": folder, "resume": folder if (folder / LAST_CHECKPOINT).exists() else None}
            if state["resume"]:
                print(f"continuing the training saved in {folder}", flush=True)
        models.append(
            hist2st.tl.fit(
                subset,
                "fullres",
                genes=genes,
                crop_size=crop_size,
                validation_libraries=[validation],
                preset=args.preset,
                max_epochs=args.epochs,
                precision=args.precision,
                seed=args.seed + k,
                show_progress_bar=False,
                trainer_kwargs={
                    "max_time": {"minutes": max(left, 0.01) / (args.models - k)},
                    "callbacks": list(callbacks),
                },
                **state,
                **settings,
            )
        )
    return models


def held_out(adata, genes, models, section) -> dict[str, float]:
    """Mean r of the models' averaged prediction on ``section``, the Spearman of its Moran's I and of the
    Moran's I a measurement would show (``tl.spatial_autocorr``) with the measured one and, for models with a
    ZINB head, the coverage of the 80 % and 95 % predictive intervals."""
    held = adata[adata.obs["library_id"] == section].copy()
    uncertainty = all(m.training.zinb > 0 for m in models)
    hist2st.tl.predict(held, models, uncertainty=uncertainty, show_progress_bar=False)
    hist2st.tl.evaluate(held, genes=genes, copy=False)
    summary = held.uns["hist2st_pearson"]
    kept = ("mean_r", "moran_spearman", "moran_expected_spearman", "coverage80", "coverage95")
    return {k: v for k, v in summary.items() if k in kept}


def paper_args(args) -> argparse.Namespace:
    """``args`` for one model of the ``'paper'`` preset, trained to its 350 epochs or ``--paper-minutes``."""
    return argparse.Namespace(**{**vars(args), "preset": "paper", "models": 1, "epochs": None})


#: Scores of the inner trainings of this run, by their settings and sections (``--inner-cache`` keeps them on disk).
INNER_SCORES: dict[str, dict[str, float]] = {}


def inner_scores(adata, genes, sections, fit_on, args, settings, cache) -> dict[str, float]:
    """Mean r on each section outside ``fit_on`` of the models trained on ``fit_on`` (read from ``cache`` if there).

    One training serves two splits: a model trained on two sections is an inner model of both splits that
    hold out one of the other two, and is scored there on the other one. The choice for a split never reads
    a score on its held-out section.
    """
    key = json.dumps([args.preset, args.epochs, args.precision, args.seed, args.models, settings, sorted(fit_on)])
    path = Path(cache) / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.json" if cache else None
    if key not in INNER_SCORES and path is not None and path.exists():
        INNER_SCORES[key] = json.loads(path.read_text())["scores"]
    if key in INNER_SCORES:
        return INNER_SCORES[key]
    rest = [s for s in sections if s not in fit_on]
    models = train_models(adata, genes, fit_on, rest[0], args, settings, args.minutes)
    scores = {section: held_out(adata, genes, models, section)["mean_r"] for section in rest}
    epochs = [len(model.history) for model in models]
    print(
        f"inner models on {'+'.join(fit_on)}: {epochs} epochs; " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
    )
    INNER_SCORES[key] = scores
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"key": key, "scores": scores, "epochs": epochs}))
    return scores


def nested(adata, genes, sections, args, settings) -> None:
    """Nested validation: candidates chosen on the training sections alone, reported on the held-out one."""
    candidates = parse_candidates(args.candidate)
    print(f"nested validation over {len(candidates)} candidate(s): {candidates}; {args.minutes} min per model set")
    rows = []
    for test in args.test or sections:
        train = [s for s in sections if s != test]
        inner = {}
        for name, extra in candidates.items():
            scores = []
            for validation in train:
                fit_on = [s for s in train if s != validation]
                found = inner_scores(adata, genes, sections, fit_on, args, {**settings, **extra}, args.inner_cache)
                scores.append(found[validation])
            inner[name] = float(np.mean(scores))
            print(
                f"test {test}: candidate {name!r} inner r {inner[name]:.4f} ({', '.join(f'{x:.4f}' for x in scores)})",
                flush=True,
            )
        chosen = max(inner, key=inner.get)
        if args.inner_only:
            print(f"test {test}: chosen {chosen!r}", flush=True)
            continue
        models = train_models(adata, genes, train, test, args, {**settings, **candidates[chosen]}, args.minutes)
        scores = held_out(adata, genes, models, test)
        bases = ridge_baselines(adata, genes, train, test, args.crop_size or PAPER_CROP)
        row = {"test": test, "chosen": chosen, "hist2st": scores.pop("mean_r"), **scores, **bases}
        if args.paper_minutes:
            paper = paper_args(args)
            model = train_models(adata, genes, train, test, paper, {}, args.paper_minutes)
            row["paper"] = held_out(adata, genes, model, test)["mean_r"]
            row["paper_epochs"] = len(model[0].history)
        rows.append(row)
        print(
            f"test {test}: "
            + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
            flush=True,
        )
    if rows:
        table = pd.DataFrame(rows).set_index("test")
        print(table.round(4).to_string())
        means = table.drop(columns="chosen").mean()
        print("mean: " + ", ".join(f"{k} {v:.4f}" for k, v in means.items()))


if __name__ == "__main__":
    main()
