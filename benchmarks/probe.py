"""What a trained model's spot representation carries, against colour and texture features of the same tissue.

For a saved model and its held-out her2st section, prints the held-out mean Pearson r over the 785 genes of:

- the model's own predictions;
- the ridge baseline on 18 colour and texture features of a ``--ridge-crop`` pixel crop (``benchmarks/her2st.py``);
- a ridge on the model's spot representation (the input of its expression head), fitted on the other
  sections: a linear probe, which tells whether the representation or the head falls short;
- the average of the model's and the ridge's predictions, each standardised per gene over the held-out
  section's spots (no measured value is used), which tells whether the two see the same thing.

Then, for each section the model was trained on, the mean r there of the model and of the ridge (fitted on
the same sections): how closely each fits its own training spots.

    python benchmarks/her2st.py --test C4 --set field_of_view=4 dihedral=true crop_size=null --out runs/wide
    python benchmarks/probe.py runs/wide/model_C4_seed0 --section C4
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
from her2st import ROOT, colour_texture_features, mean_r, ridge_r, targets

import st_hist2st as hist2st


def representation_and_prediction(model, adata, section: str) -> tuple[np.ndarray, np.ndarray]:
    """The spot representations (the expression head's input) and predictions of ``model`` on ``section``."""
    held = adata[adata.obs["library_id"] == section].copy()
    captured = []
    hook = model.module.gene_head.register_forward_hook(
        lambda module, inputs, output: captured.append(inputs[0].detach().reshape(-1, inputs[0].shape[-1]))
    )
    try:
        pred = model.predict(held, show_progress_bar=False)
    finally:
        hook.remove()
    h = torch.cat(captured).numpy()
    if len(h) != held.n_obs:
        raise RuntimeError(f"{section}: {len(h)} representations for {held.n_obs} spots (predicted in windows?)")
    return h, pred


def standardised(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(0)) / (x.std(0) + 1e-8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a saved model folder")
    parser.add_argument("--section", required=True, help="the held-out her2st section the model was not trained on")
    parser.add_argument("--ridge-crop", type=float, default=448, help="crop side of the ridge's features, in pixels")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    genes = (ROOT / "genes_785.txt").read_text().split()
    adata = hist2st.datasets.her2st(ROOT)
    library = adata.obs["library_id"].to_numpy()
    if args.section not in set(library):
        raise SystemExit(f"--section {args.section!r} is not one of {sorted(set(library))}")
    y = targets(adata, genes)
    model = hist2st.Hist2ST.load(args.model)
    columns = [model.genes.index(g) for g in genes]
    h = None
    pred = np.zeros_like(y)
    for section in np.unique(library):
        idx = library == section
        rep, out = representation_and_prediction(model, adata, section)
        h = np.zeros((adata.n_obs, rep.shape[1]), np.float32) if h is None else h
        h[idx], pred[idx] = rep, out[:, columns]
    patches = hist2st.pp.extract_patches(adata, "fullres", crop_size=args.ridge_crop, show_progress_bar=False)
    features = colour_texture_features(patches)
    train, test = library != args.section, library == args.section
    ridge, ridge_pred = ridge_r(features, y, train, test)
    scores = {
        "model": mean_r(pred[test], y[test]),
        f"ridge, colour+texture at {args.ridge_crop:g} px": ridge,
        "ridge on the model's representation": ridge_r(h, y, train, test)[0],
        "average of the model and the ridge": mean_r(standardised(pred[test]) + standardised(ridge_pred), y[test]),
    }
    for name, r in scores.items():
        print(f"{args.section}: {name}: mean r {r:.4f}", flush=True)
    _, ridge_fit = ridge_r(features, y, train, train)
    fitted = library[train]
    for section in np.unique(fitted):
        idx, own = library == section, fitted == section
        print(
            f"{section} (trained on): model {mean_r(pred[idx], y[idx]):.4f}, "
            f"ridge {mean_r(ridge_fit[own], y[idx]):.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
