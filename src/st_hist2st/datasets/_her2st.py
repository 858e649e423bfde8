"""Reader for the layout of the public her2st repository (Andersson et al., 2021)."""

from __future__ import annotations

import logging
import os
import warnings
import zlib
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
LOWRES_MAX_SIDE = 2000
#: The genes Hist2ST predicts on her2st, one per line, where a data folder holds them.
GENES_FILE = "genes_785.txt"

#: SHA-256 of the public repository's files whose content is known, by path under the repository's root. Each is
#: checked after a download and the first time it is read in a process; other files are checked by decoding them.
REGISTRY: dict[str, str] = {
    "data/ST-cnts/B4.tsv.gz": "e38231c2a38c9bc7e6d550eec0e527c1869ee0e525fc913e708d1323c34f5ebb",
    "data/ST-cnts/C2.tsv.gz": "c1c59ea6cffae36b9ecb561b8e2a97e3aa5f4085f748e991a0e330ed9d09773d",
    "data/ST-cnts/C3.tsv.gz": "e00c55a3eb9caac5d9c71b8906aae8be8b38f93e23938f4a0ebee17683ef6a2a",
    "data/ST-cnts/C4.tsv.gz": "33201f76d41d7131dc600a0f87d9a70383af3503e81698b4d11e6f2e8d73e9da",
    "data/ST-imgs/B/B4/BT10737_D2_HE.jpg": "3cb165614ce2a13426381e450220dccac980cc9bda6a90fb041c28ca0e2c753d",
    "data/ST-imgs/C/C2/5714_HE_BT_C2.jpg": "26e2f73ae840cdd46c5bba405aae181f13a56a376b9848dff23f7a9c5de7f19e",
    "data/ST-imgs/C/C3/5714_HE_BT_D1.jpg": "0005a92674014d473040a28f0afca89ce5fa5c44019b479b638ceb3272ceb568",
    "data/ST-imgs/C/C4/5714_HE_BT_D2.jpg": "f40607eb1d5f0d125decd71c48b0c5d29cf6776ad92297fd185631208c82d6f2",
    "data/ST-spotfiles/B4_selection.tsv": "192b46f3ca414c85753a01a4fb5760a697ca6c0a1aadb949c4687cc6efa9faa0",
    "data/ST-spotfiles/C2_selection.tsv": "235b5f4306b3b57c628ffc82c98c7109602474fbcc79a917b9c50517f99b6b1c",
    "data/ST-spotfiles/C3_selection.tsv": "7fd76c13370b7804ac3bb377b846d22485cf9223f9dd8dfc25be06e5aaf65755",
    "data/ST-spotfiles/C4_selection.tsv": "47e79f3b9dbfa3a8c18af9e948ba7ba4bf0a75ea1b4c292bc714ced7d0917d4c",
}
#: Files already verified in this process: (path, size, modification time).
_VERIFIED: set[tuple[str, int, int]] = set()


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
    - ``var['highly_variable']``: the genes Hist2ST predicts on this dataset, when ``root`` holds their list
      (``genes_785.txt``, one gene per line); :func:`st_hist2st.tl.fit` models these by default;
    - ``uns['spatial'][section]``: ``images`` (``'fullres'``, ``'lowres'``), ``scalefactors``
      (``tissue_fullres_scalef`` = 1, ``tissue_lowres_scalef``, ``spot_diameter_fullres``) and ``metadata``
      (``source_image_path``).
    """
    root = Path(root) if root is not None else default_root()
    sections = _resolve_sections(root, sections)
    adatas = {s: _read_section(root, s, fullres=fullres) for s in sections}
    # the images move over by reference; concat's uns merging would copy them
    spatial = {s: a.uns.pop(Key.spatial)[s] for s, a in adatas.items()}
    adata = ad.concat(adatas, label=Key.library, join="outer")
    adata.uns[Key.spatial] = spatial
    adata.obs[Key.library] = pd.Categorical(adata.obs[Key.library], categories=list(sections))
    adata.X = sparse.csr_matrix(adata.X)
    genes_file = root / GENES_FILE
    if genes_file.is_file():
        genes = set(genes_file.read_text().split())
        adata.var[Key.highly_variable] = adata.var_names.isin(genes)
        logger.info("var['highly_variable']: the %d genes of %s", int(adata.var[Key.highly_variable].sum()), genes_file)
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
    """Path of ``relative`` under ``root``, downloaded with pooch when missing, verified where its hash is known."""
    path = root / relative
    known = REGISTRY.get(relative)
    if path.exists():
        _verify(path, relative)
        return path
    try:
        import pooch

        pooch.retrieve(
            URL + relative,
            known_hash=None if known is None else f"sha256:{known}",
            fname=path.name,
            path=path.parent,
            progressbar=False,
        )
    except ValueError as err:  # pooch's word for a download whose hash differs; it keeps no such file
        raise ValueError(f"The download of {relative} was incomplete or altered ({err}); try again.") from None
    except Exception:  # noqa: BLE001 - any other download failure means: tell the user where to put the files
        _missing(root, relative)
    return path


def _verify(path: Path, relative: str) -> None:
    """Check a file with a known hash once per process; a mismatch names the file and how to fetch it again."""
    known = REGISTRY.get(relative)
    if known is None:
        return
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _VERIFIED:
        return
    from st_hist2st._persistence import sha256

    if sha256(path) != known:
        raise ValueError(
            f"{path} is not the public her2st file {relative} (its SHA-256 differs): it is truncated or corrupted. "
            "Delete it and load again to download it anew, or copy it again from the her2st repository."
        )
    _VERIFIED.add(key)


def _damaged(path: Path, err: BaseException) -> ValueError:
    return ValueError(
        f"{path} cannot be decoded ({type(err).__name__}: {err}): it is truncated or corrupted. Delete it and load "
        "again to download it anew, or copy it again from the her2st repository."
    )


def _read_table(path: Path, **kwargs) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep="\t", **kwargs)
    except (EOFError, OSError, zlib.error, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise _damaged(path, err) from None


def _read_section(root: Path, section: str, *, fullres: bool) -> AnnData:
    counts = _read_table(_fetch(root, f"data/ST-cnts/{section}.tsv.gz"), index_col=0)
    spots = _read_table(_fetch(root, f"data/ST-spotfiles/{section}_selection.tsv"))
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
    folder = f"data/ST-imgs/{section[0]}/{section}/"
    images = sorted((root / folder).glob("*.jpg")) if (root / folder).is_dir() else []
    if images:
        _verify(images[0], images[0].relative_to(root).as_posix())
        return images[0]
    known = [name for name in REGISTRY if name.startswith(folder)]
    if known:  # the image's name is known, so it can be downloaded
        return _fetch(root, known[0])
    _missing(root, f"{folder}*.jpg")


def _read_images(root: Path, section: str, coords: np.ndarray, *, fullres: bool) -> dict:
    path = _image_path(root, section)
    with warnings.catch_warnings():
        # the her2st images are slightly above PIL's decompression-bomb threshold; they are known files
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
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
        except (OSError, SyntaxError) as err:  # PIL's errors for truncated or undecodable files
            raise _damaged(path, err) from None
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
