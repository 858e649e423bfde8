from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from st_hist2st.nn._augment import SectionAugment
from st_hist2st.nn._colour_ridge import ColourRidge, is_rank, is_share
from st_hist2st.nn._convmixer import (
    PatchEncoder,
    SectionBatchNorm2d,
    release_section_statistics,
    section_statistics_over_chunks,
)
from st_hist2st.nn._gnn import GraphJumpingKnowledge
from st_hist2st.nn._heads import ExpressionHead, PassWeight, ZINBHead
from st_hist2st.nn._transformer import Transformer


@dataclass(frozen=True)
class Architecture:
    """Hyperparameters of the Hist2ST network; the defaults are the paper's.

    Attributes
    ----------
    n_genes
        Genes predicted.
    fig_size
        Side of the input patch in pixels.
    patch_size
        Kernel and stride of the patch embedding.
    channel
        Channels of the ConvMixer.
    kernel_size
        Depthwise kernel of the ConvMixer.
    depth1
        ConvMixer blocks.
    depth2
        Transformer blocks.
    depth3
        GNN layers.
    heads
        Attention heads.
    dim_head
        Width of each attention head.
    dropout
        Dropout on the patch embedding, after attention and in the feed-forward nets.
    attn_dropout
        Dropout on the attention weights; ``None`` uses ``dropout`` (as the paper). ``0`` lets attention run
        as one fused kernel that never holds the ``N x N`` weights, needed for sections of thousands of spots.
    n_pos
        Entries of the positional embedding table per grid axis (64 for legacy ST, at least 128 for Visium).
    position_embedding
        Add the learned embedding of each spot's grid position to its token, as the paper. Grid positions
        mean nothing on another tissue section, and with them the network can memorise the training spots
        (position and section together identify each one), so without them it generalises better to new
        sections; the spot graph still gives it the neighbourhood.
    policy
        GNN aggregation, ``'mean'`` or ``'max'``.
    zinb_head
        Build the ZINB heads (mean, dispersion, dropout per gene). :class:`~st_hist2st.Hist2ST` builds them only
        when the ZINB loss is used (``Training.zinb > 0``), so that no weight goes without a gradient.
    distillation_head
        Build the head that weights the self-distillation passes; built only when ``Training.bake`` and
        ``Training.lamb`` are above 0.
    pixel_scale
        Factor applied to the 0-255 pixel values (1 as the paper; 1/255 scales to [0, 1]).
    section_norm
        Standardise each colour channel by its mean and standard deviation over all patches of the section
        (a simple stain normalisation, applied alike in training and prediction): sections stained or scanned
        differently then look alike to the network, which cannot tell sections apart by colour.
        ``pixel_scale`` has no effect then.
    section_batchnorm
        At prediction, let the encoder's BatchNorm normalise by the statistics of the section predicted (over
        all its patches, however many are encoded at a time), as it does in training,
        where each step is one section, instead of by the running averages over the training sections. A
        section stained or scanned unlike the training ones is then normalised like each of them was in
        training (adaptive BatchNorm, Li et al., 2016). The paper predicts with the running averages.
    field_of_view
        Side of each spot's crop in spot diameters, where :func:`~st_hist2st.tl.fit` is given neither
        ``crop_size`` nor ``crop_microns``; the crop is resized to ``fig_size`` pixels. ``1`` sees the spot
        alone, as the paper; ``4`` also the tissue around it, as far as the neighbouring spots, at a quarter of
        the detail. Prediction crops what the model was trained on, in micrometres where the scale is known.
    colour_ridge
        Weight of a ridge regression on 18 colour and texture features of each spot's patch
        (:class:`~st_hist2st.nn.ColourRidge`) in the predictions, ``(1 - w) * network + w * ridge``. The ridge
        is fitted in closed form on the training spots after the network has trained, and does not change how
        the network trains; ``0`` predicts with the network alone, as the paper.
    colour_ridge_rank
        Project the colour ridge's predictions onto this many principal components of the training expression
        (reduced-rank regression, see :class:`~st_hist2st.nn.ColourRidge`); ``None`` keeps a ridge of full
        rank; ``'auto'`` chooses among 2, 5, 10, 20, 50 and full rank by leave-one-section-out over the
        training sections (5 where there is one). Only used where ``colour_ridge`` is above 0.
    colour_ridge_trees
        Share, in [0, 1], of a forest of extremely randomised trees in the colour ridge's predictions: it learns
        the same features' map to the leading expression programmes (``colour_ridge_rank`` of them, 5 where the
        ridge is of full rank), which need not be linear (see :class:`~st_hist2st.nn.ColourRidge`). ``0``: the
        ridge alone; ``'auto'`` chooses the share among 0, 0.25, 0.5, 0.75 and 1 (with the leaves' size) by
        leave-one-section-out over the training sections, as ``colour_ridge_rank='auto'`` chooses the rank (half,
        with leaves of 5 spots, where there is one). Only used where ``colour_ridge`` is above 0.
    colour_ridge_stains
        Let the colour ridge read each section's patches with their haematoxylin and eosin mapped onto the
        training sections' (Macenko et al., 2009; see :class:`~st_hist2st.nn.ColourRidge`), in training and in
        prediction alike, for slides stained or scanned unlike the training ones: the ridge reads absolute
        colour, which the network does not (``section_norm``, ``section_batchnorm``). Only used where
        ``colour_ridge`` is above 0.
    """

    n_genes: int = 785
    fig_size: int = 112
    patch_size: int = 7
    channel: int = 32
    kernel_size: int = 5
    depth1: int = 2
    depth2: int = 8
    depth3: int = 4
    heads: int = 16
    dim_head: int = 64
    dropout: float = 0.2
    attn_dropout: float | None = None
    n_pos: int = 64
    position_embedding: bool = True
    policy: str = "mean"
    zinb_head: bool = True
    distillation_head: bool = True
    pixel_scale: float = 1.0
    section_norm: bool = False
    section_batchnorm: bool = False
    field_of_view: float = 1.0
    colour_ridge: float = 0.0
    colour_ridge_rank: int | str | None = None
    colour_ridge_trees: float | str = 0.0
    colour_ridge_stains: bool = False

    def __post_init__(self) -> None:
        for name in ("n_genes", "fig_size", "patch_size", "channel", "kernel_size", "heads", "dim_head", "n_pos"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be at least 1, got {getattr(self, name)}.")
        for name in ("depth1", "depth2", "depth3"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be non-negative, got {getattr(self, name)}.")
        if self.patch_size > self.fig_size:
            raise ValueError(f"`patch_size` ({self.patch_size}) must not exceed `fig_size` ({self.fig_size}).")
        for name in ("dropout", "attn_dropout"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise ValueError(f"`{name}` must be in [0, 1), got {value}.")
        if self.policy not in ("mean", "max"):
            raise ValueError(f"`policy` must be 'mean' or 'max', got {self.policy!r}.")
        if not self.field_of_view > 0:
            raise ValueError(f"`field_of_view` must be a positive number of spot diameters, got {self.field_of_view}.")
        if not 0 <= self.colour_ridge <= 1:
            raise ValueError(f"`colour_ridge` is a weight in [0, 1], got {self.colour_ridge}.")
        if not is_rank(self.colour_ridge_rank):
            raise ValueError(
                "`colour_ridge_rank` must be a whole number at least 1, 'auto' (chosen by leave-one-section-out) "
                f"or None for a full-rank ridge, got {self.colour_ridge_rank!r}."
            )
        if not is_share(self.colour_ridge_trees):
            raise ValueError(
                "`colour_ridge_trees` is the forest's share of the colour ridge, in [0, 1], or 'auto' (chosen by "
                f"leave-one-section-out), got {self.colour_ridge_trees!r}."
            )
        if not isinstance(self.colour_ridge_stains, bool):
            raise ValueError(f"`colour_ridge_stains` must be True or False, got {self.colour_ridge_stains!r}.")
        if not self.pixel_scale > 0:
            raise ValueError(f"`pixel_scale` must be positive, got {self.pixel_scale}.")
        if self.dim < 1:
            raise ValueError(
                f"`fig_size={self.fig_size}`, `patch_size={self.patch_size}` and `channel={self.channel}` give a "
                "token of width 0; raise `channel` or lower `patch_size`."
            )

    @property
    def dim(self) -> int:
        """Size of a spot's token and representation."""
        return (self.fig_size // self.patch_size) ** 2 * self.channel // 8

    def to_dict(self) -> dict:
        """JSON-safe dictionary."""
        return asdict(self)


@dataclass
class Hist2STOutput:
    """What :class:`~st_hist2st.nn.Hist2STModule` returns.

    Attributes
    ----------
    expression
        ``(B, N, n_genes)`` predicted transformed expression.
    h
        ``(B, N, dim)`` spot representations.
    """

    expression: torch.Tensor
    h: torch.Tensor


def section_channel_statistics(
    patches: torch.Tensor, chunk: int = 32, view: tuple | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of each colour channel over the patches of each pass, ``(B, 3, 1, 1)`` each.

    ``patches`` is ``(B, N, 3, H, W)``; sums are taken in float64 ``chunk`` patches at a time, so no float copy
    of the section is held. With a ``view`` of ``SectionAugment.draw``, the statistics are those of the
    patches under that augmentation, applied chunk by chunk.
    """
    b, n, c = patches.shape[:3]
    total = torch.zeros(b, c, dtype=torch.float64, device=patches.device)
    squares = torch.zeros_like(total)
    for start in range(0, n, chunk):
        x = patches[:, start : start + chunk]
        if view is not None:
            x = SectionAugment.transform(x.flatten(0, 1), *view).view_as(x)
        x = x.to(torch.float64)
        total += x.sum((1, 3, 4))
        squares += x.square().sum((1, 3, 4))
    count = n * patches.shape[3] * patches.shape[4]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt().clamp_min(1.0)  # at least one grey level
    return mean.float().view(b, c, 1, 1), std.float().view(b, c, 1, 1)


class Hist2STModule(nn.Module):
    r"""The Hist2ST network: ConvMixer patch encoder, Transformer, GraphSAGE + jumping-knowledge LSTM, heads.

    Parameters
    ----------
    arch
        Hyperparameters.

    Shapes
    ------
    ``patches`` ``(B, N, 3, fig_size, fig_size)`` (uint8 or float; ``B`` passes of the same section, e.g. the
    clean one and its augmentations), ``positions`` ``(N, 2)`` integer grid (column, row), ``edge_index``
    ``(2, E)``; output :class:`~st_hist2st.nn.Hist2STOutput` with ``(B, N, n_genes)`` expression.
    """

    def __init__(self, arch: Architecture | None = None, **kwargs) -> None:
        super().__init__()
        arch = Architecture(**kwargs) if arch is None else arch
        self.arch = arch
        dim = arch.dim
        self.encoder = PatchEncoder(
            arch.fig_size, arch.patch_size, arch.channel, arch.kernel_size, arch.depth1, arch.dropout
        )
        for module in self.encoder.modules():
            if isinstance(module, SectionBatchNorm2d):
                module.section_statistics = arch.section_batchnorm
        self.x_embed = nn.Embedding(arch.n_pos, dim) if arch.position_embedding else None
        self.y_embed = nn.Embedding(arch.n_pos, dim) if arch.position_embedding else None
        self.transformer = Transformer(dim, arch.depth2, arch.heads, arch.dim_head, arch.dropout, arch.attn_dropout)
        self.gnn = GraphJumpingKnowledge(dim, arch.depth3, arch.policy)
        self.zinb = ZINBHead(dim, arch.n_genes) if arch.zinb_head else None
        self.pass_weight = PassWeight(dim) if arch.distillation_head else None
        self.gene_head = ExpressionHead(dim, arch.n_genes)
        self.colour_ridge = (
            ColourRidge(arch.n_genes, arch.colour_ridge_rank, arch.colour_ridge_trees, stains=arch.colour_ridge_stains)
            if arch.colour_ridge > 0
            else None
        )
        self.augment = SectionAugment()
        #: Patches encoded at once at prediction (about 0.33 GB of activations for the default network). The
        #: section's statistics are taken first (``section_batchnorm``: in one pass over up to 2,048 patches).
        self.encoder_chunk = 1024
        #: Patches encoded at once when checkpointing (the encoder is cheap to recompute, its activations large).
        self.checkpoint_chunk = 128

    @property
    def gradient_checkpointing(self) -> bool:
        """Recompute the encoder, the Transformer blocks and the GNN (with its LSTM) in the backward pass."""
        return self.transformer.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, value: bool) -> None:
        self.transformer.gradient_checkpointing = self.gnn.gradient_checkpointing = bool(value)

    def reset_parameters(self) -> None:
        """Re-initialise all weights."""
        for module in (
            self.encoder,
            self.x_embed,
            self.y_embed,
            self.transformer,
            self.gnn,
            self.gene_head,
            self.zinb,
            self.pass_weight,
        ):
            if module is not None:
                module.reset_parameters()

    def encode(
        self,
        patches: torch.Tensor,
        positions: torch.Tensor,
        edge_index: torch.Tensor,
        views: Sequence[tuple | None] | None = None,
    ) -> torch.Tensor:
        """Spot representations ``h``, ``(B, N, dim)``.

        With ``views`` (one per pass: ``None`` for the patches as they are, or a draw of
        ``SectionAugment.draw``), ``patches`` is the ``(N, 3, H, W)`` section and each pass is made chunk by
        chunk inside the encoder, also when a checkpointed chunk is recomputed: the augmented copies of the
        section are never held together.
        """
        if views is not None:
            tokens = torch.stack([self._encode_view(patches, view) for view in views])
        else:
            if patches.dim() == 4:
                patches = patches.unsqueeze(0)
            b, n = patches.shape[:2]
            stats = None
            if self.arch.section_norm:
                mean, std = section_channel_statistics(patches)
                stats = (mean.repeat_interleave(n, 0), std.repeat_interleave(n, 0))
            tokens = self.encode_patches(patches.flatten(0, 1), stats).view(b, n, -1)
        if self.x_embed is not None:
            tokens = tokens + (self.x_embed(positions[:, 0]) + self.y_embed(positions[:, 1])).unsqueeze(0)
        return self.gnn(self.transformer(tokens), edge_index)

    def _encode_view(self, patches: torch.Tensor, view: tuple | None) -> torch.Tensor:
        stats = None
        if self.arch.section_norm:
            mean, std = section_channel_statistics(patches.unsqueeze(0), view=view)
            stats = (mean.expand(len(patches), -1, -1, -1), std.expand(len(patches), -1, -1, -1))
        return self.encode_patches(patches, stats, view)

    def encode_patches(
        self,
        patches: torch.Tensor,
        stats: tuple[torch.Tensor, torch.Tensor] | None = None,
        view: tuple | None = None,
    ) -> torch.Tensor:
        """Tokens of ``(M, 3, H, W)`` patches, converted to float ``encoder_chunk`` patches at a time.

        ``stats`` are per-patch channel means and standard deviations ``(M, 3, 1, 1)`` to standardise by
        (``section_norm``); ``view`` a draw of ``SectionAugment.draw`` to apply to each chunk first.

        The chunking does not change the result: training without ``gradient_checkpointing`` encodes all
        patches at once (their activations are kept for the backward pass anyway), and prediction with
        ``section_batchnorm`` normalises every chunk by the statistics of the whole section, collected first
        layer by layer. With ``gradient_checkpointing`` each chunk of ``checkpoint_chunk`` patches is
        checkpointed (only the tokens are kept and the chunk is recomputed in the backward pass), and its
        BatchNorm uses the chunk's statistics: the one case where chunks matter.
        """
        training = torch.is_grad_enabled() and self.training
        if training and not self.gradient_checkpointing:
            # every activation is kept for the backward pass anyway: one batch, so BatchNorm sees all patch rows
            return self._encode_chunk(patches, stats, view)
        size = self.checkpoint_chunk if self.gradient_checkpointing else self.encoder_chunk
        if patches.shape[0] <= size:
            return self._encode_chunk(patches, stats, view)
        parts = patches.split(size)
        part_stats = zip(stats[0].split(size), stats[1].split(size), strict=True) if stats else [None] * len(parts)
        chunks = [(part, part_stat, view) for part, part_stat in zip(parts, part_stats, strict=True)]
        if torch.is_grad_enabled():
            return torch.cat([checkpoint(self._encode_chunk, *c, use_reentrant=False) for c in chunks])
        if self.training or not self.arch.section_batchnorm:  # running averages: chunks change nothing
            return torch.cat([self._encode_chunk(*c) for c in chunks])
        # the section's own statistics, collected over all chunks first, whatever the chunk size
        section_statistics_over_chunks(self.encoder, self._encode_chunk, chunks)
        try:
            return torch.cat([self._encode_chunk(*c) for c in chunks])
        finally:
            release_section_statistics(self.encoder)

    def _encode_chunk(
        self,
        patches: torch.Tensor,
        stats: tuple[torch.Tensor, torch.Tensor] | None = None,
        view: tuple | None = None,
    ) -> torch.Tensor:
        if view is not None:
            patches = SectionAugment.transform(patches, *view)
        x = patches.float()
        if stats is not None:
            x = (x - stats[0]) / stats[1]
        elif self.arch.pixel_scale != 1.0:
            x = x * self.arch.pixel_scale
        return self.encoder(x)

    def forward(self, patches: torch.Tensor, positions: torch.Tensor, edge_index: torch.Tensor) -> Hist2STOutput:
        h = self.encode(patches, positions, edge_index)
        return Hist2STOutput(self.gene_head(h), h)

    def __repr__(self) -> str:
        n_params = sum(p.numel() for p in self.parameters())
        return f"{type(self).__name__}(n_genes={self.arch.n_genes}, dim={self.arch.dim}, parameters={n_params:,})"
