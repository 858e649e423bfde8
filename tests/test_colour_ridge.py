from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.linear_model import RidgeCV

import st_hist2st as hist2st
from st_hist2st._data._targets import expression_targets
from st_hist2st.nn import Architecture, ColourRidge, Hist2STModule, patch_features
from st_hist2st.nn._colour_ridge import (
    ALPHAS,
    AUTO_FORESTS,
    AUTO_RANKS,
    FEATURE_NAMES,
    LEAVES_PER_TREE,
    MAX_COLOUR_SPOTS,
    N_TREES,
    SINGLE_SECTION_FOREST,
    SINGLE_SECTION_RANK,
)


def reference_features(patch: np.ndarray) -> list[float]:
    """The 18 features of one patch, written out with numpy and scipy."""
    x = patch.astype(np.float32) / 255
    grey = x.mean(0)
    flat = x.reshape(3, -1)
    histogram = np.histogram(grey, bins=8, range=(0, 1))[0] / grey.size
    magnitude = np.hypot(ndimage.sobel(grey, 0), ndimage.sobel(grey, 1))
    texture = [magnitude.mean(), magnitude.std(), ndimage.laplace(grey).var(), (grey < 0.5).mean()]
    return [*flat.mean(1), *flat.std(1), *histogram, *texture]


def test_patch_features_are_the_colour_and_texture_statistics_and_ignore_orientation(rng):
    patches = rng.integers(0, 256, size=(5, 3, 20, 20), dtype=np.uint8)
    patches[0] = 255  # blank
    patches[1, :, :10] = 20  # half dark
    got = patch_features(torch.from_numpy(patches)).numpy()
    assert got.shape == (5, len(FEATURE_NAMES))
    np.testing.assert_allclose(got, [reference_features(p) for p in patches], rtol=1e-4, atol=1e-6)
    turned = np.ascontiguousarray(np.flip(np.rot90(patches, 1, axes=(2, 3)), axis=3))
    np.testing.assert_allclose(patch_features(torch.from_numpy(turned)).numpy(), got, rtol=1e-4, atol=1e-6)


