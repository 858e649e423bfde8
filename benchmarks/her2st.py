"""Accuracy on real data: train on three shared her2st sections, test on the fourth.

Prints, per held-out section, the mean Pearson r over the 785 genes of ``genes_785.txt`` for Hist2ST and
for a ridge regression on simple colour features of the same patches.

    python benchmarks/her2st.py --test C3 --minutes 30 --preset fast
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np

import st_hist2st as hist2st
from st_hist2st._data._targets import expression_targets
from st_hist2st.nn._plan import pearson_per_gene

ROOT = Path(os.environ.get("HIST2ST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "her2st"))


def colour_features(patches: np.ndarray) -> np.ndarray:
    """Mean and standard deviation of each channel and an 8-bin histogram per channel, per patch."""
    x = patches.reshape(len(patches), 3, -1).astype(np.float32) / 255
    hist = np.stack([np.stack([np.histogram(p[c], bins=8, range=(0, 1))[0] for c in range(3)]) for p in x])
    return np.concatenate([x.mean(-1), x.std(-1), hist.reshape(len(x), -1) / x.shape[-1]], axis=1)


def ridge_baseline(adata, genes, train, test, crop_size) -> float:
    from sklearn.linear_model import RidgeCV

    patches = hist2st.pp.extract_patches(adata, "fullres", crop_size=crop_size, show_progress_bar=False)
    feats = colour_features(patches)
    y = targets(adata, genes)
    tr = adata.obs["library_id"].isin(train).to_numpy()
    te = (adata.obs["library_id"] == test).to_numpy()
    mu, sd = feats[tr].mean(0), feats[tr].std(0) + 1e-8
    model = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit((feats[tr] - mu) / sd, y[tr])
    pred = model.predict((feats[te] - mu) / sd)
    return mean_r(pred, y[te])


def targets(adata, genes):
    counts = adata[:, genes].X.toarray()
    out = np.zeros_like(counts, dtype=np.float32)
    for lib in adata.obs["library_id"].cat.categories:
        idx = (adata.obs["library_id"] == lib).to_numpy()
        out[idx] = expression_targets(counts[idx])
    return out


def mean_r(pred, obs) -> float:
    import torch

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
    parser.add_argument("--crop-size", type=float, default=112)
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
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    settings = {
        k: json.loads(v) if v[0].isdigit() or v[0] in "-[{tfn" else v for k, v in (s.split("=") for s in args.set)
    }
    genes = (ROOT / "genes_785.txt").read_text().split()
    adata = hist2st.datasets.her2st(ROOT)
    sections = list(adata.obs["library_id"].cat.categories)
    print(f"her2st sections {sections}: {adata.n_obs} spots; {len(genes)} genes; budget {args.minutes} min per split")
    print(f"preset {args.preset!r} with {settings}")
    for test in args.test or sections:
        train = [s for s in sections if s != test]
        t0 = time.perf_counter()
        models = []
        for k in range(args.models):
            left = args.minutes - (time.perf_counter() - t0) / 60
            models.append(
                hist2st.tl.fit(
                    adata,
                    "fullres",
                    genes=genes,
                    crop_size=args.crop_size,
                    validation_libraries=[test],
                    preset=args.preset,
                    max_epochs=args.epochs,
                    precision=args.precision,
                    seed=args.seed + k,
                    show_progress_bar=False,
                    trainer_kwargs={"max_time": {"minutes": left / (args.models - k)}, "callbacks": [PrintEpochs()]},
                    **settings,
                )
            )
        minutes = (time.perf_counter() - t0) / 60
        held = adata[adata.obs["library_id"] == test].copy()
        observed = targets(held, genes)
        columns = held.var_names.get_indexer(genes)
        base = ridge_baseline(adata, genes, train, test, args.crop_size)
        print(f"test {test}: ridge on colour features {base:.4f}; {len(models)} model(s) in {minutes:.1f} min")
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
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            for k, model in enumerate(models):
                model.history.to_json(Path(args.out) / f"history_{test}_seed{args.seed + k}.json", orient="records")
                model.save(Path(args.out) / f"model_{test}_seed{args.seed + k}")


if __name__ == "__main__":
    main()
