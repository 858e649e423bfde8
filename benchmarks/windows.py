"""Windowed against whole-section prediction on real her2st sections.

Trains the ``'fast'`` preset on three shared her2st sections (or loads ``--model``), then predicts each of the
four sections whole and in windows smaller than it (``max_spots``, with ``window_context`` spots of the
section that every window also attends to), and prints the mean Pearson r over the 785 genes against the
measured expression, its difference from whole-section prediction, and the mean over genes of the Pearson r
between the windowed and the whole-section predictions.

    python benchmarks/windows.py --test C4 --out /tmp/hist2st_fast_C4
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

from her2st import ROOT, mean_r  # the accuracy benchmark beside this one: the same data and measure

import st_hist2st as hist2st
from st_hist2st._data._targets import expression_targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test", default="C4", help="held-out section")
    parser.add_argument("--model", default=None, help="a saved model to use instead of training one")
    parser.add_argument("--out", default=None, help="save the trained model here")
    parser.add_argument("--max-spots", type=int, nargs="*", default=[64, 128])
    parser.add_argument("--context", type=int, nargs="*", default=[0, 32, 64], help="window_context values")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", ".*GPU available.*")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    genes = (ROOT / "genes_785.txt").read_text().split()
    adata = hist2st.datasets.her2st(ROOT)
    train = [s for s in adata.obs["library_id"].cat.categories if s != args.test]
    if args.model:
        model = hist2st.Hist2ST.load(args.model)
    else:
        t0 = time.perf_counter()
        model = hist2st.tl.fit(
            adata[adata.obs["library_id"].isin(train)].copy(),
            "fullres",
            genes=genes,
            crop_size=112,
            preset="fast",
            accelerator="cpu",
            show_progress_bar=False,
        )
        print(f"trained 'fast' on {train} in {(time.perf_counter() - t0) / 60:.1f} min")
        if args.out:
            model.save(args.out, overwrite=True)
    print(f"held out: {args.test}; the other sections were trained on (their r is not an accuracy)")
    print(
        f"{'section':>8} {'spots':>6} {'max_spots':>10} {'context':>8} {'windows':>8} {'mean r':>8} "
        f"{'minus whole':>12} {'r(windowed, whole)':>19} {'s':>6}"
    )
    from st_hist2st._data._section import prepare_sections
    from st_hist2st._data._windows import plan_windows

    for name in adata.obs["library_id"].cat.categories:
        held = adata[adata.obs["library_id"] == name].copy()
        observed = expression_targets(held[:, genes].X.toarray())
        t0 = time.perf_counter()
        whole = model.predict(held, max_spots=None, show_progress_bar=False)
        seconds = time.perf_counter() - t0
        r_whole = mean_r(whole, observed)
        print(
            f"{name:>8} {held.n_obs:>6} {'whole':>10} {'':>8} {1:>8} {r_whole:8.4f} {0:12.4f} {1:19.4f} {seconds:6.1f}"
        )
        section = prepare_sections(held, "fullres", genes=None, crop_size=112, show_progress_bar=False)[0]
        for max_spots in args.max_spots:
            depth3 = model.architecture.depth3
            n_windows = len(plan_windows(section.positions, section.edge_index, max_spots, depth3))
            for context in args.context:
                t0 = time.perf_counter()
                windowed = model.predict(held, max_spots=max_spots, window_context=context, show_progress_bar=False)
                seconds = time.perf_counter() - t0
                r = mean_r(windowed, observed)
                agreement = mean_r(windowed, whole)
                print(
                    f"{name:>8} {held.n_obs:>6} {max_spots:>10} {context:>8} {n_windows:>8} {r:8.4f} "
                    f"{r - r_whole:12.4f} {agreement:19.4f} {seconds:6.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
