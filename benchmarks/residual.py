"""Does the network learn what the colour ridge misses?

Trains a model (``--preset``, default ``'wide'``) on three shared her2st sections with targets from which the
predictions of the colour ridge of ``colour_ridge`` (fitted on the same sections first) are subtracted, so that
the network can fit only what the 18 colour and texture features do not explain. Prints, on the held-out
section, the mean Pearson r over the 785 genes of the residual network alone, of the ridge, and of their sum
(the prediction of the two together); and the network's training error by epoch (with dropout and
augmentation, as trained) against the ridge's own error on the training spots, where the residual network
starts.

    python benchmarks/residual.py --test C4 --out runs/residual
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from blend import model_sections, with_colour_ridge
from her2st import ROOT, mean_r, train_models
from stacking import features_of, ridge

import st_hist2st as hist2st
import st_hist2st._model as model_module
from st_hist2st.nn import ColourRidge
from st_hist2st.nn._colour_ridge import ALPHAS


@contextlib.contextmanager
def ridge_residual_targets(train_on: list[str]):
    """While open, the sections :func:`st_hist2st.tl.fit` cuts hold their targets minus the predictions of a
    colour ridge fitted on the ``train_on`` sections."""
    prepare = model_module.prepare_sections

    def residual_sections(*args, **kwargs):
        sections = prepare(*args, **kwargs)
        train = [s for s in sections if s.library_id in train_on]
        fitted = ColourRidge(sections[0].targets.shape[1])
        model_module.fit_colour_ridge(fitted, train, show_progress_bar=False)
        with torch.no_grad():
            for s in sections:
                s.targets = (s.targets - fitted(features_of(s))).to(s.targets.dtype)
        residual = torch.cat([s.targets for s in train])
        print(f"ridge on the training spots: penalty {float(fitted.alpha):g}, error {residual.square().mean():.4f}")
        return sections

    model_module.prepare_sections = residual_sections
    try:
        yield
    finally:
        model_module.prepare_sections = prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test", required=True, help="the held-out her2st section")
    parser.add_argument("--preset", default="wide")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=40.0, help="training time budget")
    parser.add_argument("--out", help="folder to save the model in")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    genes = (ROOT / "genes_785.txt").read_text().split()
    adata = hist2st.datasets.her2st(ROOT)
    sections = list(adata.obs["library_id"].cat.categories)
    if args.test not in sections:
        raise SystemExit(f"--test {args.test!r} is not one of {sections}")
    train_on = [s for s in sections if s != args.test]
    settings = argparse.Namespace(
        preset=args.preset, crop_size=None, models=1, epochs=None, precision="32-true", seed=args.seed
    )
    t0 = time.perf_counter()
    with ridge_residual_targets(train_on):
        model = train_models(adata, genes, train_on, args.test, settings, {}, args.minutes)[0]
    minutes = (time.perf_counter() - t0) / 60
    if args.out:
        model.save(Path(args.out) / f"residual_{args.test}_seed{args.seed}")
    cut = {s.library_id: s for s in model_sections(model, adata, sections)}
    x = {name: features_of(s).numpy() for name, s in cut.items()}
    y = {name: s.targets.numpy().astype(np.float64) for name, s in cut.items()}
    colour = ridge([x[s] for s in train_on], [y[s] for s in train_on], x[args.test], ALPHAS)
    held = adata[adata.obs["library_id"] == args.test].copy()
    hist2st.tl.predict(held, [with_colour_ridge(model, {}, 0.0)], show_progress_bar=False)
    network = np.asarray(held[:, model.genes].layers["hist2st"], dtype=np.float64)
    history = model.history
    print(
        "training error by epoch: "
        + ", ".join(f"{e}: {v:.4f}" for e, v in zip(history.epoch, history.train_mse, strict=True))
    )
    print(
        f"{args.test}: {len(history)} epochs in {minutes:.1f} min; held-out mean r: residual network "
        f"{mean_r(network, y[args.test]):.4f}, ridge {mean_r(colour, y[args.test]):.4f}, "
        f"both {mean_r(colour + network, y[args.test]):.4f}"
    )


if __name__ == "__main__":
    main()