def test_colour_ridge_fits_as_a_ridge_on_standardised_features(rng):
    features = rng.normal(size=(60, len(FEATURE_NAMES))) * rng.uniform(0.1, 10, len(FEATURE_NAMES))
    targets = features[:, :3] @ rng.normal(size=(3, 4)) + rng.normal(scale=0.1, size=(60, 4))
    ridge = ColourRidge(4)
    assert not ridge.is_fitted
    ridge.fit(torch.as_tensor(features), torch.as_tensor(targets))
    assert ridge.is_fitted
    standardised = (features - features.mean(0)) / (features.std(0) + 1e-8)
    reference = RidgeCV(alphas=ALPHAS).fit(standardised, targets)
    assert float(ridge.alpha) == pytest.approx(reference.alpha_)
    got = ridge(torch.as_tensor(features, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(got, reference.predict(standardised), rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="at least 2 training spots"):
        ColourRidge(4).fit(torch.zeros(1, len(FEATURE_NAMES)), torch.zeros(1, 4))


def test_colour_ridge_of_a_rank_projects_onto_the_leading_programmes_of_the_training_expression(rng):
    features = rng.normal(size=(80, len(FEATURE_NAMES)))
    programmes = rng.normal(size=(3, 12))
    targets = features[:, :3] @ programmes + rng.normal(scale=0.5, size=(80, 12))
    x, y = torch.as_tensor(features), torch.as_tensor(targets)
    full = ColourRidge(12).fit(x, y)
    reduced = ColourRidge(12, rank=2).fit(x, y)
    centred = targets - targets.mean(0)
    components = np.linalg.svd(centred, full_matrices=False)[2][:2]
    with torch.no_grad():
        got = reduced(x.float()).numpy()
        expected = targets.mean(0) + (full(x.float()).numpy() - targets.mean(0)) @ components.T @ components
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # what it predicts varies only along the two programmes
    assert np.linalg.matrix_rank(got - got.mean(0), tol=1e-3) == 2
    # a rank of every gene or more is the full-rank ridge
    with torch.no_grad():
        np.testing.assert_array_equal(ColourRidge(12, rank=12).fit(x, y)(x.float()).numpy(), full(x.float()).numpy())
    with pytest.raises(ValueError, match="`rank` must be a whole number at least 1"):
        ColourRidge(12, rank=0)


def sections_of(rng, signal: np.ndarray, noise: float, n_sections: int = 3, n_spots: int = 60):
    """Features, targets and section names of spots whose expression is ``features @ signal`` plus noise."""
    features = rng.normal(size=(n_sections * n_spots, len(FEATURE_NAMES)))
    targets = features @ signal + rng.normal(scale=noise, size=(len(features), signal.shape[1]))
    names = np.repeat([f"S{k}" for k in range(n_sections)], n_spots)
    return torch.as_tensor(features), torch.as_tensor(targets), names


def test_colour_ridge_auto_rank_is_the_best_by_leave_one_section_out(rng):
    # expression driven by two programmes of the features, under noise that a gene's own coefficients would fit
    programmes = np.zeros((len(FEATURE_NAMES), 2))
    programmes[:2] = np.eye(2)
    signal = programmes @ rng.normal(size=(2, 40))
    x, y, names = sections_of(rng, signal, noise=3.0)
    ridge = ColourRidge(40, rank="auto").fit(x, y, names)
    # the choice, written out: a ridge of each rank fitted on two sections and scored on the third
    scores = []
    for rank in AUTO_RANKS:
        inner = []
        for held in np.unique(names):
            fit = ColourRidge(40, rank).fit(x[names != held], y[names != held])
            with torch.no_grad():
                predicted = fit(x[names == held].float()).double().numpy()
            r = [np.corrcoef(predicted[:, g], y[names == held][:, g].numpy())[0, 1] for g in range(40)]
            inner.append(np.mean(r))
        scores.append(np.mean(inner))
    assert ridge.fitted_rank == AUTO_RANKS[int(np.argmax(scores))]
    assert ridge.fitted_rank in (2, 5)  # a few programmes, not every gene on its own
    assert max(scores) > scores[0] + 0.01  # and better than the full rank on the left-out sections
    with torch.no_grad():
        got = ridge(x.float()).numpy()
    assert np.linalg.matrix_rank(got - got.mean(0), tol=1e-3) == ridge.fitted_rank
    # every gene with a signal of its own: no projection below the 18 features' rank wins
    x, y, names = sections_of(rng, rng.normal(size=(len(FEATURE_NAMES), 40)), noise=0.1)
    assert ColourRidge(40, rank="auto").fit(x, y, names).fitted_rank in (None, 20, 50)


def test_colour_ridge_auto_rank_from_one_section_and_bad_sections(rng, caplog):
    x, y, names = sections_of(rng, rng.normal(size=(len(FEATURE_NAMES), 8)), noise=1.0, n_sections=1)
    with caplog.at_level("INFO", logger="st_hist2st"):
        ridge = ColourRidge(8, rank="auto").fit(x, y, names)
    assert ridge.fitted_rank == SINGLE_SECTION_RANK
    assert "from one section" in caplog.text
    assert ColourRidge(8, rank="auto").fit(x, y).fitted_rank == SINGLE_SECTION_RANK
    assert ColourRidge(8, rank=3).fit(x, y, names).fitted_rank == 3
    with pytest.raises(ValueError, match="`sections` names 2 spots, the features 60"):
        ColourRidge(8, rank="auto").fit(x, y, names[:2])


def test_colour_ridge_is_blended_into_the_predictions_and_leaves_the_network_as_it_trains(
    adata, tiny, tmp_path, monkeypatch
):
    common = {"preset": "wide", "max_epochs": 2, "show_progress_bar": False, "validation_libraries": ["S1"], **tiny}
    alone = hist2st.tl.fit(adata, "hires", **common)
    blended = hist2st.tl.fit(adata, "hires", colour_ridge=0.25, **common)
    network, both = alone.module.state_dict(), blended.module.state_dict()
    assert all(torch.equal(network[k], both[k]) for k in network)
    assert sorted(set(both) - set(network)) == [
        f"colour_ridge.{k}" for k in ("alpha", "bias", "mean", "scale", "weight")
    ]
    # the history follows the network alone
    np.testing.assert_array_equal(alone.history["val_pearson"], blended.history["val_pearson"])
    # the ridge is fitted after the network, on the patches and targets of the training library alone
    crop = {"crop_microns": blended.preprocessing["crop_microns"], "show_progress_bar": False}
    train = adata[adata.obs["library_id"] == "S0"]
    counts = train[:, blended.genes].X
    targets = expression_targets(counts.toarray() if hasattr(counts, "toarray") else np.asarray(counts))
    features = patch_features(torch.from_numpy(hist2st.pp.extract_patches(train, "hires", **crop)))
    expected = ColourRidge(len(blended.genes)).fit(features, torch.as_tensor(targets))
    ridge = blended.module.colour_ridge
    np.testing.assert_allclose(ridge.weight.numpy(), expected.weight.numpy(), rtol=1e-3, atol=1e-4)
    # predictions: 0.75 of the network's and 0.25 of the ridge's ...
    with torch.no_grad():
        colour = ridge(patch_features(torch.from_numpy(hist2st.pp.extract_patches(adata, "hires", **crop)))).numpy()
    # ... with or without the 8 views, and section by section or in windows of a few spots
    for options in ({}, {"test_time_augmentation": True}, {"max_spots": 20}):
        net = alone.predict(adata, show_progress_bar=False, **options)
        got = blended.predict(adata, show_progress_bar=False, **options)
        np.testing.assert_allclose(got, 0.75 * net + 0.25 * colour, rtol=1e-4, atol=1e-5)
    # ... also where a section is blended a few spots at a time, as a large one is
    from st_hist2st.nn import _colour_ridge

    monkeypatch.setattr(_colour_ridge, "SPOT_CHUNK", 7)
    got = blended.predict(adata, show_progress_bar=False)
    np.testing.assert_allclose(
        got, 0.75 * alone.predict(adata, show_progress_bar=False) + 0.25 * colour, rtol=1e-4, atol=1e-5
    )
    card = (blended.save_pretrained(tmp_path / "card") / "README.md").read_text()
    assert "| colour ridge | weight 0.25 in the predictions" in card
    assert "colour ridge" not in (alone.save_pretrained(tmp_path / "alone") / "README.md").read_text()
    blended.save(tmp_path / "blended")
    loaded = hist2st.Hist2ST.load(tmp_path / "blended")
    assert loaded.architecture.colour_ridge == 0.25 and loaded.module.colour_ridge.is_fitted
    np.testing.assert_array_equal(
        loaded.predict(adata, show_progress_bar=False), blended.predict(adata, show_progress_bar=False)
    )


def test_colour_ridge_weight_is_checked_and_no_ridge_is_built_without_one(tiny):
    with pytest.raises(ValueError, match=r"`colour_ridge` is a weight in \[0, 1\], got 1.5"):
        Architecture(colour_ridge=1.5)
    assert Hist2STModule(Architecture(n_genes=3, **tiny)).colour_ridge is None
    assert Hist2STModule(Architecture(n_genes=3, colour_ridge=0.5, **tiny)).colour_ridge is not None
    for rank in (0, 2.5, True, "automatic"):
        with pytest.raises(ValueError, match="`colour_ridge_rank` must be a whole number at least 1, 'auto'"):
            Architecture(colour_ridge=0.5, colour_ridge_rank=rank)
    module = Hist2STModule(Architecture(n_genes=3, colour_ridge=0.5, colour_ridge_rank=2, **tiny))
    assert module.colour_ridge.rank == 2


def test_colour_ridge_rank_is_kept_with_the_model(adata, tiny, tmp_path):
    common = {"preset": "wide", "max_epochs": 1, "show_progress_bar": False, **tiny}
    model = hist2st.tl.fit(adata, "hires", colour_ridge=0.5, colour_ridge_rank=1, **common)
    ridge = model.module.colour_ridge
    # one programme: every gene's ridge coefficients are multiples of one another
    assert np.linalg.matrix_rank(ridge.weight.numpy(), tol=1e-5) == 1
    card = (model.save_pretrained(tmp_path / "card") / "README.md").read_text()
    assert "projected onto the 1 leading principal component" in card
    model.save(tmp_path / "model")
    loaded = hist2st.Hist2ST.load(tmp_path / "model")
    assert loaded.architecture.colour_ridge_rank == 1 and loaded.module.colour_ridge.rank == 1
    np.testing.assert_array_equal(
        loaded.predict(adata, show_progress_bar=False), model.predict(adata, show_progress_bar=False)
    )


def test_colour_ridge_auto_rank_is_chosen_over_the_training_sections_and_kept(adata, tiny, tmp_path):
    common = {"preset": "wide", "max_epochs": 1, "show_progress_bar": False, **tiny}
    model = hist2st.tl.fit(adata, "hires", colour_ridge=0.5, colour_ridge_rank="auto", **common)
    chosen = model.preprocessing["colour_ridge_rank"]
    assert chosen in AUTO_RANKS and model.module.colour_ridge.fitted_rank == chosen
    if chosen is not None:
        assert np.linalg.matrix_rank(model.module.colour_ridge.weight.numpy(), tol=1e-5) <= chosen
    card = (model.save_pretrained(tmp_path / "card") / "README.md").read_text()
    assert "(chosen by leave-one-section-out)" in card
    model.save(tmp_path / "model")
    loaded = hist2st.Hist2ST.load(tmp_path / "model")
    assert loaded.architecture.colour_ridge_rank == "auto" and loaded.preprocessing["colour_ridge_rank"] == chosen
    assert loaded.module.colour_ridge.fitted_rank == chosen
    np.testing.assert_array_equal(
        loaded.predict(adata, show_progress_bar=False), model.predict(adata, show_progress_bar=False)
    )


def test_colour_ridge_forest_is_scikit_learns_extra_trees_walked_in_torch(rng, monkeypatch):
    from sklearn.ensemble import ExtraTreesRegressor

    from st_hist2st.nn import _colour_ridge

    # whole numbers, so that many spots lie exactly on a split's threshold rounded to float32
    features = torch.from_numpy(rng.integers(0, 6, size=(300, len(FEATURE_NAMES))).astype(np.float32) * 0.1)
    targets = torch.from_numpy(np.abs(features[:, :3].numpy() - 0.25) @ rng.normal(size=(3, 12)))
    targets += 0.1 * torch.from_numpy(rng.normal(size=(300, 12)))
    ridge = ColourRidge(12, rank=3, trees=0.25, min_spots_per_leaf=4).fit(features[:200], targets[:200])
    y = targets[:200].double().numpy()
    components = np.linalg.svd(y - y.mean(0), full_matrices=False)[2][:3]
    forest = ExtraTreesRegressor(N_TREES, min_samples_leaf=4, max_features=0.5, random_state=0)
    forest.fit(features[:200].numpy(), (y - y.mean(0)) @ components.T)
    for x in (features[:200], features[200:]):
        expected = forest.predict(x.numpy())
        np.testing.assert_allclose(ridge.forest_scores(x).numpy(), expected, rtol=1e-5, atol=1e-5)
        linear = ColourRidge(12, rank=3).fit(features[:200], targets[:200])
        with torch.no_grad():
            got = ridge(x).numpy()
            blended = 0.75 * linear(x).numpy() + 0.25 * (y.mean(0) + expected @ components)
        np.testing.assert_allclose(got, blended, rtol=1e-4, atol=1e-4)
        with monkeypatch.context() as patched, torch.no_grad():
            patched.setattr(_colour_ridge, "SPOT_CHUNK", 7)  # many spots are predicted a chunk at a time
            np.testing.assert_allclose(ridge(x).numpy(), got, rtol=1e-6, atol=1e-6)
    # the forest is a fitted model's state: loaded into a fresh ridge it predicts the same
    fresh = ColourRidge(12, rank=3, trees=0.25)
    fresh.load_state_dict(ridge.state_dict())
    torch.testing.assert_close(fresh(features), ridge(features), rtol=0, atol=0)


def test_colour_ridge_forest_learns_what_a_ridge_cannot(rng):
    features = torch.from_numpy(rng.normal(size=(800, len(FEATURE_NAMES))).astype(np.float32))
    programmes = np.c_[np.abs(features[:, 0].numpy()), features[:, 1].numpy() ** 2]
    targets = torch.from_numpy(programmes @ rng.normal(size=(2, 30)) + 0.5 * rng.normal(size=(800, 30)))

    def held_out_r(trees: float) -> float:
        ridge = ColourRidge(30, rank=2, trees=trees).fit(features[:600], targets[:600])
        with torch.no_grad():
            predicted = ridge(features[600:]).numpy()
        observed = targets[600:].numpy()
        return np.mean([np.corrcoef(predicted[:, g], observed[:, g])[0, 1] for g in range(30)])

    alone, half = held_out_r(0.0), held_out_r(0.5)
    assert alone < 0.2 and half > alone + 0.3


def test_colour_ridge_forest_stays_small_on_many_spots(rng):
    features = torch.from_numpy(rng.normal(size=(6000, len(FEATURE_NAMES))).astype(np.float32))
    targets = torch.from_numpy(features[:, :2].numpy() ** 2 @ rng.normal(size=(2, 8)))
    ridge = ColourRidge(8, rank=2, trees=0.5).fit(features, targets)
    children = ridge.tree_children
    leaves = (children[..., 0] == torch.arange(children.shape[1])).sum(1)  # padding is a leaf too: an upper bound
    assert len(leaves) == N_TREES and int(leaves.max()) <= 2 * LEAVES_PER_TREE


def test_colour_model_is_fitted_on_a_sample_of_many_spots(rng, monkeypatch):
    from st_hist2st.nn import _colour_ridge

    assert MAX_COLOUR_SPOTS == 50_000
    monkeypatch.setattr(_colour_ridge, "MAX_COLOUR_SPOTS", 600)  # "many" spots, few enough for a test
    x = torch.from_numpy(rng.normal(size=(1500, len(FEATURE_NAMES))).astype(np.float32))
    y = torch.from_numpy(np.abs(x[:, :2].numpy()) @ rng.normal(size=(2, 6)) + 0.3 * rng.normal(size=(1500, 6)))
    sections = np.repeat(["S0", "S1", "S2"], 500)
    sample = _colour_ridge.fitting_sample(1500)
    assert len(sample) == 600 == len(np.unique(sample)) and np.all(np.diff(sample) > 0)
    np.testing.assert_array_equal(sample, _colour_ridge.fitting_sample(1500))  # the same sample every time
    assert _colour_ridge.fitting_sample(600) is None

    fitted = ColourRidge(6, rank="auto", trees="auto").fit(x, y, sections)
    on_sample = ColourRidge(6, rank="auto", trees="auto").fit(x[sample], y[sample], sections[sample])
    for name, value in fitted.state_dict().items():
        torch.testing.assert_close(value, on_sample.state_dict()[name], rtol=0, atol=0, msg=name)
    # the sample is what is fitted: every spot gives another ridge
    monkeypatch.setattr(_colour_ridge, "MAX_COLOUR_SPOTS", 1500)
    on_all = ColourRidge(6, rank=2, trees=0.5).fit(x, y, sections)
    assert not torch.equal(on_all.weight, ColourRidge(6, rank=2, trees=0.5).fit(x[sample], y[sample]).weight)


def test_colour_ridge_forest_is_fitted_once_per_leaf_size(rng, monkeypatch):
    from st_hist2st.nn import _colour_ridge

    # three sections of 1,200 spots: each fold trains on 2,400, so leaves of 5 and of 10 are both raised to
    # 2,400 / 256 = 10 spots (rounded up), and one forest serves both
    fitted_leaves = []
    fit = _colour_ridge.extra_trees
    monkeypatch.setattr(_colour_ridge, "extra_trees", lambda *args: fitted_leaves.append(args[2]) or fit(*args))
    x = torch.from_numpy(rng.normal(size=(3600, len(FEATURE_NAMES))).astype(np.float32))
    y = torch.from_numpy(np.abs(x[:, :2].numpy()) @ rng.normal(size=(2, 6)) + 0.3 * rng.normal(size=(3600, 6)))
    ridge = ColourRidge(6, rank=2, trees="auto").fit(x, y, np.repeat(["S0", "S1", "S2"], 1200))
    assert ridge.fitted_trees > 0  # and the final forest
    assert sorted(fitted_leaves[:6]) == [5, 5, 5, 20, 20, 20] and len(fitted_leaves) == 7
    assert _colour_ridge.spots_per_leaf(2400, 5) == 10 and _colour_ridge.spots_per_leaf(2400, 20) == 20


def test_tl_fit_reads_only_the_sampled_spots_for_the_colour_model(adata, monkeypatch):
    from st_hist2st._data._section import Section, prepare_sections
    from st_hist2st._model import fit_colour_ridge
    from st_hist2st.nn import _colour_ridge

    sections = prepare_sections(adata, "hires", genes=list(adata.var_names), show_progress_bar=False)
    features = torch.cat([patch_features(s.patches_of(np.arange(s.n_spots))) for s in sections])
    targets = torch.cat([s.targets for s in sections])
    names = np.repeat([s.library_id for s in sections], [s.n_spots for s in sections])
    assert len(set(names)) == 2 and len(names) == adata.n_obs

    monkeypatch.setattr(_colour_ridge, "MAX_COLOUR_SPOTS", 50)
    read = []
    patches_of = Section.patches_of
    monkeypatch.setattr(Section, "patches_of", lambda self, index: read.append(len(index)) or patches_of(self, index))
    ridge = ColourRidge(adata.n_vars, rank="auto", trees=0.5)
    fit_colour_ridge(ridge, sections, show_progress_bar=False)
    assert sum(read) == 50
    expected = ColourRidge(adata.n_vars, rank="auto", trees=0.5).fit(features, targets, names)
    for name, value in ridge.state_dict().items():
        torch.testing.assert_close(value, expected.state_dict()[name], msg=name)


def test_colour_ridge_forest_share_is_checked(tiny):
    for trees in (1.5, -0.1, True, "half", "automatic"):
        with pytest.raises(ValueError, match="`colour_ridge_trees` is the forest's share of the colour ridge"):
            Architecture(colour_ridge=0.5, colour_ridge_trees=trees)
        with pytest.raises(
            ValueError, match="`trees` is the forest's share of the predictions, in \\[0, 1\\], or 'auto'"
        ):
            ColourRidge(3, trees=trees)
    with pytest.raises(ValueError, match="`min_spots_per_leaf` must be a whole number at least 1, got 0"):
        ColourRidge(3, trees=0.5, min_spots_per_leaf=0)
    module = Hist2STModule(Architecture(n_genes=3, colour_ridge=0.5, colour_ridge_trees=0.5, **tiny))
    assert module.colour_ridge.trees == 0.5 and not module.colour_ridge.is_fitted


def test_colour_ridge_forest_is_fitted_saved_and_named_with_the_model(adata, tiny, tmp_path):
    common = {"preset": "wide", "max_epochs": 1, "show_progress_bar": False, **tiny}
    model = hist2st.tl.fit(adata, "hires", colour_ridge=0.5, colour_ridge_rank=2, colour_ridge_trees=0.5, **common)
    ridge = model.module.colour_ridge
    assert ridge.tree_value.shape[0] == N_TREES and ridge.tree_value.shape[2] == 2
    card = (model.save_pretrained(tmp_path / "card") / "README.md").read_text()
    assert "0.5 of it from extremely randomised trees on the same features" in card
    model.save(tmp_path / "model")
    loaded = hist2st.Hist2ST.load(tmp_path / "model")
    assert loaded.architecture.colour_ridge_trees == 0.5
    torch.testing.assert_close(loaded.module.colour_ridge.tree_value, ridge.tree_value, rtol=0, atol=0)
    np.testing.assert_array_equal(
        loaded.predict(adata, show_progress_bar=False), model.predict(adata, show_progress_bar=False)
    )
    # the forest moves the predictions: without it they are those of the ridge alone
    without = hist2st.tl.fit(adata, "hires", colour_ridge=0.5, colour_ridge_rank=2, **common)
    assert not np.allclose(
        without.predict(adata, show_progress_bar=False), model.predict(adata, show_progress_bar=False)
    )


def test_colour_ridge_auto_forest_is_the_best_by_leave_one_section_out(rng):
    # expression driven by programmes that are not linear in the features
    features = rng.normal(size=(240, len(FEATURE_NAMES))).astype(np.float32)
    drivers = np.c_[np.abs(features[:, 0]), features[:, 1] ** 2]
    x = torch.from_numpy(features)
    y = torch.from_numpy(drivers @ rng.normal(size=(2, 20)) + rng.normal(size=(240, 20)))
    names = np.repeat(["S0", "S1", "S2"], 80)
    ridge = ColourRidge(20, rank=2, trees="auto").fit(x, y, names)
    # the choice, written out: a ridge and forest of each candidate fitted on two sections and scored on the third
    scores = []
    for share, leaf in AUTO_FORESTS:
        inner = []
        for held in np.unique(names):
            fit = ColourRidge(20, 2, share, leaf).fit(x[names != held], y[names != held])
            with torch.no_grad():
                predicted = fit(x[names == held]).double().numpy()
            inner.append(np.mean([np.corrcoef(predicted[:, g], y[names == held][:, g])[0, 1] for g in range(20)]))
        scores.append(np.mean(inner))
    best = int(np.argmax(scores))
    assert (ridge.fitted_trees, ridge.fitted_leaf) == AUTO_FORESTS[best]
    assert ridge.fitted_trees > 0 and scores[best] > scores[0] + 0.1  # the forest, and well above the ridge alone
    assert ridge.tree_value.shape[0] == N_TREES
    # expression linear in the features: a forest of share 1 does not win
    x, y, names = sections_of(rng, rng.normal(size=(len(FEATURE_NAMES), 20)), noise=0.5)
    assert ColourRidge(20, rank=2, trees="auto").fit(x.float(), y, names).fitted_trees < 1


def test_colour_ridge_auto_forest_predicts_one_gene(rng):
    # one gene: one programme, which scikit-learn's forest predicts as a vector, not a column
    features = rng.normal(size=(180, len(FEATURE_NAMES))).astype(np.float32)
    x = torch.from_numpy(features)
    y = torch.from_numpy(np.abs(features[:, :1]) + 0.3 * rng.normal(size=(180, 1)))
    ridge = ColourRidge(1, rank="auto", trees="auto").fit(x, y, np.repeat(["S0", "S1", "S2"], 60))
    assert ridge.fitted_trees > 0  # |feature| is not linear: a forest wins
    with torch.no_grad():
        predicted = ridge(x)
    assert predicted.shape == (180, 1)
    assert np.corrcoef(predicted[:, 0].numpy(), y[:, 0].numpy())[0, 1] > 0.5


def test_colour_ridge_auto_forest_from_one_section(rng, caplog):
    x, y, names = sections_of(rng, rng.normal(size=(len(FEATURE_NAMES), 8)), noise=1.0, n_sections=1)
    with caplog.at_level("INFO", logger="st_hist2st"):
        ridge = ColourRidge(8, rank="auto", trees="auto").fit(x.float(), y, names)
    assert (ridge.fitted_trees, ridge.fitted_leaf) == SINGLE_SECTION_FOREST
    assert "forest cannot be chosen by leaving a section out" in caplog.text


def test_colour_ridge_auto_forest_is_chosen_over_the_training_sections_and_kept(adata, tiny, tmp_path):
    common = {"preset": "wide", "max_epochs": 1, "show_progress_bar": False, **tiny}
    settings = {"colour_ridge": 0.5, "colour_ridge_rank": "auto", "colour_ridge_trees": "auto"}
    model = hist2st.tl.fit(adata, "hires", **settings, **common)
    chosen = model.preprocessing["colour_ridge_trees"]
    assert chosen in {share for share, _ in AUTO_FORESTS} and model.module.colour_ridge.fitted_trees == chosen
    model.save(tmp_path / "model")
    loaded = hist2st.Hist2ST.load(tmp_path / "model")
    assert loaded.architecture.colour_ridge_trees == "auto" and loaded.module.colour_ridge.fitted_trees == chosen
    np.testing.assert_array_equal(
        loaded.predict(adata, show_progress_bar=False), model.predict(adata, show_progress_bar=False)
    )
    card = (model.save_pretrained(tmp_path / "card") / "README.md").read_text()
    if chosen:
        assert f"{chosen:g} of it from extremely randomised trees" in card and "programmes (chosen by" in card
