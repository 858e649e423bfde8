"""Held-out figures of saved models, alone and averaged, on the her2st section they were not trained on.

Models trained in separate runs (one seed each, e.g. in parallel on a machine's cores) are scored here as
``benchmarks/her2st.py --models N`` scores the models of one run: the mean Pearson r over the 785 genes of each
model and of their averaged prediction, and the Spearman correlation between the predicted and the observed
Moran's I over the genes.

    python benchmarks/her2st.py --test C4 --preset wide --seed 0 --out runs/wide
    python benchmarks/her2st.py --test C4 --preset wide --seed 1 --out runs/wide
    python benchmarks/ensemble.py runs/wide/model_C4_seed0 runs/wide/model_C4_seed1 --section C4
"""

from __future__ import annotations

import argparse
import warnings

from her2st import ROOT, held_out

import st_hist2st as hist2st


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="saved model folders, all trained without --section")
    parser.add_argument("--section", required=True, help="the held-out her2st section")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    genes = (ROOT / "genes_785.txt").read_text().split()
    adata = hist2st.datasets.her2st(ROOT)
    if args.section not in set(adata.obs["library_id"]):
        raise SystemExit(f"--section {args.section!r} is not one of {sorted(set(adata.obs['library_id']))}")
    models = [hist2st.Hist2ST.load(path) for path in args.models]
    for path, model in zip(args.models, models, strict=True):
        trained_on = set(model.preprocessing.get("train_libraries", ()))
        if args.section in trained_on:
            raise SystemExit(f"{path} was trained on {args.section}; score it on a section it has not seen")
        print(f"{args.section} {path}: " + figures(held_out(adata, genes, [model], args.section)), flush=True)
    if len(models) > 1:
        print(f"{args.section} average of {len(models)}: " + figures(held_out(adata, genes, models, args.section)))


def figures(scores: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in scores.items())


if __name__ == "__main__":
    main()
