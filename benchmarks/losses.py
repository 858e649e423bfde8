"""The ZINB term and self-distillation on synthetic data: does either pull the network to the gene means?

Trains the ``'fast'`` preset with a reduced network (``depth2=2``, ``depth3=1``) on three synthetic sections
(:func:`st_hist2st.datasets.synthetic`, 12 x 12 spots, 50 genes) and validates on a fourth, once per
variant, and prints each variant's held-out mean Pearson r at the first, middle and last epoch with its
losses. One core, about 2 minutes per variant without distillation passes.

    python benchmarks/losses.py
    python benchmarks/losses.py --variant "zinb+bake=zinb=0.25,init_zinb_bias=true,bake=2"
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings

import torch

import st_hist2st as hist2st

VARIANTS = {
    "fast": {},
    "zinb": {"zinb": 0.25},
    "zinb, init_zinb_bias": {"zinb": 0.25, "init_zinb_bias": True},
}


def parse(spec: str) -> tuple[str, dict]:
    """``NAME=KEY=VALUE,KEY=VALUE``."""
    name, _, rest = spec.partition("=")
    pairs = [item.split("=", 1) for item in rest.split(",") if item]
    return name, {k: json.loads(v) if v[0].isdigit() or v[0] in "-[{tfn" else v for k, v in pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=KEY=VALUE,...")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    variants = dict(parse(v) for v in args.variant) if args.variant else VARIANTS
    adata = hist2st.datasets.synthetic(n_libraries=4, shape=(12, 12), n_genes=50, seed=0)
    for name, settings in variants.items():
        t0 = time.perf_counter()
        model = hist2st.tl.fit(
            adata,
            "hires",
            validation_libraries=["S3"],
            preset="fast",
            depth2=2,
            depth3=1,
            max_epochs=args.epochs,
            seed=0,
            show_progress_bar=False,
            **settings,
        )
        history = model.history
        rows = history.iloc[[0, len(history) // 2, -1]]
        curve = " / ".join(f"{r:.3f}" for r in rows["val_pearson"])
        losses = ", ".join(
            f"{c[len('train_') :]} {history[c].iloc[-1]:.3f}" for c in history.columns if c.startswith("train_")
        )
        print(
            f"{name}: held-out r at epochs 1 / {len(history) // 2 + 1} / {len(history)}: {curve}; last losses: "
            f"{losses}; {time.perf_counter() - t0:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
