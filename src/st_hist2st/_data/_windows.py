"""Split a large section into overlapping spatial windows, so that the network's cost is linear in its spots.

Each window is a *core* (a compact block of spots, the cores partitioning the section) plus a *margin*: every
spot that reaches a core spot within ``margin`` hops of the spot graph. A spot is predicted once, by the
window whose core holds it, so the graph network (whose reach is its number of layers) sees its whole
neighbourhood there and gives the same output as on the whole section; only the Transformer, which attends
over the whole window, sees less than the whole section.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from st_hist2st._constants import DEFAULT_MAX_SPOTS

__all__ = ["DEFAULT_MAX_SPOTS", "Window", "check_max_spots", "plan_windows", "window_edges"]


@dataclass(frozen=True)
class Window:
    """One window of a section.

    Attributes
    ----------
    members
        Sorted indices of the window's spots (core and margin) in the section.
    core
        Positions within ``members`` of the spots this window predicts.
    """

    members: np.ndarray
    core: np.ndarray

    @property
    def n_spots(self) -> int:
        """Spots in the window, margin included."""
        return len(self.members)


def check_max_spots(max_spots: int | None, argument: str = "max_spots") -> int | None:
    """``max_spots`` as an int, or ``None`` (no windows); a clear error for anything else."""
    if max_spots is None:
        return None
    if isinstance(max_spots, bool) or not isinstance(max_spots, int | np.integer) or max_spots < 2:
        raise ValueError(
            f"`{argument}` must be an integer of at least 2 (spots per window), or None for whole sections; "
            f"got {max_spots!r}."
        )
    return int(max_spots)


def incoming_reach(edge_index: torch.Tensor | np.ndarray, n_spots: int) -> sp.csr_matrix:
    """Sparse ``(n, n)`` matrix ``M`` with ``M[src, dst] = 1`` for each edge: ``M @ x`` marks the spots sending to ``x``."""
    edge_index = np.asarray(edge_index)
    src, dst = edge_index[0], edge_index[1]
    return sp.csr_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(n_spots, n_spots))


def expand(mask: np.ndarray, reach: sp.csr_matrix, hops: int) -> np.ndarray:
    """``mask`` grown by every spot whose messages reach it within ``hops`` layers of the graph network."""
    mask = mask.copy()
    for _ in range(hops):
        grown = mask | ((reach @ mask.astype(np.int8)) > 0)
        if (grown == mask).all():
            break
        mask = grown
    return mask


def plan_windows(
    positions: np.ndarray | torch.Tensor,
    edge_index: np.ndarray | torch.Tensor,
    max_spots: int | None,
    margin: int,
) -> list[Window]:
    """Windows of at most ``max_spots`` spots whose cores partition the section.

    The section is halved along its longer side at the median spot, again and again (a k-d tree), until each
    block together with its margin of ``margin`` graph hops holds at most ``max_spots`` spots.

    Parameters
    ----------
    positions
        ``(n, 2)`` spot positions (grid or coordinates; only their order along each axis matters).
    edge_index
        ``(2, E)`` spot graph, messages from row 0 to row 1.
    max_spots
        Largest window, margin included; ``None`` for one window over the whole section.
    margin
        Graph hops around each core (the graph network's layers).

    Raises
    ------
    ValueError
        When a single spot and its margin already exceed ``max_spots``.
    """
    positions = np.asarray(positions, dtype=np.float64)
    n = len(positions)
    everything = np.arange(n)
    if max_spots is None or n <= max_spots:
        return [Window(everything, everything)]
    reach = incoming_reach(edge_index, n)
    windows: list[Window] = []
    pending = [everything]
    while pending:
        block = pending.pop()
        mask = np.zeros(n, dtype=bool)
        mask[block] = True
        members = np.flatnonzero(expand(mask, reach, margin))
        if len(members) <= max_spots:
            windows.append(Window(members, np.searchsorted(members, np.sort(block))))
            continue
        if len(block) == 1:
            raise ValueError(
                f"One spot and its {margin}-hop neighbourhood hold {len(members)} spots, more than "
                f"`max_spots={max_spots}`; raise `max_spots` or check the spot graph (`connectivity_key`)."
            )
        extent = np.ptp(positions[block], axis=0)
        axis = int(np.argmax(extent))
        order = np.lexsort((positions[block, 1 - axis], positions[block, axis]))
        half = len(block) // 2
        pending.extend([block[order[half:]], block[order[:half]]])  # depth first: neighbouring windows in turn
    return windows


def window_edges(edge_index: torch.Tensor, members: np.ndarray, n_spots: int) -> torch.Tensor:
    """The edges among ``members``, renumbered to their positions in ``members``."""
    local = torch.full((n_spots,), -1, dtype=torch.long, device=edge_index.device)
    index = torch.as_tensor(members, dtype=torch.long, device=edge_index.device)
    local[index] = torch.arange(len(members), device=edge_index.device)
    src, dst = local[edge_index[0]], local[edge_index[1]]
    keep = (src >= 0) & (dst >= 0)
    return torch.stack([src[keep], dst[keep]])
