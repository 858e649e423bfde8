"""The Hist2ST network in torch and torch-geometric, its losses and its Lightning training plan."""

from st_hist2st.model._augment import SectionAugment, random_stain_jitter
from st_hist2st.model._convmixer import ConvMixerBlock, PatchEncoder
from st_hist2st.model._gnn import GraphJumpingKnowledge, GraphSAGE
from st_hist2st.model._heads import ExpressionHead, PassWeight, ZINBHead
from st_hist2st.model._losses import correlation_loss, distillation_loss, distillation_teacher, zinb_nll
from st_hist2st.model._module import Architecture, Hist2STModule, Hist2STOutput
from st_hist2st.model._plan import Hist2STPlan
from st_hist2st.model._training import PRESETS, Training
from st_hist2st.model._transformer import Attention, Transformer, TransformerBlock

__all__ = [
    "Architecture",
    "Attention",
    "ConvMixerBlock",
    "ExpressionHead",
    "GraphJumpingKnowledge",
    "GraphSAGE",
    "Hist2STModule",
    "Hist2STOutput",
    "Hist2STPlan",
    "PRESETS",
    "Training",
    "PassWeight",
    "PatchEncoder",
    "SectionAugment",
    "Transformer",
    "TransformerBlock",
    "ZINBHead",
    "correlation_loss",
    "distillation_loss",
    "distillation_teacher",
    "random_stain_jitter",
    "zinb_nll",
]
