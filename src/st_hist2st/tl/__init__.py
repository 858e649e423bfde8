"""Tools: train Hist2ST, predict with it, evaluate predictions."""

from st_hist2st.tl._evaluate import evaluate
from st_hist2st.tl._fit import fit
from st_hist2st.tl._predict import predict
from st_hist2st.tl._region import region_ari

__all__ = ["evaluate", "fit", "predict", "region_ari"]
