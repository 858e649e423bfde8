"""Validators shared by the public functions: they fail early with messages that name the fix."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from st_hist2st._constants import Key


def check_adata(adata: Any, *, name: str = "adata") -> AnnData:
    """Check that ``adata`` is an :class:`~anndata.AnnData` and not a view."""
    if not isinstance(adata, AnnData):
        raise TypeError(f"`{name}` must be an AnnData, got {type(adata).__name__}.")
    return adata


def check_var_names(adata: AnnData, *, name: str = "adata") -> None:
    """Refuse duplicate gene names: a gene chosen by name would be ambiguous."""
    if not adata.var_names.is_unique:
        dup = adata.var_names[adata.var_names.duplicated()].unique().tolist()
        raise ValueError(
            f"`{name}.var_names` has {len(dup)} duplicated name(s), e.g. {dup[:5]}; call "
            f"`{name}.var_names_make_unique()` first."
        )


#: One precision vocabulary for ``fit`` and ``predict``: Lightning's names, and the short forms as aliases.
PRECISION_ALIASES = {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed", "64": "64-true"}
#: Precisions prediction supports.
PREDICT_PRECISIONS = ("32-true", "bf16-mixed")


def check_precision(precision: str | int, *, predict: bool = False) -> str:
    """Lightning's name of ``precision`` (``'bf16'`` is ``'bf16-mixed'``); prediction takes fp32 or bf16."""
    name = PRECISION_ALIASES.get(str(precision), str(precision))
    if predict and name not in PREDICT_PRECISIONS:
        raise ValueError(
            f"`precision` must be one of {list(PREDICT_PRECISIONS)} (or '32', 'bf16') for prediction, got "
            f"{precision!r}."
        )
    return name


