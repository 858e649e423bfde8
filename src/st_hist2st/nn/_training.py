from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from st_hist2st._constants import DEFAULT_MAX_SPOTS


@dataclass(frozen=True)
class Training:
    """Optimisation settings; the defaults are the paper's.

    Attributes
    ----------
    learning_rate
        Peak learning rate of Adam.
    schedule
        ``'step'`` (multiply by ``lr_gamma`` every ``lr_step`` epochs, as the paper) or ``'cosine'``
        (cosine decay to 0 over ``max_epochs``).
    lr_step
        Epochs between two steps of the ``'step'`` schedule.
    lr_gamma
        Factor of each step of the ``'step'`` schedule.
    warmup_epochs
        Linear warm-up from 0 over this many epochs.
    weight_decay
        Adam weight decay.
    gradient_clip
        Clip the gradient norm to this value; ``None`` does not clip.
    zinb
        Weight of the ZINB negative log-likelihood.
    pearson
        Weight of a correlation loss, one minus the Pearson r between prediction and target over the spots
        of the section, averaged over genes (:func:`~st_hist2st.nn.correlation_loss`): the measure
        predictions are judged by, indifferent to each gene's level and scale in a section. ``0`` trains on
        the squared error alone, as the paper.
    lamb
        Weight of the self-distillation loss.
    bake
        Augmented passes for self-distillation.
    batch_passes
        Run the clean and the augmented passes as one batch: faster on a GPU, but BatchNorm then normalises
        the clean patches with the augmented copies, which cost held-out accuracy on her2st. ``False`` (the
        default) runs them one after the other, as the original code does.
    max_epochs
        Epochs to train; one step per section.
    crop_fraction
        Train on a random window of the section per step: the spots nearest (on the grid) to a random spot,
        this fraction of them. ``None`` trains on whole sections, as the paper.
    crops_per_section
        Steps on each section per epoch: windows drawn with ``crop_fraction`` or ``max_spots``, else the whole
        section again.
    max_spots
        Most spots in one training step. A larger section (Visium HD bins, pooled cells) is trained on, each
        step, the ``max_spots`` spots nearest (on the grid) to a random spot, and validated in windows as
        :func:`~st_hist2st.tl.predict` predicts; memory then depends on ``max_spots``, not on the section.
        ``None`` trains on whole sections, as the paper.
    dihedral
        Show the clean pass each patch rotated by a random multiple of 90 degrees and mirrored at random (a
        tissue section has no orientation): the network sees new pixels each epoch instead of memorising.
    stain_jitter
        Show the clean pass each patch with its haematoxylin, eosin and DAB amounts varied at random by up to
        this fraction (:func:`~st_hist2st.nn.random_stain_jitter`), as another lab's staining would be;
        ``None`` shows the patches as they are.
    init_output_bias
        Start the bias of the expression head at each gene's mean target over the training spots, so that
        training does not first spend epochs learning the gene means.
    standardize_genes
        Weight each gene's squared error by the inverse of its variance over the training spots (weights
        averaging 1), so that every gene counts alike, as in the mean Pearson r over genes; otherwise the
        few genes of largest variance dominate the loss.
    init_zinb_bias
        Start the biases of the ZINB head at each gene's count distribution over the training spots (mean,
        moment estimate of the dispersion, dropout probability 0.05), so that the ZINB loss does not begin
        with large gradients fitting the gene means through the shared network.
    ema_decay
        Keep an exponential moving average of the weights, updated after every step with this decay
        (``0.99`` averages over about the last 100 steps); validation uses the averaged weights and training
        returns them. Averaging smooths the step-to-step noise of training on a few sections. ``None`` keeps
        the last weights, as the paper.
    gradient_checkpointing
        Recompute the patch encoder, the Transformer blocks, the GNN layers and the jumping-knowledge LSTM in
        the backward pass: about a third slower on a CPU, but only their inputs are kept (sections of
        thousands of spots, or little memory). The encoder then runs on chunks of patches, and its BatchNorm
        normalises each chunk by the chunk's statistics rather than the section's. On a GPU the small
        recomputed pieces cost far more (13 times slower at 5,000 spots on an H200, for a sixth of the
        memory): turn it on there only when memory is short.
    step_in_backward
        Update each weight with Adam as soon as its gradient is complete, during the backward pass, and drop
        that gradient at once, so the gradients of the whole network (0.3 GB at the paper's size) are never
        held together. The updates are the same as after a full backward pass. Needs ``gradient_clip=None``
        (clipping needs the norm over all gradients first), one process (data-parallel training averages
        the gradients only once they are all complete) and no fp16 gradient scaling (bf16 is fine).
    """

    learning_rate: float = 1e-5
    schedule: str = "step"
    lr_step: int = 50
    lr_gamma: float = 0.9
    warmup_epochs: int = 0
    weight_decay: float = 0.0
    gradient_clip: float | None = None
    zinb: float = 0.25
    pearson: float = 0.0
    lamb: float = 0.5
    bake: int = 5
    batch_passes: bool = False
    max_epochs: int = 350
    crop_fraction: float | None = None
    crops_per_section: int = 1
    max_spots: int | None = DEFAULT_MAX_SPOTS
    dihedral: bool = False
    stain_jitter: float | None = None
    init_output_bias: bool = False
    standardize_genes: bool = False
    init_zinb_bias: bool = False
    ema_decay: float | None = None
    gradient_checkpointing: bool = False
    step_in_backward: bool = False

    def __post_init__(self) -> None:
        if self.schedule not in ("step", "cosine"):
            raise ValueError(f"`schedule` must be 'step' or 'cosine', got {self.schedule!r}.")
        if self.learning_rate <= 0:
            raise ValueError(f"`learning_rate` must be positive, got {self.learning_rate}.")
        if self.max_epochs < 1:
            raise ValueError(f"`max_epochs` must be at least 1, got {self.max_epochs}.")
        if self.crop_fraction is not None and not 0 < self.crop_fraction <= 1:
            raise ValueError(f"`crop_fraction` must be in (0, 1], got {self.crop_fraction}.")
        if self.max_spots is not None and (
            isinstance(self.max_spots, bool) or not isinstance(self.max_spots, int) or self.max_spots < 2
        ):
            raise ValueError(f"`max_spots` must be an integer of at least 2, or None; got {self.max_spots!r}.")
        if self.crops_per_section < 1:
            raise ValueError(f"`crops_per_section` must be at least 1, got {self.crops_per_section}.")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"`ema_decay` must be in (0, 1) or None, got {self.ema_decay}.")
        if self.stain_jitter is not None and not 0 < self.stain_jitter < 1:
            raise ValueError(f"`stain_jitter` must be in (0, 1) or None, got {self.stain_jitter}.")
        for name in ("zinb", "lamb", "pearson"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` is a loss weight and must be non-negative, got {getattr(self, name)}.")
        if self.bake < 0:
            raise ValueError(f"`bake` must be non-negative, got {self.bake}.")
        if self.step_in_backward and self.gradient_clip is not None:
            raise ValueError(
                f"`step_in_backward=True` updates each weight before the other gradients exist, so it cannot clip "
                f"their norm (`gradient_clip={self.gradient_clip}`); pass `gradient_clip=None` as well."
            )

    def to_dict(self) -> dict:
        """JSON-safe dictionary."""
        return asdict(self)

    def lr_factor(self, epoch: int) -> float:
        """Multiplier of the learning rate in ``epoch`` (0-based)."""
        import math

        if self.warmup_epochs and epoch < self.warmup_epochs:
            return (epoch + 1) / (self.warmup_epochs + 1)
        if self.schedule == "cosine":
            span = max(1, self.max_epochs - self.warmup_epochs)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (epoch - self.warmup_epochs) / span)))
        return self.lr_gamma ** (epoch // self.lr_step)


TRAINING_FIELDS = frozenset(f.name for f in fields(Training))

#: The preset of :func:`~st_hist2st.tl.fit`, :class:`~st_hist2st.Hist2ST` and ``hist2st fit`` when none is named.
DEFAULT_PRESET = "blend"

# pixel_scale matters only where section_norm is turned off
_FAST_ARCHITECTURE = {
    "position_embedding": False,
    "section_norm": True,
    "section_batchnorm": True,
    "pixel_scale": 1 / 255,
    "dropout": 0.4,
}
_FAST_TRAINING = Training(
    learning_rate=1e-4,
    schedule="cosine",
    warmup_epochs=5,
    gradient_clip=1.0,
    zinb=0.0,
    bake=0,
    crops_per_section=4,
    max_epochs=40,
)

_WIDE_ARCHITECTURE = {**_FAST_ARCHITECTURE, "field_of_view": 4.0}
_WIDE_TRAINING = replace(_FAST_TRAINING, dihedral=True)

#: Named settings. ``'paper'`` reproduces the published network and training; ``'fast'`` is what generalises to
#: held-out her2st sections within a CPU budget of minutes; ``'wide'`` is ``'fast'`` seeing four spot diameters
#: around each spot in random rotations and mirrors; ``'blend'`` (the default) is ``'wide'`` with a ridge on colour
#: and texture features of each patch, projected onto a few expression programmes, with a forest of randomised
#: trees beside it (the programmes, the forest's share and its leaves as leaving out one training section at a time
#: favours), reading each section with its stains mapped onto the training sections', blended into its predictions.
#: Nested validation chose ``'wide'`` over ``'fast'``, the blend's weight with its forest, those ways of choosing the
#: ridge's rank and forest, and the mapped stains (see the documentation page on the model).
PRESETS: dict[str, dict] = {
    "paper": {"architecture": {}, "training": Training()},
    "fast": {"architecture": _FAST_ARCHITECTURE, "training": _FAST_TRAINING},
    "wide": {"architecture": _WIDE_ARCHITECTURE, "training": _WIDE_TRAINING},
    "blend": {
        "architecture": {
            **_WIDE_ARCHITECTURE,
            "colour_ridge": 0.75,
            "colour_ridge_rank": "auto",
            "colour_ridge_trees": "auto",
            "colour_ridge_stains": True,
        },
        "training": _WIDE_TRAINING,
    },
}


def check_settings(settings: dict) -> None:
    """One error naming every unknown setting, with the valid names of :class:`Architecture` and :class:`Training`."""
    import difflib

    from st_hist2st.nn._module import Architecture

    architecture = sorted(f.name for f in fields(Architecture) if f.name != "n_genes")
    unknown = [k for k in settings if k not in TRAINING_FIELDS and k not in architecture and k != "n_genes"]
    if not unknown:
        return
    common = {"lr": "learning_rate", "epochs": "max_epochs", "n_epochs": "max_epochs", "clip": "gradient_clip"}
    hints = []
    for key in unknown:
        close = [common[key]] if key in common else difflib.get_close_matches(key, [*architecture, *TRAINING_FIELDS])
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise TypeError(
        f"Unknown setting(s) {', '.join(hints)}. Architecture settings: {', '.join(architecture)}. "
        f"Training settings: {', '.join(sorted(TRAINING_FIELDS))}."
    )


#: Architecture settings renamed in 0.2 (``zinb`` named both the head and the loss weight).
RENAMED_ARCHITECTURE = {"distillation": "distillation_head"}


def preset(name: str, **overrides) -> tuple[dict, Training]:
    """Architecture overrides and :class:`Training` of the preset ``name``, with ``overrides`` applied.

    The ZINB and distillation heads are built only where their losses are used, unless ``zinb_head`` or
    ``distillation_head`` is given.
    """
    import warnings

    for old, new in RENAMED_ARCHITECTURE.items():
        if old in overrides:
            warnings.warn(
                f"The setting `{old}` is now `{new}`; the old name will be removed in the next release.",
                FutureWarning,
                stacklevel=4,
            )
            overrides[new] = overrides.pop(old)
    if name not in PRESETS:
        raise ValueError(f"Unknown `preset={name!r}`; choose one of {list(PRESETS)}.")
    check_settings(overrides)
    arch = dict(PRESETS[name]["architecture"])
    training = PRESETS[name]["training"]
    train_over = {k: v for k, v in overrides.items() if k in TRAINING_FIELDS}
    arch.update({k: v for k, v in overrides.items() if k not in TRAINING_FIELDS})
    training = replace(training, **train_over)
    arch.setdefault("zinb_head", training.zinb > 0)
    arch.setdefault("distillation_head", training.bake > 0 and training.lamb > 0)
    if training.zinb > 0 and not arch["zinb_head"]:
        raise ValueError(f"`zinb={training.zinb}` weights a ZINB loss, which needs `zinb_head=True`.")
    if training.bake > 0 and training.lamb > 0 and not arch["distillation_head"]:
        raise ValueError(
            f"`bake={training.bake}` distillation passes need `distillation_head=True` (or `lamb=0` or `bake=0`)."
        )
    return arch, training
