from __future__ import annotations

import numpy as np
import pytest
import torch

import st_hist2st as hist2st
from st_hist2st.nn import Architecture, ColourRidge
from st_hist2st.nn._augment import _RGB_FROM_HED, restain
from st_hist2st.nn._stains import stain_estimate, stain_normalised


def stained_patches(rng, n: int = 64, side: int = 16) -> torch.Tensor:
    """Patches of haematoxylin and eosin alone, in random amounts per pixel, on a white background."""
    stains = torch.tensor(_RGB_FROM_HED[:2])
    stains = stains / stains.norm(dim=1, keepdim=True)
    amounts = torch.from_numpy(rng.gamma(2.0, 0.3, size=(n, side, side, 2))).float()
    amounts[:, : side // 4] = 0  # background
    rgb = torch.exp(-(amounts @ stains)) * 256 - 1
    return rgb.permute(0, 3, 1, 2).round().clamp(0, 255).to(torch.uint8)


def restained(patches: torch.Tensor, haematoxylin: float, eosin: float) -> torch.Tensor:
    n = len(patches)
    return restain(patches, torch.tensor([[haematoxylin, eosin, 1.0]]).expand(n, 3), torch.zeros(n, 3))


def test_stain_estimate_finds_the_stains_and_their_amounts(rng):
    patches = stained_patches(rng)
    stains, maxima = stain_estimate(patches)
    truth = torch.tensor(_RGB_FROM_HED[:2])
    cosine = (stains * truth).sum(1) / (stains.norm(dim=1) * truth.norm(dim=1))
    assert cosine.min() > 0.99, cosine  # haematoxylin first, then eosin
    # twice the haematoxylin, the same eosin: about twice its maximum (more pixels now pass as tissue)
    _, more = stain_estimate(restained(patches, 2.0, 1.0))
    np.testing.assert_allclose((more / maxima).numpy(), [2.0, 1.0], rtol=0.1)


def test_stain_normalised_undoes_another_staining(rng):
    patches = stained_patches(rng).float()
    for factors in ((1.4, 0.6), (0.6, 1.4), (1.3, 1.3)):
        other = restained(patches.to(torch.uint8), *factors)
        back = stain_normalised(other, stain_estimate(other), stain_estimate(patches.to(torch.uint8)))
        before = (other.float() - patches).abs().mean()
        after = (back.float() - patches).abs().mean()
        assert before > 8 and after < before / 4, (factors, before, after)
    with pytest.raises(ValueError, match="0 tissue pixels in the patches, too few"):
        stain_estimate(torch.full((2, 3, 8, 8), 255, dtype=torch.uint8))
    grey = stained_patches(np.random.default_rng(1)).float().mean(1, keepdim=True).expand(-1, 3, -1, -1)
    with pytest.raises(ValueError, match="do not separate into haematoxylin and eosin"):
        stain_estimate(grey.round().to(torch.uint8))


def test_colour_ridge_stains_are_checked():
    with pytest.raises(ValueError, match="`colour_ridge_stains` must be True or False, got 'yes'"):
        Architecture(colour_ridge=0.5, colour_ridge_stains="yes")
    with pytest.raises(ValueError, match="`stains` must be True or False"):
        ColourRidge(3, stains=1)
    with pytest.raises(ValueError, match="needs the section's stain estimate"):
        ColourRidge(3, stains=True).features(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="reads the patches as they are"):
        ColourRidge(3).set_stain_reference([(torch.zeros(2, 3), torch.ones(2))])


def with_image(adata, transform):
    out = adata.copy()
    for library in out.uns["spatial"].values():
        library["images"]["hires"] = transform(np.asarray(library["images"]["hires"]))
    return out


def with_restained_image(adata, haematoxylin: float, eosin: float):
    def transform(image: np.ndarray) -> np.ndarray:
        rgb = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).unsqueeze(0)
        return restained(rgb, haematoxylin, eosin)[0].permute(1, 2, 0).numpy()

    return with_image(adata, transform)


def test_colour_model_with_stains_predicts_a_restained_slide_as_the_original(adata, tiny, tmp_path):
    common = {"preset": "wide", "max_epochs": 1, "show_progress_bar": False, **tiny}
    options = {"colour_ridge": 1.0, "colour_ridge_rank": None}  # the colour model alone, a plain ridge
    plain = hist2st.tl.fit(adata, "hires", **options, **common)
    robust = hist2st.tl.fit(adata, "hires", colour_ridge_stains=True, **options, **common)
    ridge = robust.module.colour_ridge
    assert ridge.stains and ridge.reference_maxima.min() > 0
    other = with_restained_image(adata, 1.4, 0.6)
    spread = plain.predict(adata, show_progress_bar=False).std(0).mean()

    def change(model) -> float:
        as_scanned = model.predict(adata, show_progress_bar=False)
        return float(np.abs(model.predict(other, show_progress_bar=False) - as_scanned).mean() / spread)

    # the plain ridge's predictions move by a large share of their spread, the stain-normalised ones far less
    assert change(plain) > 0.3 and change(robust) < change(plain) / 3, (change(plain), change(robust))
    card = (robust.save_pretrained(tmp_path / "card") / "README.md").read_text()
    assert "haematoxylin and eosin mapped onto the training sections'" in card
    robust.save(tmp_path / "robust")
    loaded = hist2st.Hist2ST.load(tmp_path / "robust")
    assert loaded.architecture.colour_ridge_stains
    torch.testing.assert_close(loaded.module.colour_ridge.reference_stains, ridge.reference_stains)
    np.testing.assert_array_equal(
        loaded.predict(other, show_progress_bar=False), robust.predict(other, show_progress_bar=False)
    )


def test_colour_model_with_stains_refuses_an_image_without_two_stains_before_training(adata, tiny, monkeypatch):
    grey = with_image(adata, lambda image: np.repeat(image.mean(2, keepdims=True), 3, axis=2).astype(np.uint8))
    trained = []
    monkeypatch.setattr(hist2st.Hist2ST, "_release_training_state", lambda self: trained.append(True))
    with pytest.raises(ValueError, match=r"Library 'S0': .* pass `colour_ridge_stains=False`"):
        hist2st.tl.fit(
            grey, "hires", preset="blend", colour_ridge_stains=True, max_epochs=1, show_progress_bar=False, **tiny
        )
    assert not trained


def test_colour_model_with_stains_warns_on_a_blank_section(adata, tiny):
    model = hist2st.tl.fit(
        adata, "hires", preset="blend", colour_ridge_stains=True, max_epochs=1, show_progress_bar=False, **tiny
    )
    blank = with_image(adata, lambda image: np.full_like(image, 250))
    with pytest.warns(UserWarning, match="as if stained like the training sections"):
        predicted = model.predict(blank, show_progress_bar=False)
    assert np.isfinite(predicted).all()
