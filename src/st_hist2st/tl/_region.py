from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from st_hist2st._constants import Key
from st_hist2st._deprecation import prediction_passed_as_layer, renamed_arguments
from st_hist2st._utils import check_adata, get_libraries
from st_hist2st.tl._evaluate import observed_targets, predicted_genes

logger = logging.getLogger(__name__)

UNDETERMINED = ("undetermined", "")


def _clusters(x: np.ndarray, k: int, n_pcs: int, seed: int) -> np.ndarray:
    n_pcs = max(1, min(n_pcs, x.shape[0] - 1, x.shape[1]))
    pcs = PCA(n_components=n_pcs, random_state=seed).fit_transform(x)
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(pcs)


def region_ari(
    adata: AnnData,
    key: str = Key.prediction,
    label_key: str | None = None,
    *,
    layer: str | None = None,
    library_key: str | None = Key.library,
    n_clusters: int | None = None,
    n_pcs: int = 10,
    seed: int = 0,
    **deprecated: Any,
) -> pd.DataFrame:
    """Region identification as in the paper: k-means on PCA of the predicted expression against the regions.

    Per library, spots labelled ``'undetermined'`` (or missing) are left out, the predicted expression is
    reduced by PCA and clustered by k-means with k = number of label classes (or ``n_clusters``), and the
    clusters are compared with the labels by the adjusted Rand index and normalised mutual information.
    Without labels, the reference is k-means (k = ``n_clusters``, default 5) on PCA of the observed
    expression transformed as the targets; the ``reference`` column says which was used.

    Parameters
    ----------
    adata
        Spots with predictions in ``layers[key]``.
    key
        Layer with the predictions (``key_added`` of :func:`~st_hist2st.tl.predict`).
    label_key
        Column of ``obs`` with pathologist labels, e.g. ``'label'`` from :func:`st_hist2st.datasets.her2st`.
    library_key
        Column of ``obs`` with the section of each spot.
    n_clusters
        Number of clusters; default the number of label classes.
    n_pcs
        Principal components.
    layer
        Layer with raw counts, for the reference without labels; ``None`` uses ``X``.
    seed
        Seed of PCA and k-means.

    Returns
    -------
    One row per library: ``ari``, ``nmi``, ``n_spots``, ``n_clusters``, ``reference``. ``adata`` is not modified.
    """
    current = {"key": key, "layer": layer}
    renamed_arguments("region_ari", deprecated, {"counts_layer": "layer"}, current)
    key, layer = current["key"], current["layer"]
    if prediction_passed_as_layer("region_ari", adata, layer):
        key, layer = layer, None
    check_adata(adata)
    genes = predicted_genes(adata, key)
    pred = np.asarray(adata[:, genes].layers[key], dtype=np.float64)
    if label_key is not None and label_key not in adata.obs:
        raise KeyError(f"`adata.obs[{label_key!r}]` does not exist; pass the column with region labels or None.")
    observed = None if label_key is not None else observed_targets(adata, key, layer).to_numpy()
    libs = get_libraries(adata, library_key)
    rows = []
    for lib in libs.cat.categories:
        idx = (libs == lib).to_numpy()
        if label_key is not None:
            labels = adata.obs[label_key].astype(str).to_numpy()
            keep = idx & ~np.isin(np.char.lower(labels.astype(str)), UNDETERMINED) & (labels != "nan")
            truth = labels[keep]
            k = n_clusters or len(np.unique(truth))
            reference = f"labels in obs[{label_key!r}]"
        else:
            keep = idx
            k = n_clusters or 5
            truth = _clusters(observed[keep], k, n_pcs, seed)
            reference = "k-means clusters of the observed expression"
        if keep.sum() <= k:
            raise ValueError(f"Library {lib!r} has {int(keep.sum())} usable spots, too few for {k} clusters.")
        found = _clusters(pred[keep], k, n_pcs, seed)
        rows.append(
            {
                "library": lib,
                "ari": adjusted_rand_score(truth, found),
                "nmi": normalized_mutual_info_score(truth, found),
                "n_spots": int(keep.sum()),
                "n_clusters": k,
                "reference": reference,
            }
        )
    logger.info("region identification against %s", rows[0]["reference"] if rows else "nothing")
    return pd.DataFrame(rows).set_index("library")
