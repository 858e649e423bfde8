"""The user-facing Hist2ST model: fit on AnnData, predict on AnnData, save and load."""

from __future__ import annotations

import gc
import json
import logging
import numbers
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from tqdm.auto import tqdm

from st_hist2st._constants import PATCH_SIZE, Key
from st_hist2st._data._dataset import (
    EpochShuffle,
    SectionDataset,
    count_statistics,
    identity_collate,
    target_statistics,
)
from st_hist2st._data._scale import physical_record, warn_coarser_images
from st_hist2st._data._section import Section, prepare_sections
from st_hist2st._data._windows import DEFAULT_MAX_SPOTS, check_max_spots
from st_hist2st._inference import DEFAULT_WINDOW_CONTEXT, HOLD_PATCHES_UP_TO, predict_windows, statistics_sample
from st_hist2st._persistence import (
    CARD_FILE,
    CONFIG_FILE,
    check_fields,
    check_state_dict,
    fetch_pretrained,
    model_card,
    read_model_folder,
    write_model_folder,
)
from st_hist2st._training_run import (
    CheckpointRecord,
    check_checkpoint,
    check_targets_vary,
    checkpoint_file,
    keep_sigint_handler,
    last_checkpoint,
    lightning_notices,
    make_trainer,
    seeded,
)
from st_hist2st._utils import (
    check_adata,
    check_libraries,
    check_normalize_over,
    check_precision,
    check_var_names,
    get_libraries,
    warn_emulated_bfloat16,
)
from st_hist2st.nn._colour_ridge import ColourRidge, fitting_sample
from st_hist2st.nn._module import Architecture, Hist2STModule
from st_hist2st.nn._numerics import flush_denormals
from st_hist2st.nn._plan import Hist2STPlan, check_step_in_backward
from st_hist2st.nn._stains import stain_estimate
from st_hist2st.nn._training import DEFAULT_PRESET, Training
from st_hist2st.nn._training import preset as get_preset

logger = logging.getLogger(__name__)


