from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ExpressionHead(nn.Module):
    r"""LayerNorm then Linear: the predicted (transformed) expression.

    Shapes
    ------
    input ``(*, dim)``, output ``(*, n_genes)``.
    """

    def __init__(self, dim: int, n_genes: int) -> None:
        super().__init__()
        self.norm, self.linear = nn.LayerNorm(dim), nn.Linear(dim, n_genes)

    def reset_parameters(self) -> None:
        """Re-initialise all weights."""
        self.norm.reset_parameters()
        self.linear.reset_parameters()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(h))


class ZINBHead(nn.Module):
    r"""Zero-inflated negative binomial parameters per spot and gene.

    mean = clamp(exp(Linear), 1e-5, 1e6), dispersion = clamp(softplus(Linear), 1e-4, 1e4), dropout
    probability pi = sigmoid(Linear).

    Shapes
    ------
    input ``(*, dim)``, outputs three ``(*, n_genes)`` tensors.
    """

    def __init__(self, dim: int, n_genes: int) -> None:
        super().__init__()
        self.mean, self.disp, self.pi = nn.Linear(dim, n_genes), nn.Linear(dim, n_genes), nn.Linear(dim, n_genes)

    def reset_parameters(self) -> None:
        """Re-initialise all weights."""
        for linear in (self.mean, self.disp, self.pi):
            linear.reset_parameters()

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean = torch.clamp(torch.exp(self.mean(h)), 1e-5, 1e6)
        disp = torch.clamp(F.softplus(self.disp(h)), 1e-4, 1e4)
        return mean, disp, torch.sigmoid(self.pi(h))


class PassWeight(nn.Module):
    r"""Scalar weight of a self-distillation pass per spot: Linear, ReLU, Linear.

    Shapes
    ------
    input ``(*, dim)``, output ``(*, 1)``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 1))

    def reset_parameters(self) -> None:
        """Re-initialise all weights."""
        self.net[0].reset_parameters()
        self.net[2].reset_parameters()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)
