"""Prepared sections as a torch dataset: one section (or window of one) per training step."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from st_hist2st._data._section import Section
from st_hist2st.nn._plan import step_seed


class SectionDataset(torch.utils.data.Dataset):
    """Sections as dicts of tensors, each ``repeats`` times per epoch."""

    def __init__(self, sections: Sequence[Section], repeats: int = 1) -> None:
        self.items = [section_batch(s) for s in sections]
        self.repeats = repeats

    def __len__(self) -> int:
        return len(self.items) * self.repeats

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.items[index % len(self.items)]


def section_batch(section: Section) -> dict[str, torch.Tensor]:
    """The tensors of a section that the model needs."""
    batch = {"patches": section.patches, "positions": section.positions, "edge_index": section.edge_index}
    for name in ("targets", "counts", "size_factors"):
        if getattr(section, name) is not None:
            batch[name] = getattr(section, name)
    return batch


def target_statistics(sections: Sequence[Section]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-gene mean and variance of the targets over all spots of ``sections``."""
    targets = torch.cat([s.targets for s in sections]).double()
    return targets.mean(0), targets.var(0, unbiased=False)


def count_statistics(sections: Sequence[Section]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-gene mean and variance of the counts divided by the size factors, over all spots of ``sections``.

    These are the counts of a spot of median size, the scale of the ZINB mean; ``None`` without counts.
    """
    if any(s.counts is None or s.size_factors is None for s in sections):
        return None
    scaled = torch.cat([s.counts.double() / s.size_factors.double().clamp_min(1e-8)[:, None] for s in sections])
    return scaled.mean(0), scaled.var(0, unbiased=False)


class EpochShuffle(torch.utils.data.Sampler):
    """A random order of ``n`` items drawn from ``seed`` and the epoch (Lightning calls ``set_epoch``).

    The order does not depend on the random draws made before, so a fit resumed at any epoch sees the sections
    in the order an uninterrupted one does.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the order of ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        generator = torch.Generator().manual_seed(step_seed(self.seed, self.epoch, rank=1))
        return iter(torch.randperm(self.n, generator=generator).tolist())


def identity_collate(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each batch is one section already: nothing to collate."""
    return batch