class Hist2ST:
    """Hist2ST (Zeng et al., 2022): each spot's gene expression from its H&E patch, its section and its neighbours.

    Parameters
    ----------
    genes
        Genes the model predicts, in order.
    preset
        ``'blend'`` (the default: ``'wide'`` with a ridge on colour and texture features of each patch, of a
        rank chosen by leave-one-section-out, with a forest on the same features beside it, blended into its
        predictions with weight 0.75), ``'wide'`` (``'fast'`` with a view
        of four spot diameters around each spot),
        ``'fast'`` (generalises to new sections within minutes on a CPU) or ``'paper'`` (the published network
        and training); see :doc:`/model`.
    seed
        Seed of the initial weights.
    **settings
        Overrides of :class:`~st_hist2st.nn.Architecture` (e.g. ``depth2=2``) or
        :class:`~st_hist2st.nn.Training` (e.g. ``learning_rate=1e-4``) fields.

    Examples
    --------
    >>> model = hist2st.tl.fit(adata, "fullres", max_epochs=50)  # doctest: +SKIP
    >>> model.save("hist2st_model")  # doctest: +SKIP
    >>> model = hist2st.Hist2ST.load("hist2st_model")  # doctest: +SKIP
    """

    def __init__(self, genes: Sequence[str], *, preset: str = DEFAULT_PRESET, seed: int = 0, **settings: Any) -> None:
        genes = [genes] if isinstance(genes, str) else [str(g) for g in genes]
        if not genes or len(set(genes)) != len(genes):
            raise ValueError("`genes` must be a non-empty list of distinct gene names.")
        if "n_genes" in settings:
            raise TypeError("`n_genes` is not a setting: it is the number of `genes` the model predicts.")
        arch, training = get_preset(preset, **settings)
        self.genes: list[str] = genes
        self.preset = preset
        self.architecture = Architecture(n_genes=len(genes), **arch)
        self.training = training
        #: Settings used to turn an AnnData into model input; filled by :meth:`fit`.
        self.preprocessing: dict[str, Any] = {}
        #: One row per epoch trained, with ``epoch``, ``lr``, the mean of each loss term (``train_*``), the
        #: validation figures (``val_pearson``, ``val_mse``) when libraries were held out, and ``complete``,
        #: ``False`` for an epoch cut short by ``max_time`` or a callback (its losses cover only the steps it ran).
        self.history: pd.DataFrame = pd.DataFrame()
        self.is_trained = False
        with seeded(seed):
            self.module = Hist2STModule(self.architecture)

    # ------------------------------------------------------------------ training
    def fit(
        self,
        adata: AnnData,
        image_key: str,
        *,
        library_key: str | None = Key.library,
        layer: str | None = None,
        spatial_key: str = Key.spatial,
        connectivity_key: str = Key.connectivities,
        validation_libraries: Sequence[str] | None = None,
        image: Any = None,
        crop_size: float | None = None,
        crop_microns: float | None = None,
        microns_per_pixel: float | Mapping[str, float] | str | None = None,
        coordinate_system: str | Mapping[str, str] | None = None,
        layout: str = "auto",
        normalize_over: str = "genes",
        max_epochs: int | None = None,
        accelerator: str = "auto",
        devices: int | str | Sequence[int] = "auto",
        strategy: str | Any = "auto",
        num_nodes: int = 1,
        precision: str | int = "32-true",
        seed: int = 0,
        checkpoint_dir: str | Path | None = None,
        ckpt_path: str | Path | None = None,
        show_progress_bar: bool = True,
        trainer_kwargs: dict[str, Any] | None = None,
    ) -> Hist2ST:
        """Train on the libraries of ``adata``; see :func:`st_hist2st.tl.fit` for the parameters.

        ``ckpt_path`` (a checkpoint file, or a ``checkpoint_dir`` of an earlier fit) continues that fit where it
        stopped. If training fails or is interrupted (Ctrl-C raises :class:`KeyboardInterrupt`), a model that
        was trained before keeps its previous weights, settings and history; an untrained one stays marked
        untrained (resume it from ``checkpoint_dir``, or start a new one).
        """
        check_adata(adata)
        check_var_names(adata)
        check_normalize_over(normalize_over)
        settings_before = self.training
        if max_epochs is not None:
            self.training = replace(self.training, max_epochs=int(max_epochs))
        crop = crop_size if crop_size is not None else crop_microns
        if self.architecture.field_of_view != 1 and isinstance(crop, numbers.Real) and crop > 0:  # else refused below
            given = f"`crop_size={crop_size}`" if crop_size is not None else f"`crop_microns={crop_microns}`"
            warnings.warn(
                f"{given} sets the crop, so `field_of_view={self.architecture.field_of_view:g}` (crops of that many "
                "spot diameters) is not used. Leave the crop out to see the tissue around each spot, or pass "
                "`field_of_view=1` to crop exactly as given without this warning.",
                UserWarning,
                stacklevel=3,
            )
        libs = get_libraries(adata, library_key)
        all_libs = list(libs.cat.categories)
        val_libs = (
            check_libraries(all_libs, validation_libraries, argument="validation_libraries")
            if (validation_libraries is not None)
            else []
        )
        train_libs = [lib for lib in all_libs if lib not in val_libs]
        if not train_libs:
            raise ValueError("Every library is in `validation_libraries`; leave at least one for training.")
        if ckpt_path is not None:
            ckpt_path = checkpoint_file(ckpt_path)
            check_checkpoint(ckpt_path, self.genes, self.architecture)
            checkpoint_dir = ckpt_path.parent if checkpoint_dir is None else checkpoint_dir
        with tempfile.TemporaryDirectory(prefix="hist2st-") as tmp, seeded(seed):
            history_path = str(Path(tmp) / "history.json")
            callbacks = self._callbacks()
            if checkpoint_dir is not None:
                callbacks.append(last_checkpoint(checkpoint_dir))
            callbacks.append(CheckpointRecord({"genes": self.genes, "preset": self.preset}))
            trainer = make_trainer(
                self.training,
                callbacks,
                trainer_kwargs,
                root=tmp,
                accelerator=accelerator,
                devices=devices,
                strategy=strategy,
                num_nodes=num_nodes,
                precision=check_precision(precision),
                show_progress_bar=show_progress_bar,
            )
            warn_emulated_bfloat16(trainer.precision, trainer.strategy.root_device.type, stacklevel=4)
            if self.training.step_in_backward:
                check_step_in_backward(trainer)  # before the patches are cut
            common = {
                "genes": self.genes,
                "library_key": library_key,
                "layer": layer,
                "spatial_key": spatial_key,
                "connectivity_key": connectivity_key,
                "layout": layout,
                "image": image,
                "crop_size": crop_size,
                "crop_microns": crop_microns,
                "microns_per_pixel": microns_per_pixel,
                "coordinate_system": coordinate_system,
                "field_of_view": self.architecture.field_of_view,
                "n_pos": self.architecture.n_pos if self.architecture.position_embedding else None,
                "normalize_over": normalize_over,
                "show_progress_bar": show_progress_bar,
            }
            sections = prepare_sections(adata, image_key, libraries=train_libs + val_libs, **common)
            train = [s for s in sections if s.library_id in train_libs]
            val = [s for s in sections if s.library_id in val_libs]
            check_targets_vary(train, self.genes)
            ridge = self.module.colour_ridge
            stains = training_stains(train) if ridge is not None and ridge.stains else None
            log_training_windows(train, self.training.max_spots)
            preprocessing = {
                "image_key": image_key,
                "crop_size": None if crop_size is None else float(crop_size),
                "layer": layer,
                "library_key": library_key,
                "spatial_key": spatial_key,
                "connectivity_key": connectivity_key,
                "layout": layout,
                "normalize_over": normalize_over,
                "train_libraries": train_libs,
                # the targets' denominator for a spot of size factor 1: the scale of the ZINB head's counts
                "median_total": float(np.median([s.median_total for s in train])),
                "validation_libraries": val_libs,
                **physical_record({s.library_id: s.crop for s in train}, PATCH_SIZE),
            }
            dataset = SectionDataset(train, self.training.crops_per_section)
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=None, sampler=EpochShuffle(len(dataset), seed), collate_fn=identity_collate
            )
            val_loader = (
                torch.utils.data.DataLoader(SectionDataset(val), batch_size=None, collate_fn=identity_collate)
                if val
                else None
            )
            # trains self.module in place: a second copy of the weights would cost 0.3 GB at the paper's size
            plan = Hist2STPlan(
                self.architecture.to_dict(), self.training.to_dict(), history_path, net=self.module, seed=seed
            )
            plan.set_gene_statistics(*target_statistics(train), init_bias=not self.is_trained)
            counts = count_statistics(train)
            if counts is not None and not self.is_trained:
                plan.set_count_statistics(*counts)
            # Lightning keeps the modules' train/eval mode as it finds it, and prediction leaves them in eval mode
            self.module.train()
            # a re-fit that fails must not leave half-updated weights on a model marked trained; a first fit has
            # nothing to keep (and the copy would cost the paper network's 0.3 GB)
            previous = (
                {k: v.detach().to("cpu", copy=True) for k, v in self.module.state_dict().items()}
                if self.is_trained
                else None
            )
            with lightning_notices(resuming=ckpt_path is not None), keep_sigint_handler(), flush_denormals():
                try:
                    trainer.fit(plan, loader, val_loader, ckpt_path=None if ckpt_path is None else str(ckpt_path))
                except BaseException as err:
                    self.training = settings_before
                    self._restore_after_failure(previous, plan.history, checkpoint_dir)
                    if isinstance(err, SystemExit) and isinstance(err.__context__, KeyboardInterrupt):
                        # Lightning turns Ctrl-C into sys.exit(1), which would end a notebook's kernel
                        raise KeyboardInterrupt("training interrupted") from None
                    raise
                finally:
                    plan.remove_step_hooks()
            history = json.loads(Path(history_path).read_text()) if Path(history_path).exists() else plan.history
            if ridge is not None:
                fit_colour_ridge(ridge, train, show_progress_bar, stains)
                preprocessing["colour_ridge_rank"] = ridge.fitted_rank
                preprocessing["colour_ridge_trees"] = ridge.fitted_trees
        # the optimiser's state (twice the weights) and the gradients go now, not at some later collection
        del trainer, plan, previous
        gc.collect()
        self._release_training_state()
        self.preprocessing = preprocessing
        # a resumed fit's history starts with the epochs the checkpoint recorded
        self.history = pd.concat([self.history, pd.DataFrame(history)], ignore_index=True)
        self.is_trained = True
        return self

    def _release_training_state(self) -> None:
        self.module.zero_grad(set_to_none=True)
        self.module.gradient_checkpointing = False
        self.module.cpu()

    def _restore_after_failure(self, previous: dict | None, history: list, checkpoint_dir: str | Path | None) -> None:
        """Put back the weights from before a failed or interrupted re-fit, and say what the model now holds."""
        if previous is not None:
            self.module.load_state_dict(previous)
        self._release_training_state()
        where = f" The last completed epoch is in {checkpoint_dir}; resume with `resume=`." if checkpoint_dir else ""
        if self.is_trained:
            state = f"it keeps its previous weights and history ({len(self.history)} epochs)"
        else:
            state = "it stays untrained"
        logger.warning("Training stopped after %d epoch(s); %s.%s", len(history), state, where)

    def _callbacks(self) -> list:
        """Lightning callbacks the training settings ask for."""
        if self.training.ema_decay is None:
            return []
        try:
            from lightning.pytorch.callbacks import EMAWeightAveraging
        except ImportError:  # added to Lightning after the oldest version st-hist2st runs on
            import lightning

            raise ImportError(
                f"`ema_decay` needs Lightning's EMAWeightAveraging, which Lightning {lightning.__version__} lacks; "
                "upgrade it (`pip install -U lightning`) or leave `ema_decay=None`."
            ) from None
        return [EMAWeightAveraging(decay=self.training.ema_decay)]

    # ------------------------------------------------------------------ prediction
    def prediction_inputs(
        self, image_key: str | None = None, crop_size: float | None = None, crop_microns: float | None = None
    ) -> tuple[str | None, float | None, float | None]:
        """The image key, crop size (pixels) and crop side (micrometres) :meth:`predict` uses.

        Those given; else the model's: the micrometres it was trained at where it recorded them (so that a
        slide at another resolution is cropped to the same piece of tissue), else its crop size in pixels.
        """
        image_key = self.preprocessing.get("image_key") if image_key is None else image_key
        if crop_size is not None or crop_microns is not None:
            return image_key, crop_size, crop_microns
        if self.preprocessing.get("crop_microns"):
            return image_key, None, float(self.preprocessing["crop_microns"])
        return image_key, self.preprocessing.get("crop_size"), None

    def predict(
        self,
        adata: AnnData,
        image_key: str | None = None,
        *,
        library_key: str | None = Key.library,
        spatial_key: str = Key.spatial,
        connectivity_key: str = Key.connectivities,
        image: Any = None,
        crop_size: float | None = None,
        crop_microns: float | None = None,
        microns_per_pixel: float | Mapping[str, float] | str | None = None,
        coordinate_system: str | Mapping[str, str] | None = None,
        device: str | torch.device | None = None,
        precision: str = "32-true",
        test_time_augmentation: bool = False,
        max_spots: int | None = DEFAULT_MAX_SPOTS,
        window_margin: int | None = None,
        window_context: int = DEFAULT_WINDOW_CONTEXT,
        show_progress_bar: bool = True,
        return_zinb: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Predicted transformed expression, ``(n_obs, n_genes)`` float32 in the order of ``genes``.

        See :func:`st_hist2st.tl.predict` for the parameters; ``adata`` is not modified. With ``return_zinb``
        also the ZINB head's mean, dispersion and dropout probability, ``(3, n_obs, n_genes)``: the distribution
        of the counts of a spot of median size (size factor 1).
        """
        self._check_trained()
        if return_zinb:
            self.check_zinb()
        check_adata(adata)
        precision = check_precision(precision, predict=True)
        max_spots = check_max_spots(max_spots)
        if isinstance(window_context, bool) or not isinstance(window_context, int) or window_context < 0:
            raise ValueError(f"`window_context` must be a non-negative number of spots, got {window_context!r}.")
        if window_margin is not None and (
            isinstance(window_margin, bool) or int(window_margin) != window_margin or window_margin < 0
        ):
            raise ValueError(f"`window_margin` must be a non-negative number of graph hops, got {window_margin!r}.")
        device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        warn_emulated_bfloat16(precision, device.type, stacklevel=4)
        given = crop_size is not None or crop_microns is not None
        image_key, crop_size, crop_microns = self.prediction_inputs(image_key, crop_size, crop_microns)
        if image_key is None:
            raise ValueError("Pass `image_key=`: the model does not know which image it was trained on.")
        sections = prepare_sections(
            adata,
            image_key,
            genes=None,
            library_key=library_key,
            spatial_key=spatial_key,
            connectivity_key=connectivity_key,
            layout=self.preprocessing.get("layout", "auto"),
            image=image,
            crop_size=crop_size,
            crop_microns=crop_microns,
            microns_per_pixel=microns_per_pixel,
            coordinate_system=coordinate_system,
            # the model's micrometres on a slide of unknown scale: its pixels, with a warning
            fallback_crop_size=None if given else (self.preprocessing.get("crop_size") or "default"),
            field_of_view=self.architecture.field_of_view,
            n_pos=self.architecture.n_pos if self.architecture.position_embedding else None,
            hold_patches_up_to=HOLD_PATCHES_UP_TO,
            show_progress_bar=show_progress_bar,
        )
        warn_coarser_images(sections, self.preprocessing.get("patch_microns_per_pixel"))
        for section in sections:
            if max_spots is not None and section.n_spots > max_spots:
                logger.info(
                    "library %r: %d spots, predicted in windows of at most %d spots (`max_spots`)",
                    section.library_id,
                    section.n_spots,
                    max_spots,
                )
        out = np.full((adata.n_obs, len(self.genes)), np.nan, dtype=np.float32)
        params = np.full((3, adata.n_obs, len(self.genes)), np.nan) if return_zinb else None
        was_training = self.module.training
        self.module.to(device).eval()
        views = 8 if test_time_augmentation else 1
        total = views * sum(s.n_spots for s in sections)
        try:
            with (
                flush_denormals(),
                tqdm(total=total, desc="predicting", unit="spot", disable=not show_progress_bar) as progress,
            ):
                for section in sections:
                    result = self.predict_section(
                        section,
                        device,
                        precision,
                        test_time_augmentation,
                        max_spots,
                        window_margin,
                        window_context,
                        progress,
                        return_zinb,
                    )
                    if return_zinb:
                        out[section.obs_index], params[:, section.obs_index] = result
                    else:
                        out[section.obs_index] = result
        finally:
            self.module.train(was_training).cpu()
        return (out, params) if return_zinb else out

    def predict_section(
        self,
        section: Section,
        device: torch.device,
        precision: str = "32-true",
        test_time_augmentation: bool = False,
        max_spots: int | None = DEFAULT_MAX_SPOTS,
        window_margin: int | None = None,
        window_context: int = DEFAULT_WINDOW_CONTEXT,
        progress: tqdm | None = None,
        return_zinb: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Predicted expression of one prepared section, averaged over the 8 views with ``test_time_augmentation``.

        A section of more than ``max_spots`` spots is predicted in windows (see :func:`st_hist2st.tl.predict`).
        With ``return_zinb``, also the ZINB parameters (see :meth:`predict`).
        """
        return predict_windows(
            self.module,
            section.patches_of,
            section.positions,
            section.edge_index,
            device,
            precision=check_precision(precision),
            test_time_augmentation=test_time_augmentation,
            max_spots=check_max_spots(max_spots),
            margin=window_margin,
            window_context=window_context,
            progress=progress,
            zinb=return_zinb,
        )

    def check_zinb(self) -> None:
        """Raise unless the ZINB head was trained (``zinb > 0``), which predictive uncertainty comes from."""
        if self.module.zinb is None or self.training.zinb <= 0:
            raise ValueError(
                "This model has no trained ZINB head (it was trained with `zinb=0`), so it gives no predictive "
                "uncertainty; train one with a ZINB loss (e.g. `zinb=0.25, init_zinb_bias=True`), or pass "
                "`uncertainty=False`."
            )

    def _check_trained(self) -> None:
        if not self.is_trained:
            raise RuntimeError("The model is not trained; call `hist2st.tl.fit` (or `model.fit`) first.")

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        """Everything but the weights, JSON-safe."""
        from st_hist2st import __version__

        return {
            "class": type(self).__name__,
            "package_version": __version__,
            "preset": self.preset,
            "genes": self.genes,
            "architecture": self.architecture.to_dict(),
            "training": self.training.to_dict(),
            "preprocessing": self.preprocessing,
            "is_trained": self.is_trained,
            "history": json.loads(self.history.to_json(orient="records")) if len(self.history) else [],
        }

    def save(self, path: str | Path, overwrite: bool = False) -> None:
        """Write the model into the folder ``path``: ``config.json`` and the weights (``model.pt``, a state dict).

        The folder is written whole or not at all (a failure or Ctrl-C part-way leaves the previous model in
        place), and ``config.json`` records the SHA-256 of the weights, which :meth:`load` verifies.
        ``overwrite=True`` replaces an existing model folder.
        """
        write_model_folder(path, self.config(), self.module.state_dict(), overwrite=overwrite)
        logger.info("saved the model to %s", path)

    @classmethod
    def load(cls, path: str | Path) -> Hist2ST:
        """Rebuild a model saved with :meth:`save`.

        The weights are read with ``weights_only=True`` after their checksum is verified, and every field of
        ``config.json`` is checked; a damaged folder gives an error that names the file or field.
        """
        path = Path(path)
        config, state = read_model_folder(path, cls.__name__)
        where = f"{path / CONFIG_FILE}"
        for name, kind in (("genes", list), ("architecture", dict), ("training", dict), ("preprocessing", dict)):
            if not isinstance(config.get(name), kind):
                raise ValueError(f"{where}: field {name!r} must be a {kind.__name__}, got {config.get(name)!r}.")
        for name, new in (("zinb", "zinb_head"), ("distillation", "distillation_head")):  # names before 0.2
            if name in config["architecture"]:
                config["architecture"][new] = config["architecture"].pop(name)
        genes = config["genes"]
        if not genes or not all(isinstance(g, str) for g in genes) or len(set(genes)) != len(genes):
            raise ValueError(f"{where}: field 'genes' must be a non-empty list of distinct gene names.")
        check_fields(Architecture, config["architecture"], f"{where}: architecture")
        check_fields(Training, config["training"], f"{where}: training")
        if config["architecture"]["n_genes"] != len(genes):
            raise ValueError(
                f"{where}: architecture.n_genes is {config['architecture']['n_genes']} but 'genes' lists "
                f"{len(genes)}; the folder mixes two models."
            )
        if not isinstance(config.get("is_trained"), bool):
            raise ValueError(f"{where}: field 'is_trained' must be true or false, got {config.get('is_trained')!r}.")
        if not isinstance(config.get("history", []), list):
            raise ValueError(f"{where}: field 'history' must be a list of per-epoch records.")
        model = cls.__new__(cls)
        model.genes = list(genes)
        model.preset = str(config.get("preset", "paper"))
        model.architecture = Architecture(**config["architecture"])
        model.training = Training(**config["training"])
        model.preprocessing = dict(config["preprocessing"])
        model.history = pd.DataFrame(config.get("history", []))
        model.is_trained = config["is_trained"]
        model.module = Hist2STModule(model.architecture)
        check_state_dict(model.module.load_state_dict, state, path)
        ridge = model.module.colour_ridge
        if ridge is not None:  # what 'auto' chose
            ridge.fitted_rank = model.preprocessing.get("colour_ridge_rank", ridge.fitted_rank)
            ridge.fitted_trees = model.preprocessing.get("colour_ridge_trees", ridge.fitted_trees)
        return model

    def save_pretrained(
        self, folder: str | Path, *, overwrite: bool = False, card: dict[str, Any] | None = None
    ) -> Path:
        """Save as :meth:`save` does, with a model card (``README.md``) for sharing, e.g. on the Hugging Face Hub.

        The card lists the genes, the preset and network, the training data, the image and crop, and the last
        validation r; ``card`` adds rows (e.g. ``{'microns_per_pixel': 0.8, 'held-out mean r': 0.15}``).
        Upload the folder with ``huggingface_hub.upload_folder`` or ``huggingface-cli upload``.
        """
        self._check_trained()
        config = self.config()
        extra = {CARD_FILE: model_card(config, self.n_parameters, card)}
        return write_model_folder(folder, config, self.module.state_dict(), overwrite=overwrite, extra_files=extra)

    @classmethod
    def from_pretrained(
        cls, repo_id_or_folder: str | Path, *, revision: str | None = None, cache_dir: str | Path | None = None
    ) -> Hist2ST:
        """A model from a local folder or a Hugging Face Hub repository (``pip install 'st-hist2st[hub]'``).

        Parameters
        ----------
        repo_id_or_folder
            A folder written by :meth:`save_pretrained` or :meth:`save`, or a Hub repository id
            (``'owner/name'``) that holds one.
        revision
            Branch, tag or commit of the Hub repository.
        cache_dir
            Where the Hub's files are cached; default huggingface_hub's.
        """
        path = Path(repo_id_or_folder)
        if not path.is_dir():
            path = fetch_pretrained(str(repo_id_or_folder), revision=revision, cache_dir=cache_dir)
        return cls.load(path)

    @property
    def n_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.module.parameters())

    def __repr__(self) -> str:
        genes = ", ".join(self.genes[:3]) + (", ..." if len(self.genes) > 3 else "")
        state = "trained" if self.is_trained else "untrained"
        return (
            f"Hist2ST({state}, preset={self.preset!r}, {len(self.genes)} genes [{genes}], "
            f"{self.n_parameters:,} parameters, dim={self.architecture.dim})"
        )


