from __future__ import annotations

import torch
from torch import nn

_TWO_31 = 2**31


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout, the same distribution as :func:`torch.nn.functional.dropout`.

    The keep mask comes from 31-bit random integers (``p`` resolved to 2**-31): on CPU that is about twice as
    fast as the Bernoulli sampling behind the built-in dropout, which otherwise takes a tenth of a training step.
    """
    if not training or p == 0.0:
        return x
    if p >= 1.0:
        return torch.zeros_like(x)
    bits = torch.empty(x.shape, dtype=torch.int32, device=x.device).random_()  # uniform on [0, 2**31)
    keep = bits >= int(p * _TWO_31)
    return x * keep * (1.0 / (1.0 - p))


class Dropout(nn.Module):
    """:func:`dropout` as a module; a drop-in for :class:`torch.nn.Dropout`."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}.")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
