"""Windowed prediction: sections of any size in windows of at most ``max_spots`` spots."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import dijkstra

import st_hist2st as hist2st
from st_hist2st._data._windows import plan_windows
from st_hist2st._inference import predict_windows
from st_hist2st.nn import Architecture, Hist2STModule


def hex_section(rows: int, cols: int, seed: int = 0):
    """Grid positions, a 6-neighbour graph (both directions) and random uint8 patches of a Visium-like grid."""
    positions = np.array([(2 * c + (r % 2), r) for r in range(rows) for c in range(cols)])
    index = {tuple(p): i for i, p in enumerate(positions)}
    src, dst = [], []
    for i, (x, y) in enumerate(positions):
        for dx, dy in ((2, 0), (-2, 0), (1, 1), (-1, 1), (1, -1), (-1, -1)):
            j = index.get((x + dx, y + dy))
            if j is not None:
                src.append(j)
                dst.append(i)
    edge_index = torch.tensor([src, dst])
    generator = torch.Generator().manual_seed(seed)
    patches = torch.randint(0, 256, (len(positions), 3, 28, 28), dtype=torch.uint8, generator=generator)
    return torch.from_numpy(positions), edge_index, patches


def reach_within(edge_index: torch.Tensor, n: int, spots: np.ndarray, hops: int) -> list[set[int]]:
    """For each spot, the spots whose messages reach it within ``hops`` layers (breadth first, independently)."""
    graph = sp.csr_matrix((np.ones(edge_index.shape[1]), (edge_index[1].numpy(), edge_index[0].numpy())), (n, n))
    dist = dijkstra(graph, directed=True, indices=spots, unweighted=True, limit=hops + 0.5)
    return [set(np.flatnonzero(np.isfinite(row))) for row in dist]


@pytest.mark.parametrize("margin", [0, 2, 4])
def test_windows_partition_the_section_and_hold_each_spots_graph_reach(margin):
    positions, edge_index, _ = hex_section(40, 30)
    n = len(positions)
    windows = plan_windows(positions, edge_index, max_spots=150, margin=margin)
    assert len(windows) >= 1200 // 150
    predicted = np.concatenate([w.members[w.core] for w in windows])
    np.testing.assert_array_equal(np.sort(predicted), np.arange(n))  # every spot once
    for w in windows:
        assert len(w.core) <= 150
        members = set(w.members.tolist())
        for reach in reach_within(edge_index, n, w.members[w.core], margin):
            assert reach <= members


def tiny_module(**overrides) -> Hist2STModule:
    settings = {
        "n_genes": 5,
        "fig_size": 28,
        "patch_size": 7,
        "channel": 8,
        "depth1": 1,
        "depth2": 1,
        "depth3": 2,
        "heads": 2,
        "dim_head": 8,
        "dropout": 0.0,
        "section_norm": True,
        "section_batchnorm": True,
        **overrides,
    }
    torch.manual_seed(0)
    return Hist2STModule(Architecture(**settings)).eval()


@pytest.mark.parametrize("overrides", [{}, {"section_norm": False, "section_batchnorm": False}])
def test_one_window_over_the_section_reproduces_whole_section_prediction(overrides):
    positions, edge_index, patches = hex_section(12, 10)
    module = tiny_module(**overrides)
    with torch.inference_mode():
        whole = module(patches, positions, edge_index).expression[0].numpy()
    for max_spots in (None, len(positions)):
        windowed = predict_windows(
            module,
            lambda i: patches[torch.as_tensor(i)],
            positions,
            edge_index,
            torch.device("cpu"),
            max_spots=max_spots,
        )
        # the same operations, the section's statistics summed in float64 instead of float32
        np.testing.assert_allclose(windowed, whole, rtol=0, atol=2e-5)


def test_without_attention_windows_reproduce_the_whole_section_exactly():
    """The graph network's reach is its layers: with a margin of as many hops, only attention sees less."""
    positions, edge_index, patches = hex_section(30, 20)
    module = tiny_module(depth2=0, depth3=3)
    with torch.inference_mode():
        whole = module(patches, positions, edge_index).expression[0].numpy()
    get = lambda i: patches[torch.as_tensor(i)]  # noqa: E731
    cpu = torch.device("cpu")
    windowed = predict_windows(module, get, positions, edge_index, cpu, max_spots=120)
    np.testing.assert_allclose(windowed, whole, rtol=0, atol=2e-5)
    # too small a margin cuts the graph network's reach: the check above can fail
    short = predict_windows(module, get, positions, edge_index, cpu, max_spots=120, margin=1)
    assert np.abs(short - whole).max() > 1e-3


