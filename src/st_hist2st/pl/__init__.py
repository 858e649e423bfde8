"""Plots of predictions, their accuracy and training."""

__all__: list[str] = []
