"""Reader for the layout of the public her2st repository (Andersson et al., 2021)."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from anndata import AnnData
from PIL import Image
from scipy import sparse

from st_hist2st._constants import DATA_ENV, Key

logger = logging.getLogger(__name__)

URL = "https://github.com/almaan/her2st/raw/master/"
#: Sections whose files sit in ``root``, found by listing it; these are the ones the project's tests use.
SHARED_SECTIONS = ("B4", "C2", "C3", "C4")
LOWRES_MAX_SIDE = 2000


def default_root() -> Path:
    """``$HIST2ST_DATA`` when set, else the pooch cache folder of st-hist2st."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    import pooch

    return Path(pooch.os_cache("st-hist2st")) / "her2st"


def her2st(
    root: str | os.PathLike | None = None,
    sections: str | Sequence[str] | None = None,
    *,
    fullres: bool = True,
) -> AnnData:
    """Load HER2+ breast cancer ST sections from the layout of the public her2st repository.

    Parameters
    ----------
    root
        Folder that holds ``data/ST-cnts``, ``data/ST-spotfiles`` and ``data/ST-imgs`` (a clone of the repository).
        Defaults to ``$HIST2ST_DATA`` or a cache folder; missing files are downloaded with :mod:`pooch` where a
        network is reachable.
    sections
        Section names such as ``'C3'``; default all sections found under ``root``.
    fullres
        Also keep the full-resolution H&E image (uint8, about 280 MB a section) under ``'fullres'``; the
        downscaled ``'lowres'`` image is always kept.

    Returns
    -------
    One AnnData over the requested sections with

    - ``X``: raw UMI counts (sparse CSR, float32 holding integers);
    - ``obs['library_id']``: section; ``obs['array_row']`` / ``obs['array_col']``: grid position;
      ``obs['label']``: pathologist label when ``data/ST-pat/lbl/{section}_labeled_coordinates.tsv`` exists;
    - ``obsm['spatial']``: spot centres (x, y) in full-resolution pixels;
    - ``uns['spatial'][section]``: ``images`` (``'fullres'``, ``'lowres'``), ``scalefactors``
      (``tissue_fullres_scalef`` = 1, ``tissue_lowres_scalef``, ``spot_diameter_fullres``) and ``metadata``
      (``source_image_path``).
    """
    root = Path(root) if root is not None else default_root()
    sections = _resolve_sections(root, sections)
    adatas = {s: _read_section(root, s, fullres=fullres) for s in sections}
    # the images move over by reference; concat's uns merging would copy them
    spatial = {s: a.uns.pop(Key.spatial)[s] for s, a in adatas.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = ad.concat(adatas, label=Key.library, join="outer")
    adata.uns[Key.spatial] = spatial
    adata.obs[Key.library] = pd.Categorical(adata.obs[Key.library], categories=list(sections))
    adata.X = sparse.csr_matrix(adata.X)
    logger.info("loaded her2st sections %s: %d spots, %d genes", list(sections), adata.n_obs, adata.n_vars)
    return adata


def _resolve_sections(root: Path, sections: str | Sequence[str] | None) -> list[str]:
    cnts = root / "data" / "ST-cnts"
    found = sorted(p.name.split(".")[0] for p in cnts.glob("*.tsv*")) if cnts.is_dir() else []
    if sections is None:
        if not found:
            _missing(root, "data/ST-cnts/*.tsv.gz")
        return found
    sections = [sections] if isinstance(sections, str) else list(sections)
    if not sections:
        raise ValueError("`sections` is empty; pass section names such as ['C3'].")
    return sections


def _missing(root: Path, what: str) -> None:
    raise FileNotFoundError(
        f"her2st data not found: {root / what}. Put a clone of the public her2st repository "
        f"(https://github.com/almaan/her2st) there, or point `root=` or ${DATA_ENV} at a folder with "
        "`data/ST-cnts/{section}.tsv.gz`, `data/ST-spotfiles/{section}_selection.tsv` and "
        "`data/ST-imgs/{patient}/{section}/*.jpg`."
    )


def _fetch(root: Path, relative: str) -> Path:
    """Path of ``relative`` under ``root``, downloaded with pooch when missing and a network exists."""
    path = root / relative
    if path.exists():
        return path
    try:
        import pooch

        pooch.retrieve(URL + relative, known_hash=None, fname=path.name, path=path.parent, progressbar=False)
    except Exception:  # noqa: BLE001 - any download failure means: tell the user where to put the files
        _missing(root, relative)
    return path


def _read_section(root: Path, section: str, *, fullres: bool) -> AnnData:
    counts = pd.read_csv(_fetch(root, f"data/ST-cnts/{section}.tsv.gz"), sep="\t", index_col=0)
    spots = pd.read_csv(_fetch(root, f"data/ST-spotfiles/{section}_selection.tsv"), sep="\t")
    spots.index = [f"{round(x)}x{round(y)}" for x, y in zip(spots["x"], spots["y"], strict=True)]
    counts.index = counts.index.astype(str)
    shared = counts.index.intersection(spots.index, sort=False)
    if shared.empty:
        raise ValueError(f"her2st section {section!r}: no spot id is in both the count and the spot file.")
    counts, spots = counts.loc[shared], spots.loc[shared]
    obs = pd.DataFrame(
        {
            Key.array_row: spots["y"].round().astype(int).to_numpy(),
            Key.array_col: spots["x"].round().astype(int).to_numpy(),
        },
        index=[f"{section}_{s}" for s in shared],
    )
    labels = root / "data" / "ST-pat" / "lbl" / f"{section}_labeled_coordinates.tsv"
    if labels.exists():
        lbl = pd.read_csv(labels, sep="\t").dropna(subset=["x", "y"])
        lbl.index = [f"{round(x)}x{round(y)}" for x, y in zip(lbl["x"], lbl["y"], strict=True)]
        lbl = lbl[~lbl.index.duplicated()]
        obs["label"] = pd.Categorical(lbl["label"].reindex(shared).fillna("undetermined").to_numpy())
    adata = AnnData(
        X=sparse.csr_matrix(counts.to_numpy(dtype=np.float32)), obs=obs, var=pd.DataFrame(index=counts.columns)
    )
    adata.obsm[Key.spatial] = spots[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
    adata.uns[Key.spatial] = {section: _read_images(root, section, adata.obsm[Key.spatial], fullres=fullres)}
    return adata


def _image_path(root: Path, section: str) -> Path:
    folder = root / "data" / "ST-imgs" / section[0] / section
    images = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
    if not images:
        _missing(root, f"data/ST-imgs/{section[0]}/{section}/*.jpg")
    return images[0]


def _read_images(root: Path, section: str, coords: np.ndarray, *, fullres: bool) -> dict:
    path = _image_path(root, section)
    with warnings.catch_warnings():
        # the her2st images are slightly above PIL's decompression-bomb threshold; they are known files
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            width, height = img.size
            factor = max(1, int(np.ceil(max(width, height) / LOWRES_MAX_SIDE)))
            if not fullres:  # JPEG draft mode decodes straight at a fraction of the size
                img.draft("RGB", (width // factor, height // factor))
            img = img if img.mode == "RGB" else img.convert("RGB")
            full = np.asarray(img) if fullres else None
            lowres_img = (
                img.reduce(factor)
                if fullres
                else img.resize((int(np.ceil(width / factor)), int(np.ceil(height / factor))))
            )
    lowres = np.asarray(lowres_img)
    images = {"lowres": lowres}
    if full is not None:
        images["fullres"] = full
    grid_step = _grid_step(coords)
    return {
        Key.images: images,
        Key.scalefactors: {
            "tissue_fullres_scalef": 1.0,
            "tissue_lowres_scalef": lowres.shape[1] / width,
            # spots are 100 um wide and 200 um apart on the ST array
            "spot_diameter_fullres": grid_step / 2.0,
        },
        "metadata": {"source_image_path": str(path)},
    }


def _grid_step(coords: np.ndarray) -> float:
    from sklearn.neighbors import NearestNeighbors

    dist, _ = NearestNeighbors(n_neighbors=2).fit(coords).kneighbors(coords)
    return float(np.median(dist[:, 1]))
