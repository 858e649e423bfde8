from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from st_hist2st.nn._dropout import Dropout


class StatisticsCollected(Exception):
    """Raised by a :class:`SectionBatchNorm2d` that collects statistics, to stop the rest of the forward pass."""


class SectionBatchNorm2d(nn.BatchNorm2d):
    """:class:`torch.nn.BatchNorm2d` that can also normalise by the statistics of its input in eval mode.

    With ``section_statistics=True`` and in eval mode it normalises each channel by the mean and variance of
    the batch it is given (the patches of the section being predicted), as it does in training, and leaves the
    running averages as they are. The weights are those of a :class:`~torch.nn.BatchNorm2d`.

    When a section is encoded in chunks, :func:`section_statistics_over_chunks` first collects each layer's
    statistics over all chunks (``collect``), then normalises every chunk by them (``fixed``), so that the
    chunking does not change the result.
    """

    def __init__(self, num_features: int, section_statistics: bool = False) -> None:
        super().__init__(num_features)
        self.section_statistics = section_statistics
        #: Running sums (count, sum, sum of squares) while collecting statistics over chunks.
        self.collect: list | None = None
        #: Mean and (biased) variance to normalise by, collected over all chunks of a section.
        self.fixed: tuple[torch.Tensor, torch.Tensor] | None = None
        #: Normalise the next input by its own statistics and keep them in ``fixed`` (a section in one chunk).
        self.record = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not self.section_statistics:
            return super().forward(x)
        if self.record:
            var, mean = torch.var_mean(x.float(), dim=(0, 2, 3), unbiased=False)
            self.fixed, self.record = (mean, var), False
            return self.normalise(x, mean, var)
        if self.collect is not None:
            x64 = x.double()
            self.collect[0] += x.shape[0] * x.shape[2] * x.shape[3]
            self.collect[1] = self.collect[1] + x64.sum((0, 2, 3))
            self.collect[2] = self.collect[2] + x64.square().sum((0, 2, 3))
            raise StatisticsCollected
        if self.fixed is not None:
            return self.normalise(x, *self.fixed)
        # by the input's own statistics, differentiable through them
        return F.batch_norm(x.float(), None, None, self.weight, self.bias, True, 0.0, self.eps).to(x.dtype)

    def normalise(self, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        """``x`` normalised by ``mean`` and ``var``, in fp32 (bfloat16 input with fp32 weights fails on a CPU)."""
        out = F.batch_norm(x.float(), mean.float(), var.float(), self.weight, self.bias, False, 0.0, self.eps)
        return out.to(x.dtype)


def section_statistics_over_chunks(module: nn.Module, encode_chunk, chunks: list) -> None:
    """Fix each section-statistics BatchNorm of ``module`` to the statistics of its input over all ``chunks``.

    Layer by layer, in forward order, every chunk is encoded up to the layer (the layers before it already
    fixed), its input summed, and the pass stopped there. Undo with :func:`release_section_statistics`.
    """
    layers = [m for m in module.modules() if isinstance(m, SectionBatchNorm2d) and m.section_statistics]
    for layer in layers:
        layer.collect = [0, 0.0, 0.0]
        for chunk in chunks:
            try:
                encode_chunk(*chunk)
            except StatisticsCollected:
                pass
        count, total, squares = layer.collect
        mean = total / count
        layer.fixed = (mean, (squares / count - mean.square()).clamp_min(0))
        layer.collect = None


def section_statistics_in_one_pass(module: nn.Module, encode_chunk, chunk: tuple) -> None:
    """Fix each section-statistics BatchNorm of ``module`` to the statistics of its input over one ``chunk``.

    One forward pass in which every layer normalises by its input's statistics, as in training, and keeps
    them: what :func:`section_statistics_over_chunks` finds for a single chunk, at the cost of one pass.
    """
    for layer in module.modules():
        if isinstance(layer, SectionBatchNorm2d) and layer.section_statistics:
            layer.record = True
    encode_chunk(*chunk)


def release_section_statistics(module: nn.Module) -> None:
    """Let the section-statistics BatchNorms of ``module`` use each input's own statistics again."""
    for layer in module.modules():
        if isinstance(layer, SectionBatchNorm2d):
            layer.collect, layer.fixed, layer.record = None, None, False


class ConvMixerBlock(nn.Module):
    r"""One ConvMixer block of Hist2ST.

    Two depthwise convolutions (each followed by BatchNorm and GELU) with a residual connection, then a
    pointwise convolution, GELU and BatchNorm.

    Parameters
    ----------
    channels
        Feature channels.
    kernel_size
        Side of the depthwise kernels (``same`` padding).

    Shapes
    ------
    input ``(B, channels, H, W)``, output ``(B, channels, H, W)``.
    """

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.channels, self.kernel_size = channels, kernel_size
        self.depthwise = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size, groups=channels, padding="same"),
            SectionBatchNorm2d(channels),
            nn.GELU(),
            nn.Conv2d(channels, channels, kernel_size, groups=channels, padding="same"),
            SectionBatchNorm2d(channels),
            nn.GELU(),
        )
        self.pointwise = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.GELU(), SectionBatchNorm2d(channels))

    def reset_parameters(self) -> None:
        """Re-initialise all weights."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.BatchNorm2d):
                module.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x) + x)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.channels}, kernel_size={self.kernel_size})"


class PatchEncoder(nn.Module):
    r"""Image patch to spot token: patch embedding, dropout, ConvMixer, 1x1 reduction, flatten.

    Parameters
    ----------
    fig_size
        Side of the input patch in pixels.
    patch_size
        Kernel and stride of the patch embedding.
    channels
        Channels of the ConvMixer.
    kernel_size
        Depthwise kernel of the ConvMixer.
    depth
        Number of ConvMixer blocks.
    dropout
        Dropout on the patch embedding.

    Shapes
    ------
    input ``(B, 3, fig_size, fig_size)``, output ``(B, dim)`` with
    ``dim = (fig_size // patch_size) ** 2 * channels // 8``.
    """

    def __init__(
        self,
        fig_size: int = 112,
        patch_size: int = 7,
        channels: int = 32,
        kernel_size: int = 5,
        depth: int = 2,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if channels % 8:
            raise ValueError(f"`channel` must be a multiple of 8, got {channels}.")
        self.fig_size, self.patch_size, self.channels = fig_size, patch_size, channels
        self.embed = nn.Conv2d(3, channels, patch_size, patch_size)
        self.dropout = Dropout(dropout)
        self.mixer = nn.Sequential(*[ConvMixerBlock(channels, kernel_size) for _ in range(depth)])
        self.reduce = nn.Conv2d(channels, channels // 8, 1)

    @property
    def dim(self) -> int:
        """Size of the token of a spot."""
        return (self.fig_size // self.patch_size) ** 2 * self.channels // 8

    def reset_parameters(self) -> None:
        """Re-initialise all weights."""
        self.embed.reset_parameters()
        self.reduce.reset_parameters()
        for block in self.mixer:
            block.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels-last halves the time of the depthwise convolutions on CPU (oneDNN)
        x = self.mixer(self.dropout(self.embed(x.contiguous(memory_format=torch.channels_last))))
        return self.reduce(x).flatten(1)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(fig_size={self.fig_size}, patch_size={self.patch_size}, "
            f"channels={self.channels}, depth={len(self.mixer)}, dim={self.dim})"
        )
