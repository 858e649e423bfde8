"""Running the network on a prepared section: one pass, or the average over the 8 views of each patch."""

from __future__ import annotations

import numpy as np
import torch

from st_hist2st._data._dataset import section_batch
from st_hist2st._data._section import Section
from st_hist2st.nn._augment import dihedral
from st_hist2st.nn._module import Hist2STModule


def predict_section(
    module: Hist2STModule,
    section: Section,
    device: torch.device,
    precision: str = "32-true",
    test_time_augmentation: bool = False,
) -> np.ndarray:
    """``(n_spots, n_genes)`` predictions of ``module`` (in eval mode, on ``device``) for one section.

    ``precision='bf16-mixed'`` runs under bfloat16 autocast; ``test_time_augmentation`` averages over the 8
    rotations by multiples of 90 degrees and mirrors of every patch.
    """
    batch = {k: v.to(device) for k, v in section_batch(section).items()}
    views = range(8) if test_time_augmentation else range(1)
    total = None
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
        for symmetry in views:
            patches = dihedral(batch["patches"], symmetry)
            pred = module(patches, batch["positions"], batch["edge_index"]).expression[0].float()
            total = pred if total is None else total + pred
    return (total / len(views)).cpu().numpy()
