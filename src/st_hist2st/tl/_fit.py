from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from anndata import AnnData

from st_hist2st._constants import Key
from st_hist2st._data._graph import grid_positions
from st_hist2st._docs import inject_docs
from st_hist2st._model import Hist2ST
from st_hist2st._utils import check_adata, check_var_names, get_libraries, resolve_genes
from st_hist2st.nn._training import DEFAULT_PRESET

logger = logging.getLogger(__name__)


@inject_docs
def fit(
    adata: AnnData,
    image_key: str,
    *,
    genes: Sequence[str] | None = None,
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
    preset: str = DEFAULT_PRESET,
    max_epochs: int | None = None,
    accelerator: str = "auto",
    devices: int | str | Sequence[int] = "auto",
    strategy: str | Any = "auto",
    num_nodes: int = 1,
    precision: str | int = "32-true",
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    resume: str | Path | None = None,
    show_progress_bar: bool = True,
    trainer_kwargs: dict[str, Any] | None = None,
    **settings: Any,
) -> Hist2ST:
    """Train Hist2ST to predict expression from the H&E image, one section per step.

    Every input is checked before training starts. ``adata`` is not modified.

    Parameters
    ----------
    adata
        Spots of one or more sections with raw counts in ``X`` (or ``layers[layer]``), spot centres in
        full-resolution pixels in ``obsm[spatial_key]`` and, unless ``image`` is given, the images in
        ``uns['spatial'][library_id]['images']`` with their ``scalefactors``.
    image_key
        %(image_key)s
    genes
        Genes to predict; default ``var['highly_variable']`` when present, else all genes.
    library_key
        %(library_key)s
    layer
        Layer with the raw counts; ``None`` uses ``X``.
    spatial_key
        %(spatial_key)s
    connectivity_key
        %(connectivity_key)s
    validation_libraries
        Libraries held out for validation; their mean Pearson r per epoch is kept in ``model.history``.
    image
        %(image)s
    crop_size
        %(crop_size)s Default ``field_of_view`` (see :class:`~st_hist2st.nn.Architecture`; 4 in the default
        preset, 1 in the others) times ``scalefactors['spot_diameter_fullres']`` of each library. A crop given
        here replaces the field of view.
    crop_microns
        %(crop_microns)s
    microns_per_pixel
        %(microns_per_pixel)s
    coordinate_system
        %(coordinate_system)s
    layout
        Spot array for a graph built here: ``'st'``, ``'visium'`` or ``'auto'``.
    normalize_over
        Each spot's counts are divided by its total over the model's ``'genes'`` (the paper's targets) or over
        ``'all'`` genes of ``adata`` before ``log10(1 + 1e4 * x)``. With one gene, or a few, ``'genes'`` makes
        every target alike; ``fit`` refuses targets that are constant everywhere.
    preset
        ``'blend'`` (the default): ``'wide'`` with a ridge regression on 18 colour and texture features of each
        patch, fitted on the training spots after the network and projected onto the leading principal
        components of their expression, with a forest of randomised trees on the same features beside it,
        blended into its predictions with weight 0.75 (``colour_ridge=0.75``; ``colour_ridge_rank='auto'``: the
        number of components, among 2, 5, 10, 20, 50 and all, that predicts best each training section from the
        others, 5 with one training section and on each her2st split; ``colour_ridge_trees='auto'``: the
        forest's share and leaf size chosen the same way, half with leaves of 5 spots with one training
        section), reading each section's patches with their haematoxylin and eosin mapped onto the training
        sections' (``colour_ridge_stains=True``, so that a slide stained or scanned elsewhere is read as the
        training slides were; pass ``False`` for images that are not H&E); nested validation on her2st chose the
        weight with the forest, these choices and the mapped stains.
        ``'wide'``: ``'fast'`` with crops of four spot diameters (``field_of_view=4``, resized to
        the same 112 pixels: the spot and the tissue around it, as far as its neighbours) shown in random
        rotations and mirrors (``dihedral=True``); nested validation on her2st chose it over ``'fast'``.
        ``'fast'``: the paper's network without the grid-position embedding, with each section's colours
        standardised, BatchNorm at prediction by the predicted section's statistics and dropout 0.4
        (``position_embedding=False``, ``section_norm=True``, ``section_batchnorm=True``, ``dropout=0.4``),
        trained with Adam 1e-4, 5 warm-up epochs and cosine decay over 40 epochs, gradient clipping at 1, no
        ZINB term, no distillation passes, each section 4 times per epoch; it generalises to new sections in
        minutes on a CPU. ``'paper'``: the published training (Adam 1e-5, x0.9 every 50 epochs, 350 epochs,
        raw pixel values, ZINB term and self-distillation), hours on a CPU. See :doc:`/model` (earlier defaults:
        ``'paper'``, then ``'fast'``, then ``'wide'``).
    max_epochs
        Epochs; overrides the preset.
    accelerator, devices, strategy, num_nodes
        Passed to :class:`lightning.pytorch.Trainer`; ``strategy='ddp'`` (or ``'ddp_spawn'``) with several
        ``devices`` trains data-parallel, sections split across processes.
    precision
        Lightning precision, e.g. ``'bf16-mixed'`` for bfloat16 autocast on CPU or GPU; the short forms
        ``'32'`` and ``'bf16'`` are the same, and :func:`~st_hist2st.tl.predict` takes the same names.
    seed
        Seed of the initial weights, the augmentations and the order of sections.
    checkpoint_dir
        Folder where the whole training state (weights, optimiser, schedule, epoch, random generators,
        history) is written after every whole epoch, as ``last.ckpt``; a fit stopped early continues from it
        with ``resume`` (an epoch cut short is trained again).
    resume
        A ``checkpoint_dir`` (or a ``.ckpt`` file in one) of an earlier fit with the same data and settings:
        training continues from its last completed epoch and ends with the weights an uninterrupted fit with the
        same ``seed`` would give (on the CPU; see :doc:`/reproducibility`).
    show_progress_bar
        %(show_progress_bar)s
    trainer_kwargs
        Further arguments of :class:`lightning.pytorch.Trainer` (callbacks, logger, checkpointing, ...).
    **settings
        Overrides of the architecture (:class:`~st_hist2st.nn.Architecture`, e.g. ``depth2=4``) or the
        training (:class:`~st_hist2st.nn.Training`, e.g. ``learning_rate=3e-4``). ``n_pos`` defaults to 64,
        or the next multiple of 64 that holds the grid positions. ``max_spots`` (default 1,024) caps the spots
        of one training step: a larger section (Visium HD bins, pooled cells) is trained on windows of it, with
        a log line saying so (see :doc:`/large_sections`).

    Returns
    -------
    The trained :class:`~st_hist2st.Hist2ST`.
    """
    check_adata(adata)
    check_var_names(adata)
    genes = resolve_genes(adata, genes)
    if "n_pos" not in settings:
        max_pos = int(grid_positions(adata, spatial_key, get_libraries(adata, library_key)).max())
        settings["n_pos"] = max(64, 64 * (max_pos // 64 + 1))
    model = Hist2ST(genes, preset=preset, seed=seed, **settings)
    logger.info("training %r", model)
    return model.fit(
        adata,
        image_key,
        library_key=library_key,
        layer=layer,
        spatial_key=spatial_key,
        connectivity_key=connectivity_key,
        validation_libraries=validation_libraries,
        image=image,
        crop_size=crop_size,
        crop_microns=crop_microns,
        microns_per_pixel=microns_per_pixel,
        coordinate_system=coordinate_system,
        layout=layout,
        normalize_over=normalize_over,
        max_epochs=max_epochs,
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        num_nodes=num_nodes,
        precision=precision,
        seed=seed,
        checkpoint_dir=checkpoint_dir,
        ckpt_path=resume,
        show_progress_bar=show_progress_bar,
        trainer_kwargs=trainer_kwargs,
    )