def test_windows_attending_to_every_other_spot_reproduce_whole_section_attention():
    """Context spots stand for the spots outside a window; when they are all of them, attention is exact."""
    positions, edge_index, patches = hex_section(20, 12)
    module = tiny_module(depth2=2, depth3=2)
    with torch.inference_mode():
        whole = module(patches, positions, edge_index).expression[0].numpy()
    get = lambda i: patches[torch.as_tensor(i)]  # noqa: E731
    cpu = torch.device("cpu")
    n = len(positions)
    everything = predict_windows(module, get, positions, edge_index, cpu, max_spots=80, window_context=n)
    np.testing.assert_allclose(everything, whole, rtol=0, atol=2e-5)
    alone = predict_windows(module, get, positions, edge_index, cpu, max_spots=80, window_context=0)
    sampled = predict_windows(module, get, positions, edge_index, cpu, max_spots=80, window_context=60)
    assert np.abs(alone - whole).max() > 1e-3  # windows alone see less than the section
    assert np.abs(sampled - whole).mean() < np.abs(alone - whole).mean()


def test_window_sequence_weights_each_context_spot_as_its_share_of_the_outside():
    from st_hist2st._inference import window_sequence

    members = np.array([0, 1, 2, 3])
    sequence, bias = window_sequence(members, np.array([2, 5, 8]), n_spots=10)
    np.testing.assert_array_equal(sequence, [0, 1, 2, 3, 5, 8])
    np.testing.assert_allclose(np.exp(bias), [1, 1, 1, 1, 3, 3])  # 6 spots outside, 2 drawn
    assert window_sequence(members, np.array([1, 3]), 10)[1] is None


def test_predict_in_windows_on_anndata(trained, adata, caplog):
    n = adata.n_obs // 2  # spots per library
    whole = hist2st.tl.predict(adata, trained, copy=True, max_spots=None, show_progress_bar=False)
    same = hist2st.tl.predict(adata, trained, copy=True, max_spots=n, show_progress_bar=False)
    np.testing.assert_allclose(same.layers["hist2st"], whole.layers["hist2st"], rtol=0, atol=2e-5)
    with caplog.at_level(logging.INFO, logger="st_hist2st"):
        small = hist2st.tl.predict(adata, trained, copy=True, max_spots=24, show_progress_bar=False)
    assert "predicted in windows of at most 24 spots" in caplog.text
    assert small.uns["hist2st"]["max_spots"] == 24
    # the default context (256 spots) holds all 64 spots of a library: attention over the whole section
    np.testing.assert_allclose(small.layers["hist2st"], whole.layers["hist2st"], rtol=0, atol=2e-5)
    alone = hist2st.tl.predict(adata, trained, copy=True, max_spots=24, window_context=0, show_progress_bar=False)
    assert np.isfinite(alone.layers["hist2st"]).all()
    assert not np.allclose(alone.layers["hist2st"], whole.layers["hist2st"], rtol=0, atol=1e-4)


def test_patches_cut_as_needed_give_the_held_patches_predictions(trained, adata, monkeypatch):
    import st_hist2st._model as model_module

    held = trained.predict(adata, max_spots=24, show_progress_bar=False)
    monkeypatch.setattr(model_module, "HOLD_PATCHES_UP_TO", 10)
    cut = trained.predict(adata, max_spots=24, show_progress_bar=False)
    np.testing.assert_array_equal(cut, held)


@pytest.mark.parametrize("bad", [0, 1, 2.5, "4096", True])
def test_max_spots_is_checked_first(trained, adata, bad):
    with pytest.raises(ValueError, match="`max_spots` must be an integer"):
        hist2st.tl.predict(adata, trained, copy=True, max_spots=bad, show_progress_bar=False)
    with pytest.raises(ValueError, match="`window_context` must be"):
        hist2st.tl.predict(adata, trained, copy=True, window_context=-1, show_progress_bar=False)


def test_training_on_a_section_above_max_spots_steps_on_windows(adata, tiny, caplog, monkeypatch):
    from st_hist2st.nn._plan import Hist2STPlan

    seen = []
    losses = Hist2STPlan.losses

    def record(self, batch):
        seen.append(batch["patches"].shape[0])
        return losses(self, batch)

    monkeypatch.setattr(Hist2STPlan, "losses", record)
    with caplog.at_level(logging.INFO, logger="st_hist2st"):
        model = hist2st.tl.fit(
            adata,
            "hires",
            max_epochs=2,
            max_spots=24,
            validation_libraries=["S1"],
            show_progress_bar=False,
            accelerator="cpu",
            **tiny,
        )
    assert "library 'S0': 64 spots, more than `max_spots=24`" in caplog.text
    assert seen and set(seen) == {24}
    assert np.isfinite(model.history["val_pearson"]).all()  # S1 validated in windows
    with pytest.raises(ValueError, match="`max_spots` must be an integer"):
        hist2st.Hist2ST(["a", "b"], max_spots=1)
