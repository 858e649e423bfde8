"""Tools: train Hist2ST, predict with it, evaluate predictions, rank genes by their spatial pattern."""

from st_hist2st.tl._evaluate import evaluate
from st_hist2st.tl._fit import fit
from st_hist2st.tl._predict import predict
from st_hist2st.tl._region import region_ari
from st_hist2st.tl._spatial_autocorr import spatial_autocorr

__all__ = ["evaluate", "fit", "predict", "region_ari", "spatial_autocorr"]