def cpu_lacks_bfloat16() -> bool:
    """Whether this is an x86 CPU without bfloat16 instructions (AVX-512 BF16 or AMX), where torch emulates them."""
    import platform

    import torch

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        return not (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # torch without these probes: do not guess
        return False


def warn_emulated_bfloat16(precision: str, device_type: str, *, stacklevel: int = 3) -> None:
    """Warn before bfloat16 work on a CPU that emulates it: tens of times slower than fp32 there."""
    if precision.startswith("bf16") and device_type == "cpu" and cpu_lacks_bfloat16():
        warnings.warn(
            f"`precision={precision!r}` on a CPU without bfloat16 instructions (AVX-512 BF16 or AMX): torch "
            "emulates them, and training runs tens of times slower than in fp32 (a her2st epoch took over 25 "
            "minutes against about one on an AVX2-only EPYC). Pass `precision='32-true'` here; bfloat16 pays "
            "off on GPUs and on CPUs that have them.",
            UserWarning,
            stacklevel=stacklevel,
        )


#: What each spot's counts are divided by before the log: the total over the model's genes or over all genes.
NORMALIZE_OVER = ("genes", "all")


def check_normalize_over(normalize_over: str) -> None:
    """``normalize_over`` must name one of :data:`NORMALIZE_OVER`."""
    if normalize_over not in NORMALIZE_OVER:
        raise ValueError(f"`normalize_over` must be one of {list(NORMALIZE_OVER)}, got {normalize_over!r}.")


def check_not_view(adata: AnnData, *, name: str = "adata") -> None:
    """Refuse to write into a view, which would silently copy."""
    if adata.is_view:
        raise ValueError(f"`{name}` is a view; call `{name} = {name}.copy()` before writing into it.")


def get_spatial(adata: AnnData, spatial_key: str = Key.spatial) -> np.ndarray:
    """Return ``obsm[spatial_key]`` as an ``(n_obs, 2)`` float array of (x, y) full-resolution pixels."""
    if spatial_key not in adata.obsm:
        raise KeyError(
            f"No spot coordinates in `adata.obsm[{spatial_key!r}]`. Store the (x, y) spot centres in "
            f"full-resolution pixels there, or pass `spatial_key=` naming the key that has them "
            f"(available: {list(adata.obsm)})."
        )
    coords = np.asarray(adata.obsm[spatial_key], dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] < 2:
        raise ValueError(f"`adata.obsm[{spatial_key!r}]` must have shape (n_obs, 2), got {coords.shape}.")
    coords = coords[:, :2]
    if not np.isfinite(coords).all():
        raise ValueError(f"`adata.obsm[{spatial_key!r}]` contains NaN or infinite coordinates.")
    return coords


def get_libraries(adata: AnnData, library_key: str | None) -> pd.Series:
    """Library of every spot as a categorical Series; one library when ``library_key`` is absent."""
    attrs = adata.uns.get("spatialdata_attrs", {})
    region_key = attrs.get("region_key") if isinstance(attrs, dict) else None
    if library_key == Key.library and library_key not in adata.obs and region_key in adata.obs:
        library_key = region_key  # a SpatialData table: each region (e.g. a sample's spots) is a library
    if library_key is None or (library_key not in adata.obs and library_key == Key.library):
        spatial = adata.uns.get(Key.spatial, {})
        name = next(iter(spatial)) if isinstance(spatial, dict) and len(spatial) == 1 else "library"
        return pd.Series(pd.Categorical([name] * adata.n_obs), index=adata.obs_names)
    if library_key not in adata.obs:
        raise KeyError(
            f"`adata.obs[{library_key!r}]` does not exist; pass `library_key=` naming the column that holds "
            f"the section of each spot (columns: {list(adata.obs.columns)})."
        )
    libs = adata.obs[library_key].astype(str).astype("category")
    return libs.cat.remove_unused_categories()


def library_rows(libs: pd.Series) -> Iterator[tuple[str, slice | np.ndarray]]:
    """Each library of ``libs`` (from :func:`get_libraries`) with its rows.

    The rows are a slice over all rows when there is one library, so that indexing with them takes a view.
    """
    if len(libs.cat.categories) == 1:
        yield libs.cat.categories[0], slice(None)
        return
    for lib in libs.cat.categories:
        yield lib, (libs == lib).to_numpy()


def column_blocks(n_rows: int, n_cols: int) -> Iterator[slice]:
    """Slices over ``n_cols`` columns of ``n_rows`` rows, each block at most about 4 million values.

    For per-column work on a (spots x genes) array that needs no whole-size temporary.
    """
    step = max(1, 2**22 // max(n_rows, 1))
    for start in range(0, n_cols, step):
        yield slice(start, start + step)


def check_libraries(available: Sequence[str], requested: Sequence[str] | None, *, argument: str) -> list[str]:
    """Check that every requested library exists."""
    if requested is None:
        return list(available)
    requested = [requested] if isinstance(requested, str) else list(requested)
    missing = [lib for lib in requested if lib not in available]
    if missing:
        raise ValueError(f"`{argument}` names unknown libraries {missing}; available: {list(available)}.")
    return requested


def resolve_genes(adata: AnnData, genes: Sequence[str] | None) -> list[str]:
    """Genes to model: given ones, else ``var['highly_variable']`` when present, else all of ``var_names``."""
    if genes is None:
        if Key.highly_variable in adata.var:
            genes = adata.var_names[adata.var[Key.highly_variable].to_numpy(bool)].tolist()
            if not genes:
                raise ValueError("`adata.var['highly_variable']` selects no gene; pass `genes=` explicitly.")
        else:
            genes = adata.var_names.tolist()
    else:
        genes = [genes] if isinstance(genes, str) else list(genes)
        missing = [g for g in genes if g not in adata.var_names]
        if missing:
            raise KeyError(
                f"{len(missing)} of the requested `genes` are not in `adata.var_names`, "
                f"e.g. {missing[:5]}; drop them or check the gene naming (symbols vs. Ensembl ids)."
            )
    if len(set(genes)) != len(genes):
        raise ValueError("`genes` contains duplicates; pass each gene once.")
    if not genes:
        raise ValueError("`genes` is empty.")
    return list(genes)


def get_matrix(adata: AnnData, layer: str | None) -> np.ndarray | sparse.spmatrix:
    """``X`` or ``layers[layer]`` with a clear error when the layer is missing."""
    if layer is None:
        if adata.X is None:
            raise ValueError("`adata.X` is empty; pass `layer=` naming the layer that holds the raw counts.")
        return adata.X
    if layer not in adata.layers:
        raise KeyError(f"`adata.layers[{layer!r}]` does not exist; available layers: {list(adata.layers)}.")
    return adata.layers[layer]


def to_dense(matrix: Any) -> np.ndarray:
    """Dense float32 copy of a dense or sparse matrix."""
    if sparse.issparse(matrix):
        matrix = matrix.toarray()
    return np.asarray(matrix, dtype=np.float32)


@contextlib.contextmanager
def torch_threads_kept() -> Iterator[None]:
    """Restore torch's thread count after the block.

    numba's OpenMP threading layer, started by the first parallel numba call of a process (scanpy's Moran's I),
    sets the thread count of the OpenMP runtime that torch shares to one per core: without this, a caller
    who limited torch's threads with ``OMP_NUM_THREADS`` (as job schedulers do) would train on every core
    from then on, and runs sharing a machine would slow each other down many times over.
    """
    import torch

    before = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
