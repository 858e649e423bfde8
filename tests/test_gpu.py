"""Training and prediction on a CUDA GPU; skipped where torch sees none (as in CI).

That a tiny model learns on the GPU is a case of ``test_tl.test_tiny_model_learns_expression_from_colour``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import st_hist2st as hist2st
from st_hist2st.nn._stains import stain_estimate, stain_normalised

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _on_cpu(model) -> bool:
    return all(p.device.type == "cpu" for p in model.module.parameters())


def test_model_trained_on_gpu_predicts_alike_on_gpu_and_cpu(adata, tiny, tmp_path):
    model = hist2st.tl.fit(adata, "hires", max_epochs=2, accelerator="gpu", devices=1, show_progress_bar=False, **tiny)
    assert _on_cpu(model)  # handed back on the CPU, so that it saves and predicts anywhere
    assert len(model.history) == 2 and np.isfinite(model.history["train_loss"]).all()
    gpu = model.predict(adata, device="cuda", show_progress_bar=False)
    cpu = model.predict(adata, device="cpu", show_progress_bar=False)
    assert np.isfinite(gpu).all()
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-4)
    assert _on_cpu(model)
    model.save(tmp_path / "m")
    loaded = hist2st.Hist2ST.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.predict(adata, device="cpu", show_progress_bar=False), cpu)


def test_paper_training_with_distillation_in_bf16_on_gpu(adata, tiny):
    # the paper preset: ZINB heads and five augmented self-distillation passes, augmented on the GPU
    model = hist2st.tl.fit(
        adata,
        "hires",
        preset="paper",
        max_epochs=2,
        accelerator="gpu",
        devices=1,
        precision="bf16-mixed",
        show_progress_bar=False,
        **tiny,
    )
    assert np.isfinite(model.history["train_loss"]).all()
    out = hist2st.tl.predict(adata, model, precision="bf16", device="cuda", copy=True, show_progress_bar=False)
    assert np.isfinite(out.layers["hist2st"]).all()


@pytest.mark.parametrize(
    "settings", [{}, {"gradient_checkpointing": True, "step_in_backward": True, "gradient_clip": None}]
)
def test_same_seed_gives_the_same_model_on_gpu(adata, tiny, settings):
    # scatter-adds on a GPU may add in any order, so agreement is to float rounding rather than bit for bit
    kwargs = {"max_epochs": 1, "accelerator": "gpu", "devices": 1, "show_progress_bar": False}
    a, b, c = (
        hist2st.tl.fit(adata, "hires", seed=seed, **kwargs, **tiny, **settings).predict(
            adata, device="cuda", show_progress_bar=False
        )
        for seed in (3, 3, 4)
    )
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert np.abs(a - c).max() > 1e-3


def test_validation_on_gpu_scores_every_epoch(adata, tiny):
    # validation predicts the held-out section on the GPU: its spot positions and graph arrive there too
    model = hist2st.tl.fit(
        adata,
        "hires",
        max_epochs=2,
        validation_libraries=["S1"],
        accelerator="gpu",
        devices=1,
        show_progress_bar=False,
        **tiny,
    )
    assert len(model.history) == 2 and np.isfinite(model.history["val_pearson"]).all()


def test_stains_are_estimated_and_mapped_alike_on_gpu_and_cpu(adata):
    library = next(iter(adata.uns["spatial"]))
    image = torch.from_numpy(np.ascontiguousarray(adata.uns["spatial"][library]["images"]["hires"]))
    patches = image.permute(2, 0, 1).unsqueeze(0)
    estimate = stain_estimate(patches)
    on_gpu = stain_estimate(patches.cuda())
    for cpu, gpu in zip(estimate, on_gpu, strict=True):
        torch.testing.assert_close(gpu, cpu, rtol=0, atol=0)
    reference = tuple(t.cuda() for t in stain_estimate(patches.flip(-1)[..., : patches.shape[-1] // 2]))
    mapped = stain_normalised(patches.cuda(), on_gpu, reference)
    assert mapped.device.type == "cuda"
    expected = stain_normalised(patches, estimate, tuple(t.cpu() for t in reference))
    assert (mapped.cpu().int() - expected.int()).abs().max() <= 1