def log_training_windows(sections: Sequence[Section], max_spots: int | None) -> None:
    """Say which training sections are too large for one step and are trained on in windows."""
    for section in sections:
        if max_spots is not None and section.n_spots > max_spots:
            logger.info(
                "library %r: %d spots, more than `max_spots=%d`; each training step takes the %d spots nearest "
                "a random spot, and validation predicts in windows",
                section.library_id,
                section.n_spots,
                max_spots,
                max_spots,
            )


def training_stains(sections: Sequence[Section]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The stain estimate of each training section, from the spots that give its statistics at prediction.

    Made before training, so that a section without two stains to find (not H&E) fails at once.
    """
    estimates = []
    for section in sections:
        try:
            estimates.append(stain_estimate(section.patches_of(statistics_sample(section.n_spots))))
        except ValueError as err:
            raise ValueError(
                f"Library {section.library_id!r}: {err} The colour model maps each section's stains onto the "
                "training sections' (`colour_ridge_stains=True`, part of the 'blend' preset); pass "
                "`colour_ridge_stains=False` for images that are not H&E."
            ) from None
    return estimates


def fit_colour_ridge(
    ridge: ColourRidge,
    sections: Sequence[Section],
    show_progress_bar: bool = True,
    stains: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> None:
    """Fit ``ridge`` on the patch features and targets of every spot of the training ``sections``.

    Beyond 50,000 spots, only the patches of the sample the ridge is fitted on are read (``fitting_sample``
    draws the same one). A ridge of ``rank='auto'`` chooses its rank by leaving out one section at a time. A
    ridge with ``stains`` maps every section's stains (``stains``, from :func:`training_stains` where not given)
    onto their mean.
    """
    estimates = [None] * len(sections)
    if ridge.stains:
        estimates = list(stains) if stains is not None else training_stains(sections)
        ridge.set_stain_reference(estimates)
    sizes = [s.n_spots for s in sections]
    sample = fitting_sample(sum(sizes))
    starts = np.cumsum([0, *sizes])
    spots = [
        np.arange(size) if sample is None else sample[(sample >= start) & (sample < start + size)] - start
        for start, size in zip(starts[:-1], sizes, strict=True)
    ]
    features = []
    with tqdm(total=sum(map(len, spots)), desc="colour ridge", unit="spot", disable=not show_progress_bar) as progress:
        for section, chosen, estimate in zip(sections, spots, estimates, strict=True):
            for part in np.array_split(chosen, -(-len(chosen) // 1024)) if len(chosen) else []:
                features.append(ridge.features(section.patches_of(part), estimate))
                progress.update(len(part))
    features = torch.cat(features)
    targets = torch.cat([s.targets[torch.from_numpy(chosen)] for s, chosen in zip(sections, spots, strict=True)])
    names = np.repeat([str(s.library_id) for s in sections], list(map(len, spots)))
    ridge.fit(features, targets, names)
    logger.info(
        "fitted the colour ridge on %d spots (penalty %g, rank %s, forest's share %g)",
        len(features),
        float(ridge.alpha),
        ridge.fitted_rank or "full",
        ridge.fitted_trees,
    )


def resolve_model(model: Hist2ST | str | Path) -> Hist2ST:
    """A :class:`Hist2ST` or the folder it was saved in."""
    if isinstance(model, Hist2ST):
        return model
    if isinstance(model, str | Path):
        return Hist2ST.load(model)
    raise TypeError(f"`model` must be a Hist2ST or the folder of a saved one, got {type(model).__name__}.")


__all__ = ["Hist2ST", "resolve_model"]
