"""Running the network on a prepared section, window by window: one pass, or the average over 8 views.

The patch encoder sees one patch at a time (given the section's colour and BatchNorm statistics), so the
tokens of all spots are encoded in chunks; the Transformer and the graph network then run on each window of
:func:`~st_hist2st._data._windows.plan_windows`, and each spot keeps the output of the window whose core holds
it. Time and memory are linear in the number of spots.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
from tqdm.auto import tqdm

from st_hist2st._data._windows import DEFAULT_MAX_SPOTS, plan_windows, window_edges
from st_hist2st.nn._augment import dihedral
from st_hist2st.nn._colour_ridge import FEATURE_NAMES
from st_hist2st.nn._convmixer import release_section_statistics, section_statistics_in_one_pass
from st_hist2st.nn._module import Hist2STModule, section_channel_statistics
from st_hist2st.nn._stains import stain_estimate

#: Spots whose patches give a section's colour and BatchNorm statistics: all of them up to this many, else a
#: fixed random sample of this many (each statistic then averages over millions of pixels or feature-map
#: positions), encoded in one pass that collects them (about 0.7 GB of activations for the default network).
STATISTICS_SPOTS = 2048
#: Largest section whose patches are cut once and held (0.6 GB); a larger one has them cut as each is needed.
HOLD_PATCHES_UP_TO = 16384
#: Spots of the section every window also attends to, standing for the spots outside it.
DEFAULT_WINDOW_CONTEXT = 256


def statistics_sample(n_spots: int) -> np.ndarray:
    """The spots whose patches give the section's statistics: all, or a fixed random sample."""
    if n_spots <= STATISTICS_SPOTS:
        return np.arange(n_spots)
    return np.sort(np.random.default_rng(0).choice(n_spots, STATISTICS_SPOTS, replace=False))


