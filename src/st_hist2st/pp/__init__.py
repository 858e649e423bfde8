"""Preprocessing: patches, spot graph and pseudo-spots from AnnData and its images."""

from st_hist2st.pp._graph import spatial_graph
from st_hist2st.pp._patches import extract_patches
from st_hist2st.pp._tile import tile

__all__ = ["extract_patches", "spatial_graph", "tile"]
