"""Around a Lightning training run: seeding, checkpoints to resume from, Ctrl-C, checks on the targets."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from st_hist2st.nn._plan import epoch_ran_all_batches

logger = logging.getLogger(__name__)

#: File name of the checkpoint that ``checkpoint_dir`` keeps (the last completed epoch).
LAST_CHECKPOINT = "last.ckpt"


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's generators for the block and restore the caller's states after it, CUDA's included."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def keep_sigint_handler() -> Iterator[None]:
    """Put back the Ctrl-C handler that Lightning replaces (with 'ignore') when it catches a KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        if handler is not None:
            signal.signal(signal.SIGINT, handler)


class _NoAdvert(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in str(record.msg)


@contextlib.contextmanager
def no_lightning_advert() -> Iterator[None]:
    """Keep Lightning's advertisement for its cloud logger (logged by every new Trainer) out of the caller's output."""
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    advert = _NoAdvert()
    log.addFilter(advert)
    try:
        yield
    finally:
        log.removeFilter(advert)


def make_trainer(
    training: Any,
    callbacks: list,
    trainer_kwargs: dict[str, Any] | None,
    *,
    root: str,
    accelerator: str,
    devices: Any,
    strategy: Any,
    num_nodes: int,
    precision: str,
    show_progress_bar: bool,
) -> L.Trainer:
    """The Lightning Trainer of a fit: no logger or model summary, checkpoints only where a callback asks.

    ``trainer_kwargs`` override these settings; its ``callbacks`` are added to ``callbacks``.
    """
    extra = dict(trainer_kwargs or {})
    callbacks = list(callbacks) + list(extra.pop("callbacks", None) or [])
    kwargs = {
        "max_epochs": training.max_epochs,
        "accelerator": accelerator,
        "devices": devices,
        "strategy": strategy,
        "num_nodes": num_nodes,
        "precision": precision,
        "gradient_clip_val": training.gradient_clip,
        "enable_progress_bar": show_progress_bar,
        "enable_model_summary": False,
        "logger": False,
        "num_sanity_val_steps": 0,
        "default_root_dir": root,
        "log_every_n_steps": 1,
        "callbacks": callbacks,
        "enable_checkpointing": any(isinstance(c, ModelCheckpoint) for c in callbacks),
        **extra,
    }
    with no_lightning_advert():
        return L.Trainer(**kwargs)


@contextlib.contextmanager
def lightning_notices(*, resuming: bool) -> Iterator[None]:
    """Keep out Lightning's notices that are about its own code or the one-section-per-step design, not the fit."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
        warnings.filterwarnings("ignore", ".*defined a `validation_step` but have no `val_dataloader`.*")
        # Lightning's own use of torch's pytree module; nothing the caller can act on
        warnings.filterwarnings("ignore", r".*isinstance\(treespec, LeafSpec\)", FutureWarning)
        if resuming:  # the folder holds the checkpoint resumed from, to be replaced
            warnings.filterwarnings("ignore", ".*Checkpoint directory .* exists and is not empty.*")
        yield


class WholeEpochCheckpoint(ModelCheckpoint):
    """Lightning's checkpoint, written only at the end of an epoch that ran all its batches.

    An epoch cut short (``max_time`` running out, a callback stopping the fit) is not written: resuming from
    within an epoch would repeat its schedule step and its history row, so the fit continues from the epoch
    before.
    """

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if epoch_ran_all_batches(trainer):
            super().on_train_epoch_end(trainer, pl_module)


def last_checkpoint(checkpoint_dir: str | Path) -> L.Callback:
    """A checkpoint of the whole training state written to ``checkpoint_dir/last.ckpt`` after every whole epoch."""
    return WholeEpochCheckpoint(
        dirpath=str(checkpoint_dir),
        filename=Path(LAST_CHECKPOINT).stem,
        save_top_k=1,
        save_on_train_epoch_end=True,  # after the epoch's history row exists
        enable_version_counter=False,
    )


class CheckpointRecord(L.Callback):
    """Writes what the checkpoint belongs to (genes, preset) into it, for the checks of a resumed fit."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint["st_hist2st"] = self.record


def checkpoint_file(path: str | Path) -> Path:
    """A checkpoint file, or ``last.ckpt`` in a checkpoint folder; an error naming the path when absent."""
    path = Path(path)
    if path.is_dir():
        path = path / LAST_CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(
            f"No checkpoint at {path}. Pass a `.ckpt` file or the `checkpoint_dir` of an earlier fit, which holds "
            f"{LAST_CHECKPOINT} once an epoch has completed."
        )
    return path


def check_checkpoint(path: Path, genes: Sequence[str], architecture: Any) -> None:
    """Refuse, before any long work, a checkpoint of another network or gene set than the model's."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - a checkpoint that does not unpickle is damaged or not one
        raise ValueError(f"{path} cannot be read as a Lightning checkpoint ({type(err).__name__}: {err}).") from None
    record = checkpoint.get("st_hist2st", {}) if isinstance(checkpoint, dict) else {}
    saved = checkpoint.get("hyper_parameters", {}).get("architecture") if isinstance(checkpoint, dict) else None
    if saved is None or "genes" not in record:
        raise ValueError(f"{path} is not a checkpoint written by st-hist2st's `fit(checkpoint_dir=...)`.")
    if list(record["genes"]) != list(genes):
        raise ValueError(
            f"{path} was trained on {len(record['genes'])} genes, not the {len(genes)} requested (or in another "
            "order); resume with the genes of the original fit."
        )
    differ = sorted(k for k, v in architecture.to_dict().items() if saved.get(k) != v)
    if differ:
        raise ValueError(
            f"{path} holds a network with other settings than this model's: "
            + ", ".join(f"{k}={saved.get(k)!r} (here {getattr(architecture, k)!r})" for k in differ)
            + "; resume with the preset and settings of the original fit."
        )


def check_targets_vary(sections: Sequence[Any], genes: Sequence[str]) -> None:
    """Refuse targets constant over all training spots, and warn about genes that are."""
    targets = torch.cat([s.targets for s in sections])
    constant = (targets.amax(0) == targets.amin(0)).numpy()
    if constant.all():
        raise ValueError(
            f"Every one of the {len(genes)} genes has the same target at every training spot, so there is nothing "
            "to learn. Targets are normalised by each spot's total over the model's genes, which makes them "
            "constant for a single gene; pass more genes, or `normalize_over='all'` to normalise by each spot's "
            "total over all genes of `adata`."
        )
    if constant.any():
        names = [g for g, c in zip(genes, constant, strict=True) if c]
        warnings.warn(
            f"{len(names)} of {len(genes)} genes have the same target at every training spot (e.g. {names[:5]}), "
            "so their predictions cannot be learned; leave them out of `genes`.",
            UserWarning,
            stacklevel=4,
        )
