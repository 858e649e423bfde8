"""Preprocessing: patches, spot graph and targets from AnnData and its images."""

from st_hist2st.pp._graph import spatial_graph
from st_hist2st.pp._patches import extract_patches

__all__ = ["extract_patches", "spatial_graph"]
