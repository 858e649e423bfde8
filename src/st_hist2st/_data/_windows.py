"""Split a large section into spatial windows, so that the network's cost is linear in its spots.

Each window is a *block* (a compact set of at most ``max_spots`` spots, the blocks partitioning the section)
plus a *margin*: every spot that reaches a block spot within ``margin`` hops of the spot graph. A spot is
predicted once, by the window whose block holds it: the Transformer attends over the block (and a sample of
the section standing for the rest), and the graph network runs on block and margin, so it sees every block
spot's whole neighbourhood and gives the same output as on the whole section.
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
        Sorted indices of the window's spots (block and margin) in the section.
    core
        Positions within ``members`` of the block: the spots this window predicts.
    """

    members: np.ndarray
    core: np.ndarray


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


def on_host(values: torch.Tensor | np.ndarray) -> np.ndarray:
    """``values`` as a NumPy array, copied off the GPU where they lie there (validation runs on the device)."""
    return values.cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def incoming_reach(edge_index: torch.Tensor | np.ndarray, n_spots: int) -> sp.csr_matrix:
    """Sparse ``(n, n)`` matrix ``M`` with ``M[src, dst] = 1`` for each edge: ``M @ x`` marks the spots sending to ``x``."""
    edge_index = on_host(edge_index)
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
    """Windows whose blocks (``core``) of at most ``max_spots`` spots partition the section.

    The section is halved along its longer side at the median spot, again and again (a k-d tree), until each
    block holds at most ``max_spots`` spots; each window's ``members`` are its block and every spot within
    ``margin`` graph hops of it.

    Parameters
    ----------
    positions
        ``(n, 2)`` spot positions (grid or coordinates; only their order along each axis matters).
    edge_index
        ``(2, E)`` spot graph, messages from row 0 to row 1.
    max_spots
        Largest block; ``None`` for one window over the whole section.
    margin
        Graph hops around each block (the graph network's layers).
    """
    positions = on_host(positions).astype(np.float64, copy=False)
    n = len(positions)
    everything = np.arange(n)
    if max_spots is None or n <= max_spots:
        return [Window(everything, everything)]
    reach = incoming_reach(edge_index, n)
    windows: list[Window] = []
    pending = [everything]
    while pending:
        block = pending.pop()
        if len(block) <= max_spots:
            mask = np.zeros(n, dtype=bool)
            mask[block] = True
            members = np.flatnonzero(expand(mask, reach, margin))
            windows.append(Window(members, np.searchsorted(members, np.sort(block))))
            continue
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
