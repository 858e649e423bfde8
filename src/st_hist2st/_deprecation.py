"""Old names of arguments, kept working for one release with a FutureWarning."""

from __future__ import annotations

import warnings
from typing import Any

from anndata import AnnData

_NOTHING = object()


def renamed_arguments(function: str, given: dict[str, Any], renames: dict[str, str], current: dict[str, Any]) -> None:
    """Move ``given`` old-name arguments onto their new names in ``current``, warning once for each.

    ``given`` holds the unexpected keyword arguments a function received; any name not in ``renames`` is an
    error, as Python would raise.
    """
    for old, value in given.items():
        if old not in renames:
            raise TypeError(f"{function}() got an unexpected keyword argument {old!r}")
        new = renames[old]
        warnings.warn(
            f"`{function}({old}=...)` is now `{new}=`; the old name will be removed in the next release.",
            FutureWarning,
            stacklevel=3,
        )
        current[new] = value


def prediction_passed_as_layer(function: str, adata: AnnData, layer: str | None) -> bool:
    """Whether ``layer`` names a layer written by :func:`~st_hist2st.tl.predict` (the old meaning of ``layer``).

    Warns when it does: ``layer`` now names the counts, and the predictions are ``key``.
    """
    info = adata.uns.get(layer) if layer is not None else None
    if not (isinstance(info, dict) and "n_models" in info and layer in adata.layers):
        return False
    warnings.warn(
        f"`{function}(layer={layer!r})` names predictions; `layer` now names the layer with the raw counts (as in "
        f"`tl.fit`) and the predictions are `key={layer!r}`. The old meaning will be removed in the next release.",
        FutureWarning,
        stacklevel=3,
    )
    return True
