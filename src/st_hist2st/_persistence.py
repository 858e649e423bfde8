"""Model folders on disk: written atomically, read back only when every byte and field checks out."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import types
import typing
import uuid
import warnings
from collections.abc import Callable
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

#: Version of the folder layout; 2 added the weights' checksum.
FORMAT_VERSION = 2
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.pt"


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_model_folder(
    path: str | os.PathLike,
    config: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    *,
    overwrite: bool,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write ``config.json`` and the weights into ``path``, all or nothing.

    Everything is written into a hidden folder beside ``path`` and renamed into place only once complete, so an
    error or Ctrl-C part-way leaves the previous model (or no folder), never new settings beside old weights.
    The weights' SHA-256 goes into the config. An existing folder is replaced only with ``overwrite=True``, and
    only when it is empty or holds a model (a ``config.json``): the folder is replaced whole.
    """
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise FileExistsError(f"{path} exists and is not a folder; choose another path for the model.")
        if any(path.iterdir()):
            if not overwrite:
                raise FileExistsError(f"{path} exists and is not empty; pass `overwrite=True` to replace it.")
            if not (path / CONFIG_FILE).exists():
                raise FileExistsError(
                    f"{path} holds files but no model ({CONFIG_FILE} is missing); `overwrite=True` replaces only a "
                    "model folder, since the whole folder is replaced. Choose another path."
                )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        weights = tmp / WEIGHTS_FILE
        torch.save(state_dict, weights)
        _fsync(weights)
        config = {**config, "format_version": FORMAT_VERSION}
        config["weights"] = {"file": WEIGHTS_FILE, "sha256": sha256(weights), "bytes": weights.stat().st_size}
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1))
        _fsync(tmp / CONFIG_FILE)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        _swap_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _swap_into_place(tmp: Path, path: Path) -> None:
    """Rename the finished folder ``tmp`` to ``path``, moving an existing ``path`` aside until it has."""
    if not path.exists():
        os.replace(tmp, path)
        return
    old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def read_model_folder(path: str | os.PathLike, class_name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Config and weights of a model folder, after checking the weights' checksum and the config's layout."""
    path = Path(path)
    config_path = path / CONFIG_FILE
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found; is {path} a folder written by `model.save`?")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_path} is not valid JSON ({err}); the model folder is damaged.") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_path} must hold a JSON object, got {type(config).__name__}.")
    version = config.get("format_version", 0)
    if config.get("class") != class_name or not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{path} holds a {config.get('class')} in format {version}; this version reads {class_name} up to "
            f"format {FORMAT_VERSION}."
        )
    weights = path / WEIGHTS_FILE
    if not weights.exists():
        raise FileNotFoundError(f"{weights} not found; the model folder {path} is incomplete.")
    record = config.get("weights")
    if version >= 2:
        if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
            raise ValueError(f"{config_path}: field 'weights' must record the 'sha256' of {WEIGHTS_FILE}.")
        size = weights.stat().st_size
        if isinstance(record.get("bytes"), int) and size != record["bytes"]:
            raise ValueError(
                f"{weights} has {size} bytes but {record['bytes']} were written: the file is truncated or was "
                "replaced. Save the model again or restore the folder from a copy."
            )
        if sha256(weights) != record["sha256"]:
            raise ValueError(
                f"{weights} does not match the SHA-256 checksum in {CONFIG_FILE}: the weights are corrupted or "
                "belong to another model. Save the model again or restore the folder from a copy."
            )
    else:
        warnings.warn(
            f"{path} was saved in format {version}, without a checksum of its weights; they are loaded unverified. "
            "Save the model again to add one.",
            UserWarning,
            stacklevel=3,
        )
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the file is not a state dict
        raise ValueError(f"{weights} cannot be read as torch weights ({type(err).__name__}: {err}).") from None
    if not isinstance(state, dict):
        raise ValueError(f"{weights} holds a {type(state).__name__}, not a state dict of weights.")
    return config, state


def check_fields(cls: type, values: Any, where: str) -> dict[str, Any]:
    """Check ``values`` against the fields of the dataclass ``cls``: known names, JSON types, then its own checks.

    Returns the values; errors name ``where`` (e.g. ``'config.json: architecture'``) and the field.
    """
    if not isinstance(values, dict):
        raise ValueError(f"{where} must be an object of settings, got {type(values).__name__}.")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{where} has unknown field(s) {unknown}; {cls.__name__} has {sorted(known)}.")
    missing = [name for name, f in known.items() if name not in values and f.default is MISSING]
    if missing:
        raise ValueError(f"{where} lacks the required field(s) {missing}.")
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        allowed = _json_types(hints[name])
        if not _is_instance(value, allowed):
            names = " or ".join(sorted(t.__name__ if t is not type(None) else "null" for t in allowed))
            raise ValueError(f"{where}.{name} must be {names}, got {value!r}.")
    try:
        cls(**values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None
    return values


def _json_types(hint: Any) -> tuple[type, ...]:
    """The Python types a JSON value may have for a field annotated ``hint``."""
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) else (hint,)
    out: list[type] = []
    for arg in args:
        out.extend((int, float) if arg is float else (arg,))
    return tuple(out)


def _is_instance(value: Any, allowed: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # a bool is an int to Python, not to a config
        return bool in allowed
    return isinstance(value, allowed)


def check_state_dict(
    load: Callable[[dict[str, torch.Tensor]], Any], state: dict[str, torch.Tensor], path: Path
) -> None:
    """Load ``state`` with ``load`` (a strict ``load_state_dict``), turning a mismatch into one clear error."""
    try:
        load(state)
    except RuntimeError as err:
        first = str(err).splitlines()[:4]
        raise ValueError(
            f"The weights in {path / WEIGHTS_FILE} do not fit the network described by {path / CONFIG_FILE}: "
            + " ".join(line.strip() for line in first)
        ) from None


#: The model card written beside the weights by ``save_pretrained``, as the Hugging Face Hub shows it.
CARD_FILE = "README.md"
#: Files of a model folder fetched from the Hub.
HUB_FILES = (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE)


def crop_description(preprocessing: dict[str, Any], architecture: dict[str, Any]) -> str:
    """The training crops in words, for a model card.

    Pixels where fixed, else micrometres where the scale was known (whether ``crop_microns`` or the field of view
    set them), else the field of view in spot diameters.
    """
    if preprocessing.get("crop_size"):
        return f"crops of {preprocessing['crop_size']:g} full-resolution pixels"
    if preprocessing.get("crop_microns"):
        return f"crops of {preprocessing['crop_microns']:.0f} um"
    return f"crops of {architecture.get('field_of_view', 1):g} spot diameter(s)"


def model_card(config: dict[str, Any], n_parameters: int, notes: dict[str, Any] | None = None) -> str:
    """A Markdown model card: what the model predicts, how it was trained, on what, and what it measured."""
    pre, arch, history = config["preprocessing"], config["architecture"], config.get("history", [])
    notes = dict(notes or {})
    genes = config["genes"]
    lines = [
        "---",
        "library_name: st-hist2st",
        "tags: [spatial-transcriptomics, histology, hist2st, scverse]",
        "---",
        "",
        "# Hist2ST model",
        "",
        f"Predicts {len(genes)} genes ({', '.join(genes[:10])}{', ...' if len(genes) > 10 else ''}) from H&E "
        "patches with st-hist2st. Load it with "
        "`st_hist2st.Hist2ST.from_pretrained(...)` and predict with `st_hist2st.tl.predict(adata, model)`.",
        "",
        "| | |",
        "| --- | --- |",
        f"| preset | `{config['preset']}` |",
        f"| parameters | {n_parameters:,} |",
        f"| network | depth1={arch['depth1']}, depth2={arch['depth2']}, depth3={arch['depth3']}, "
        f"dim_head={arch['dim_head']}, heads={arch['heads']}, position embedding: {arch['position_embedding']} |",
        f"| image | `{pre.get('image_key')}`, {crop_description(pre, arch)} |",
        f"| targets | log10(1 + 1e4 x counts / total over {'all genes' if pre.get('normalize_over') == 'all' else 'the model genes'}) |",
        f"| trained on | {', '.join(map(str, pre.get('train_libraries', []))) or 'not recorded'} |",
        f"| validated on | {', '.join(map(str, pre.get('validation_libraries', []))) or 'none'} |",
        f"| epochs | {len(history)} |",
        f"| micrometres per pixel | {notes.pop('microns_per_pixel', 'not recorded')} |",
        f"| package version | {config.get('package_version')} |",
    ]
    last = history[-1] if history else {}
    if last.get("val_pearson") is not None:
        lines.append(f"| validation mean Pearson r (last epoch) | {last['val_pearson']:.4f} |")
    if arch.get("colour_ridge", 0) > 0:
        rank = pre.get("colour_ridge_rank", arch.get("colour_ridge_rank"))
        chosen = " (chosen by leave-one-section-out)" if arch.get("colour_ridge_rank") == "auto" else ""
        if rank == "auto":  # not fitted yet
            projected = ", its rank chosen by leave-one-section-out when it is fitted"
        elif rank is None:
            projected = f", of full rank{chosen}"
        else:
            programmes = f"{rank} leading principal component{'s' if rank > 1 else ''}"
            projected = f", its predictions projected onto the {programmes} of the training expression{chosen}"
        trees = pre.get("colour_ridge_trees", arch.get("colour_ridge_trees", 0))
        chosen_trees = " (chosen by leave-one-section-out)" if arch.get("colour_ridge_trees") == "auto" else ""
        if trees == "auto":  # not fitted yet
            forest = "; a share from extremely randomised trees, chosen by leave-one-section-out when it is fitted"
        elif trees:
            forest = (
                f"; {trees:g} of it from extremely randomised trees on the same features, predicting the same "
                f"programmes{chosen_trees}"
            )
        else:
            forest = ""
        stains = (
            ", each section's haematoxylin and eosin mapped onto the training sections' first"
            if arch.get("colour_ridge_stains")
            else ""
        )
        lines.append(
            f"| colour ridge | weight {arch['colour_ridge']:g} in the predictions: a ridge regression on 18 colour and "
            f"texture features of each patch{stains}, fitted on the training spots{projected}{forest} (validation r "
            "is the network's alone) |"
        )
    lines += [f"| {key} | {value} |" for key, value in notes.items()]
    return "\n".join(lines) + "\n"


def fetch_pretrained(repo_id: str, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """A model folder from the Hugging Face Hub (``huggingface_hub`` is the ``hub`` extra)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ImportError(
            f"{repo_id!r} is not a local folder, and loading from the Hugging Face Hub needs huggingface_hub: "
            "`pip install 'st-hist2st[hub]'`."
        ) from None
    folder = snapshot_download(repo_id=repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=list(HUB_FILES))
    return Path(folder)
