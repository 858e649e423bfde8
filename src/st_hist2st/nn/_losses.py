"""Losses of Hist2ST: ZINB negative log-likelihood and self-distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

_EPS = 1e-10


def zinb_nll(
    counts: torch.Tensor,
    mean: torch.Tensor,
    disp: torch.Tensor,
    pi: torch.Tensor,
    size_factors: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Mean zero-inflated negative binomial negative log-likelihood (the DCA formulation).

    Parameters
    ----------
    counts
        ``(N, G)`` raw counts.
    mean, disp, pi
        ``(N, G)`` ZINB mean (before size-factor scaling), dispersion and dropout probability.
    size_factors
        ``(N,)`` factors that scale the mean of each spot.

    Returns
    -------
    Scalar loss, averaged over spots and genes.
    """
    if size_factors is not None:
        mean = mean * size_factors[:, None]
    t1 = torch.lgamma(disp + _EPS) + torch.lgamma(counts + 1.0) - torch.lgamma(counts + disp + _EPS)
    t2 = (disp + counts) * torch.log1p(mean / (disp + _EPS)) + counts * (
        torch.log(disp + _EPS) - torch.log(mean + _EPS)
    )
    nb_case = t1 + t2 - torch.log(1.0 - pi + _EPS)
    zero_nb = torch.pow(disp / (disp + mean + _EPS), disp)
    zero_case = -torch.log(pi + (1.0 - pi) * zero_nb + _EPS)
    return torch.where(counts <= 1e-8, zero_case, nb_case).mean()


def correlation_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """One minus the Pearson r between the columns of ``pred`` and ``target``, averaged over columns.

    Parameters
    ----------
    pred, target
        ``(N, G)``: spots by genes. A gene constant over the spots of ``target`` counts as r = 0 (it has
        no gradient); ``eps`` keeps a constant column of ``pred`` from dividing by zero.
    """
    pc = pred - pred.mean(0)
    tc = target - target.mean(0)
    r = (pc * tc).sum(0) * torch.rsqrt(pc.square().sum(0) + eps) * torch.rsqrt(tc.square().sum(0) + eps)
    return 1.0 - r.mean()


def distillation_teacher(predictions: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean over the augmented passes, weights softmaxed over the passes.

    Parameters
    ----------
    predictions
        ``(P, N, G)`` predictions of the augmented passes.
    weights
        ``(P, N, 1)`` unnormalised weights.
    """
    return (predictions * torch.softmax(weights, dim=0)).sum(0)


def distillation_loss(prediction: torch.Tensor, predictions: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """MSE between the teacher (weighted passes) and the prediction of the clean pass."""
    return F.mse_loss(distillation_teacher(predictions, weights), prediction)
