"""Datasets: the public her2st sections and a synthetic section whose expression follows its image."""

from st_hist2st.datasets._her2st import her2st
from st_hist2st.datasets._synthetic import synthetic

__all__ = ["her2st", "synthetic"]