def section_stains(ridge, sample: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The stain estimate of a section from the patches ``sample``.

    Where they give none (a blank or unstained section), the colour model's reference, with a warning.
    """
    try:
        return stain_estimate(sample)
    except ValueError as err:
        warnings.warn(
            f"{err} The colour model reads this section's colours as if stained like the training sections.",
            UserWarning,
            stacklevel=2,
        )
        return ridge.reference_stains, ridge.reference_maxima


@contextmanager
def section_statistics(
    module: Hist2STModule, sample: torch.Tensor
) -> Iterator[tuple[torch.Tensor, torch.Tensor] | None]:
    """Fix the statistics the network normalises a section by, from the patches ``sample`` of the section.

    ``sample`` is encoded in one pass (:data:`STATISTICS_SPOTS` patches at most).

    Yields the colour channels' mean and standard deviation (``section_norm``; ``None`` without it). With
    ``section_batchnorm`` the encoder's BatchNorms normalise every chunk by the sample's statistics until exit.
    """
    channel = None
    if module.arch.section_norm:
        mean, std = section_channel_statistics(sample.unsqueeze(0))
        channel = (mean[0], std[0])
    if module.arch.section_batchnorm:
        section_statistics_in_one_pass(module.encoder, module._encode_chunk, (sample, expanded(channel, len(sample))))
    try:
        yield channel
    finally:
        release_section_statistics(module.encoder)


def expanded(channel: tuple[torch.Tensor, torch.Tensor] | None, n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-patch ``(n, 3, 1, 1)`` views of the section's channel statistics."""
    if channel is None:
        return None
    return channel[0].expand(n, -1, -1, -1), channel[1].expand(n, -1, -1, -1)


def context_sample(n_spots: int, size: int) -> np.ndarray:
    """The spots every window's Transformer also attends to: a fixed random sample of ``size``."""
    if size <= 0:
        return np.empty(0, dtype=np.int64)
    if n_spots <= size:
        return np.arange(n_spots)
    return np.sort(np.random.default_rng(1).choice(n_spots, size, replace=False))


def window_sequence(members: np.ndarray, context: np.ndarray, n_spots: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The spots a window's Transformer attends over, and the bias on their attention scores.

    The window's own spots, then the context spots outside it, each weighted (a score bias of ``log(w)``) as
    the ``w`` spots outside the window it stands for. Attention over this sequence estimates attention over
    the whole section: a softmax's sum over the keys outside the window is estimated from the sample.
    """
    outside = np.setdiff1d(context, members, assume_unique=True)
    if outside.size == 0:
        return members, None
    bias = np.zeros(len(members) + len(outside), dtype=np.float32)
    bias[len(members) :] = np.log((n_spots - len(members)) / len(outside))
    return np.concatenate([members, outside]), bias


def predict_windows(
    module: Hist2STModule,
    patches_of: Callable[[np.ndarray], torch.Tensor],
    positions: torch.Tensor,
    edge_index: torch.Tensor,
    device: torch.device,
    *,
    precision: str = "32-true",
    test_time_augmentation: bool = False,
    max_spots: int | None = DEFAULT_MAX_SPOTS,
    margin: int | None = None,
    window_context: int = DEFAULT_WINDOW_CONTEXT,
    progress: tqdm | None = None,
    zinb: bool = False,
    colour_ridge: bool = True,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """``(n_spots, n_genes)`` predictions of ``module`` (in eval mode, on ``device``) for one section.

    Parameters
    ----------
    patches_of
        The uint8 patches of the given spots (held, or cut from the image when asked for).
    positions, edge_index
        Grid positions and spot graph of the section.
    precision
        ``'bf16-mixed'`` runs under bfloat16 autocast.
    test_time_augmentation
        Average over the 8 rotations by multiples of 90 degrees and mirrors of every patch.
    max_spots
        Most spots in a block (the margin comes on top); ``None`` runs the whole section at once.
    margin
        Graph hops of neighbours around each window's core; default the graph network's layers.
    window_context
        Spots drawn across the section (a fixed random sample) that each window's Transformer also attends to,
        each standing for its share of the spots outside the window (:func:`window_sequence`); they are not
        predicted there. ``0``: each window attends to itself alone.
    progress
        A progress bar to advance by each spot encoded.
    zinb
        Also return the ZINB head's mean, dispersion and dropout probability, ``(3, n_spots, n_genes)`` (each
        averaged over the views).
    colour_ridge
        Blend in the module's fitted colour ridge (``Architecture.colour_ridge``); ``False``: the network alone.
    """
    if zinb and module.zinb is None:
        raise ValueError("The model has no ZINB head (it was built with `zinb_head=False`).")
    n = len(positions)
    margin = module.arch.depth3 if margin is None else int(margin)
    windows = plan_windows(positions, edge_index, max_spots, margin)
    # encoded window by window, so that the patches cut together lie together on the slide
    order = np.concatenate([w.members[w.core] for w in windows])
    sample = statistics_sample(n)
    context = context_sample(n, window_context) if len(windows) > 1 else np.empty(0, dtype=np.int64)
    positions, edge_index = positions.to(device), edge_index.to(device)
    views = range(8) if test_time_augmentation else range(1)
    total = np.zeros((n, module.arch.n_genes), dtype=np.float32)
    params = np.zeros((3, n, module.arch.n_genes), dtype=np.float64) if zinb else None
    chunk = module.encoder_chunk
    ridge = module.colour_ridge if colour_ridge and module.colour_ridge is not None else None
    if ridge is not None and not ridge.is_fitted:
        ridge = None  # during the network's training, before the ridge is fitted
    features = torch.empty((n, len(FEATURE_NAMES)), device=device) if ridge is not None else None
    sample_patches = patches_of(sample)  # the section's statistics in every view, and its stains (on the CPU)
    stains = section_stains(ridge, sample_patches) if ridge is not None and ridge.stains else None
    # no autocast context for '32-true': inside a bf16 Lightning validation it would turn the caller's off
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16-mixed" else nullcontext()
    with torch.inference_mode(), autocast:
        for symmetry in views:
            tokens = torch.empty((n, module.arch.dim), device=device)
            with section_statistics(module, dihedral(sample_patches.to(device), symmetry)) as channel:
                for part in np.array_split(order, max(1, -(-n // chunk))):
                    patches = patches_of(part).to(device)
                    if features is not None and symmetry == 0:  # the same in every view
                        features[torch.as_tensor(part, device=device)] = ridge.features(patches, stains)
                    encoded = module.encode_patches(dihedral(patches, symmetry), expanded(channel, len(part)))
                    tokens[torch.as_tensor(part, device=device)] = encoded.float()
                    if progress is not None:
                        progress.update(len(part))
            if module.x_embed is not None:
                tokens += module.x_embed(positions[:, 0]) + module.y_embed(positions[:, 1])
            # the Transformer: each spot once, in the window whose block holds it, with the context spots
            # standing for the rest of the section; its output replaces the spot's token
            context_tokens = tokens[torch.as_tensor(context, device=device)].clone()
            for window in windows:
                core = window.members[window.core]
                sequence, bias = window_sequence(core, context, n)
                outside = torch.as_tensor(np.searchsorted(context, sequence[len(core) :]), device=device)
                block = torch.as_tensor(core, device=device)
                x = torch.cat([tokens[block], context_tokens[outside]])
                key_bias = None if bias is None else torch.as_tensor(bias, device=device)
                tokens[block] = module.transformer(x.unsqueeze(0), key_bias)[0, : len(core)].float()
            # the graph network: on the block and its margin, which holds every block spot's whole reach
            for window in windows:
                h = module.gnn(
                    tokens[torch.as_tensor(window.members, device=device)].unsqueeze(0),
                    window_edges(edge_index, window.members, n),
                )
                core = torch.as_tensor(window.core, device=device)
                total[window.members[window.core]] += module.gene_head(h[0, core]).float().cpu().numpy()
                if params is not None:
                    # exp() of a bfloat16 logit would round the mean to 3 significant digits
                    with torch.autocast(device.type, enabled=False):
                        heads = module.zinb(h[0, core].float())
                    for k, value in enumerate(heads):
                        params[k, window.members[window.core]] += value.double().cpu().numpy()
    total /= len(views)
    if ridge is not None:
        weight = module.arch.colour_ridge
        total *= 1 - weight
        with torch.inference_mode():
            for spots, part in ridge.chunks(features):  # blended in place: no second spots x genes array
                total[spots] += weight * part.cpu().numpy()
    if params is not None:
        return total, params / len(views)
    return total
