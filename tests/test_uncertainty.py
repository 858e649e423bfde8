"""Predictive uncertainty from the ZINB head: the distribution carried to the targets' scale, and its layers."""

from __future__ import annotations

import numpy as np
import pytest

import st_hist2st as hist2st
from st_hist2st._uncertainty import target_distribution

TOTAL = 2000.0


def zinb_sample(rng, mean, disp, pi, n):
    """``n`` draws of counts per entry, as a gamma-Poisson mixture with zeros added with probability ``pi``."""
    rate = rng.gamma(disp, mean / disp, size=(n, *mean.shape))
    counts = rng.poisson(rate)
    counts[rng.uniform(size=counts.shape) < pi] = 0
    return np.log10(1 + 1e4 * counts / TOTAL)


def test_intervals_cover_at_the_nominal_rate(rng):
    # counts large enough that their steps are small against the intervals (discrete counts cover at least the
    # nominal rate, and more where there are only a few possible values)
    shape = (60, 40)
    mean, disp, pi = rng.uniform(30, 300, shape), rng.uniform(2, 20, shape), rng.uniform(0, 0.02, shape)
    std, intervals = target_distribution(mean, disp, pi, TOTAL, levels=(0.8, 0.95))
    y = zinb_sample(rng, mean, disp, pi, 50)
    for level, (lower, upper) in intervals.items():
        coverage = ((y >= lower) & (y <= upper)).mean()
        assert level - 0.01 <= coverage <= level + 0.03, (level, coverage)
    # the rare zeros far below the rest make a sample's standard deviation noisy: compare without them, and
    # with them through the variance of a mixture of a point at 0 and the negative binomial
    no_zeros = zinb_sample(rng, mean, disp, np.zeros(shape), 2000)
    std_nb, _ = target_distribution(mean, disp, np.zeros(shape), TOTAL)
    mixture = np.sqrt((1 - pi) * no_zeros.var(0) + pi * (1 - pi) * no_zeros.mean(0) ** 2)
    for exact, sampled in ((std_nb, no_zeros.std(0)), (std, mixture)):
        ratio = exact / sampled  # each sampled value is off by about 2 % (2,000 draws), their mean by far less
        assert abs(ratio.mean() - 1) < 0.005 and np.abs(ratio - 1).max() < 0.12


def test_zero_inflation_moves_the_lower_end_to_zero(rng):
    mean, disp = np.full((1, 2), 50.0), np.full((1, 2), 5.0)
    _, clean = target_distribution(mean, disp, np.array([[0.0, 0.3]]), TOTAL, levels=(0.8,))
    lower, upper = clean[0.8]
    assert lower[0, 0] > 0 and lower[0, 1] == 0  # 30 % zeros put the 10 % quantile at 0 counts
    assert upper[0, 1] < upper[0, 0]  # and the 90 % quantile to the NB's 86 % one


def test_a_mixture_of_equal_models_is_the_model(rng):
    mean, disp, pi = rng.uniform(1, 40, (5, 6)), rng.uniform(0.5, 5, (5, 6)), rng.uniform(0, 0.3, (5, 6))
    one = target_distribution(mean, disp, pi, TOTAL)
    two = target_distribution(np.stack([mean, mean]), np.stack([disp, disp]), np.stack([pi, pi]), TOTAL)
    np.testing.assert_allclose(one[0], two[0], rtol=1e-6)
    for level in one[1]:
        np.testing.assert_array_equal(one[1][level][0], two[1][level][0])
        np.testing.assert_array_equal(one[1][level][1], two[1][level][1])


def test_huge_counts_are_summed_in_logarithms():
    # (theta / (theta + mu)) ** theta is below the smallest float here
    std, intervals = target_distribution(np.array([[2e4]]), np.array([[2e3]]), np.array([[0.0]]), TOTAL, (0.95,))
    lower, upper = intervals[0.95]
    centre = np.log10(1 + 1e4 * 2e4 / TOTAL)
    assert lower[0, 0] < centre < upper[0, 0]
    assert 0 < std[0, 0] < 0.05


def test_bad_levels_are_refused():
    with pytest.raises(ValueError, match="interval_levels"):
        target_distribution(np.ones((1, 1)), np.ones((1, 1)), np.zeros((1, 1)), TOTAL, levels=(95,))


def test_predict_writes_uncertainty_layers_and_evaluate_their_coverage(adata, trained):
    assert trained.training.zinb > 0 and "median_total" in trained.preprocessing
    hist2st.tl.predict(adata, trained, uncertainty=True, show_progress_bar=False)
    info = adata.uns["hist2st"]["uncertainty"]
    std = adata.layers[info["std"]]
    assert std.shape == adata.shape
    assert np.isfinite(std).all() and (std >= 0).all()
    lower, upper = (adata.layers[name] for name in info["intervals"]["95"])
    inner_lower, inner_upper = (adata.layers[name] for name in info["intervals"]["80"])
    assert (lower <= inner_lower).all() and (inner_lower <= inner_upper).all() and (inner_upper <= upper).all()
    hist2st.tl.evaluate(adata, copy=False)
    summary = adata.uns["hist2st_pearson"]
    assert 0 <= summary["coverage80"] <= summary["coverage95"] <= 1
    table = summary["table"]
    assert {"coverage80", "coverage95"} <= set(table.columns)


def test_uncertainty_needs_a_trained_zinb_head(adata, tiny):
    model = hist2st.tl.fit(
        adata, "hires", preset="fast", max_epochs=1, show_progress_bar=False, accelerator="cpu", **tiny
    )
    assert model.training.zinb == 0
    with pytest.raises(ValueError, match="uncertainty=False"):
        hist2st.tl.predict(adata, model, uncertainty=True, show_progress_bar=False)
    assert "hist2st" not in adata.layers  # refused before predicting


def test_zinb_biases_start_at_the_gene_counts(adata, tiny):
    from st_hist2st._data._dataset import count_statistics
    from st_hist2st._data._section import prepare_sections

    model = hist2st.tl.fit(
        adata, "hires", zinb=0.25, init_zinb_bias=True, max_epochs=1, show_progress_bar=False, **tiny
    )
    assert model.module.zinb is not None
    sections = prepare_sections(adata, "hires", genes=model.genes, show_progress_bar=False)
    mean, _ = count_statistics(sections)
    # one epoch at the paper's learning rate moves the biases by far less than the spread of the gene means
    bias = model.module.zinb.mean.bias.detach().double()
    assert np.corrcoef(bias.numpy(), mean.log().numpy())[0, 1] > 0.99


def test_an_ensemble_of_one_model_twice_has_its_uncertainty(adata, trained):
    one = hist2st.tl.predict(adata, trained, uncertainty=True, copy=True, show_progress_bar=False)
    two = hist2st.tl.predict(adata, [trained, trained], uncertainty=True, copy=True, show_progress_bar=False)
    for name in ("hist2st_std", "hist2st_lower80", "hist2st_upper95"):
        np.testing.assert_allclose(two.layers[name], one.layers[name], rtol=1e-5, atol=1e-6)
    assert "hist2st_std" not in adata.layers  # copy=True leaves the caller's AnnData alone
