"""Plots of predictions, their accuracy and training."""

from st_hist2st.pl._metrics import gene_correlation, training_history
from st_hist2st.pl._spatial import spatial_pred

__all__ = ["gene_correlation", "spatial_pred", "training_history"]
