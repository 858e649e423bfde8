"""Tools: train Hist2ST, predict with it, evaluate predictions."""

from st_hist2st.tl._fit import fit
from st_hist2st.tl._predict import predict

__all__ = ["fit", "predict"]
