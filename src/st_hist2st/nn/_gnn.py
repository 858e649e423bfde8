from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from torch_geometric.nn import MessagePassing


class GraphSAGE(MessagePassing):
    r"""Hist2ST's GraphSAGE layer in "gcn" mode.

    .. math::
        \mathbf{x}'_i = \frac{\sigma(\mathbf{W} \, \mathrm{agg}_{j \in \mathcal{N}(i)} \mathbf{x}_j)}
        {\lVert \sigma(\mathbf{W} \, \mathrm{agg}_{j \in \mathcal{N}(i)} \mathbf{x}_j) \rVert_2}

    with :math:`\mathrm{agg}` the mean (``policy='mean'``) or maximum (``'max'``) over the neighbours of
    :math:`i` (the spot itself excluded), :math:`\sigma` the ReLU and :math:`\mathbf{W}` without bias. A spot
    without neighbours gets a zero vector.

    Parameters
    ----------
    in_channels, out_channels
        Feature sizes.
    policy
        ``'mean'`` or ``'max'`` aggregation.

    Shapes
    ------
    input ``x`` ``(*, N, in_channels)`` and ``edge_index`` ``(2, E)`` (messages from row 0 to row 1) or, for
    ``policy='mean'``, the sparse row-normalised adjacency of :func:`mean_adjacency`; output
    ``(*, N, out_channels)``.
    """

    def __init__(self, in_channels: int, out_channels: int, policy: str = "mean") -> None:
        if policy not in ("mean", "max"):
            raise ValueError(f"`policy` must be 'mean' or 'max', got {policy!r}.")
        super().__init__(aggr=policy, node_dim=-2)
        self.in_channels, self.out_channels, self.policy = in_channels, out_channels, policy
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform weight, as the original."""
        super().reset_parameters()
        nn.init.xavier_uniform_(self.weight)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        h = self.propagate(edge_index, x=x)
        return F.normalize(F.relu(F.linear(h, self.weight)), p=2.0, dim=-1)

    def message(self, x_j: torch.Tensor) -> torch.Tensor:
        return x_j

    def message_and_aggregate(self, adj_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Mean aggregation as one sparse product with the row-normalised adjacency of :func:`mean_adjacency`."""
        if self.policy != "mean":
            raise ValueError("A sparse adjacency is only supported with `policy='mean'`; pass an edge index.")
        n = x.shape[-2]
        lead = x.shape[:-2]
        flat = x.movedim(-2, 0).reshape(n, -1)
        with torch.autocast(x.device.type, enabled=False):  # no sparse bf16 kernel on CPU
            out = torch.sparse.mm(adj_t, flat.to(adj_t.dtype)).to(x.dtype)
        return out.view(n, *lead, -1).movedim(0, -2)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.in_channels}, {self.out_channels}, policy={self.policy!r})"


def mean_adjacency(edge_index: torch.Tensor, num_nodes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sparse CSR ``(N, N)`` matrix with ``1 / in-degree(i)`` at ``(i, j)`` for each edge ``j -> i``."""
    src, dst = edge_index
    deg = torch.zeros(num_nodes, dtype=dtype, device=edge_index.device).index_add_(
        0, dst, torch.ones_like(dst, dtype=dtype)
    )
    values = 1.0 / deg[dst]
    with warnings.catch_warnings():  # torch calls its sparse CSR support beta
        warnings.simplefilter("ignore", UserWarning)
        adj = torch.sparse_coo_tensor(torch.stack([dst, src]), values, (num_nodes, num_nodes))
        return adj.coalesce().to_sparse_csr()


def lstm_mean(lstm: nn.LSTM, x: torch.Tensor) -> torch.Tensor:
    """Run ``lstm`` (zero initial state, batch second) over ``x`` ``(T, B, D)`` and average its outputs over time.

    Same arithmetic as :class:`torch.nn.LSTM`, written so that the input projection of all time steps is one
    large matrix product and the recurrent product at the first step (on a zero state) is skipped: faster on
    CPUs than the fused kernel for the short sequences of jumping knowledge.
    """
    for layer in range(lstm.num_layers):
        w_ih, w_hh = getattr(lstm, f"weight_ih_l{layer}"), getattr(lstm, f"weight_hh_l{layer}")
        bias = getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}") if lstm.bias else None
        gates_x = F.linear(x, w_ih, bias)
        h = c = None
        outputs = []
        for step in gates_x.unbind(0):  # unbind, not indexing: its backward does not zero-fill per step
            gates = step if h is None else torch.addmm(step, h, w_hh.t())
            i, f, g, o = gates.chunk(4, dim=-1)
            i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
            c = i * g if c is None else f * c + i * g
            h = o * torch.tanh(c)
            outputs.append(h)
        x = torch.stack(outputs)
    return x.mean(0)


def _stacked_lstm_mean(lstm: nn.LSTM, *steps: torch.Tensor) -> torch.Tensor:
    return lstm_mean(lstm, torch.stack(steps))


class GraphJumpingKnowledge(nn.Module):
    r"""``depth`` :class:`GraphSAGE` layers whose outputs a 2-layer LSTM reads as a sequence; its outputs averaged.

    Shapes
    ------
    input ``x`` ``(B, N, dim)`` and ``edge_index`` ``(2, E)``; output ``(B, N, dim)``.
    """

    def __init__(self, dim: int, depth: int = 4, policy: str = "mean", lstm_layers: int = 2) -> None:
        super().__init__()
        self.dim, self.depth = dim, depth
        self.layers = nn.ModuleList([GraphSAGE(dim, dim, policy) for _ in range(depth)])
        self.lstm = nn.LSTM(dim, dim, lstm_layers)
        #: With gradient checkpointing, rows of the jumping-knowledge LSTM recomputed together.
        self.lstm_chunk = 64
        self.gradient_checkpointing = False

    def reset_parameters(self) -> None:
        """Re-initialise all weights."""
        for layer in self.layers:
            layer.reset_parameters()
        self.lstm.reset_parameters()

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        graph = edge_index
        if all(layer.policy == "mean" for layer in self.layers) and not edge_index.is_sparse_csr:
            graph = mean_adjacency(edge_index, n)
        recompute = self.gradient_checkpointing and torch.is_grad_enabled()
        outputs = []
        for layer in self.layers:
            x = checkpoint(layer, x, graph, use_reentrant=False) if recompute else layer(x, graph)
            outputs.append(x.reshape(b * n, d))
        if recompute:
            # rows are independent sequences: recompute the LSTM a chunk of rows at a time in the backward pass;
            # each chunk keeps views of the layers' outputs, which the next layers keep anyway, not a stacked copy
            rows = [layer_out.split(self.lstm_chunk) for layer_out in outputs]
            parts = [
                checkpoint(_stacked_lstm_mean, self.lstm, *chunk, use_reentrant=False)
                for chunk in zip(*rows, strict=True)
            ]
            return torch.cat(parts).view(b, n, -1)
        return lstm_mean(self.lstm, torch.stack(outputs)).view(b, n, -1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.dim}, depth={self.depth})"
