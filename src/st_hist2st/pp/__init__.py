"""Preprocessing: patches, spot graph and pseudo-spots from AnnData and its images."""

from st_hist2st._data._slide import Slide, SlideLevel, read_slide
from st_hist2st.pp._graph import spatial_graph
from st_hist2st.pp._patches import extract_patches
from st_hist2st.pp._pool import pool, unpool
from st_hist2st.pp._tile import tile, tissue_mask

# documented where users find them
Slide.__module__ = SlideLevel.__module__ = __name__

__all__ = [
    "Slide",
    "SlideLevel",
    "extract_patches",
    "pool",
    "read_slide",
    "spatial_graph",
    "tile",
    "tissue_mask",
    "unpool",
]
