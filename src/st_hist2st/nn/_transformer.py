from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from st_hist2st.nn._dropout import Dropout, dropout


class Attention(nn.Module):
    r"""Multi-head self-attention without bias on q, k, v, with an output projection and dropout.

    Without dropout on the attention weights (``attn_dropout=0`` or in eval mode) it uses
    :func:`torch.nn.functional.scaled_dot_product_attention`, so no ``N x N`` matrix is kept where a fused kernel
    exists; with that dropout, the weights are computed explicitly.

    ``key_bias`` ``(N,)`` is added to every query's score of each key: ``log(w)`` makes a key count as ``w``
    keys alike (a sampled token standing for ``w`` spots).

    Shapes
    ------
    input ``(B, N, dim)``, output ``(B, N, dim)``.
    """

    def __init__(
        self, dim: int, heads: int = 16, dim_head: int = 64, dropout: float = 0.0, attn_dropout: float | None = None
    ) -> None:
        super().__init__()
        self.dim, self.heads, self.dim_head = dim, heads, dim_head
        self.dropout = dropout if attn_dropout is None else attn_dropout
        inner = heads * dim_head
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), Dropout(dropout))
        #: With dropout on the attention weights, recompute them one sequence of the batch at a time in the
        #: backward pass, so the weights of only one sequence are held at once.
        self.gradient_checkpointing = False

    def reset_parameters(self) -> None:
        """Re-initialise all weights."""
        self.to_qkv.reset_parameters()
        self.to_out[0].reset_parameters()

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.to_qkv(x).view(b, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        bias = None if key_bias is None else key_bias.to(q.dtype).view(1, 1, 1, n)
        if self.training and self.dropout > 0:
            # dropout on the attention weights needs them in memory anyway: compute them explicitly
            if self.gradient_checkpointing and torch.is_grad_enabled() and b > 1:
                parts = zip(q.split(1), k.split(1), v.split(1), strict=True)
                out = torch.cat(
                    [checkpoint(self._dropped_attention, *part, bias, use_reentrant=False) for part in parts]
                )
            else:
                out = self._dropped_attention(q, k, v, bias)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.to_out(out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head))

    def _dropped_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        scores = (q * self.dim_head**-0.5) @ k.transpose(-2, -1)
        if bias is not None:
            scores = scores + bias
        return dropout(torch.softmax(scores, dim=-1), self.dropout) @ v

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.dim}, heads={self.heads}, dim_head={self.dim_head})"


class TransformerBlock(nn.Module):
    r"""Pre-norm Transformer block: ``x + Attention(LN(x))``, then ``x + FF(LN(x))`` with FF = Linear, GELU, Linear.

    Shapes
    ------
    input ``(B, N, dim)``, output ``(B, N, dim)``.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 16,
        dim_head: int = 64,
        mlp_dim: int | None = None,
        dropout: float = 0.0,
        attn_dropout: float | None = None,
    ):
        super().__init__()
        mlp_dim = dim if mlp_dim is None else mlp_dim
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dim_head, dropout, attn_dropout)
        self.ff_norm = nn.LayerNorm(dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, mlp_dim), nn.GELU(), Dropout(dropout), nn.Linear(mlp_dim, dim), Dropout(dropout)
        )

    def reset_parameters(self) -> None:
        """Re-initialise all weights."""
        for module in (self.attn_norm, self.attn, self.ff_norm, self.ff[0], self.ff[3]):
            module.reset_parameters()

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), key_bias)
        return x + self.ff(self.ff_norm(x))


class Transformer(nn.Module):
    r"""``depth`` pre-norm Transformer blocks over all spots of a section as one sequence.

    Shapes
    ------
    input ``(B, N, dim)``, output ``(B, N, dim)``.
    """

    def __init__(
        self,
        dim: int,
        depth: int = 8,
        heads: int = 16,
        dim_head: int = 64,
        dropout: float = 0.0,
        attn_dropout: float | None = None,
    ) -> None:
        super().__init__()
        self.dim, self.depth, self.heads = dim, depth, heads
        self.blocks = nn.ModuleList(
            [TransformerBlock(dim, heads, dim_head, dim, dropout, attn_dropout) for _ in range(depth)]
        )
        self.gradient_checkpointing = False

    @property
    def gradient_checkpointing(self) -> bool:
        """Keep only each block's input and recompute the block in the backward pass."""
        return self._gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, value: bool) -> None:
        self._gradient_checkpointing = bool(value)
        for block in self.blocks:
            block.attn.gradient_checkpointing = bool(value)

    def reset_parameters(self) -> None:
        """Re-initialise all weights."""
        for block in self.blocks:
            block.reset_parameters()

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor | None = None) -> torch.Tensor:
        """``key_bias`` ``(N,)``: added to every score of each key (see :class:`Attention`)."""
        recompute = self.gradient_checkpointing and torch.is_grad_enabled()
        for block in self.blocks:
            x = checkpoint(block, x, key_bias, use_reentrant=False) if recompute else block(x, key_bias)
        return x

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.dim}, depth={self.depth}, heads={self.heads})"
