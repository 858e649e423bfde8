"""The package as a scverse user meets it: no side effects, one vocabulary, quiet output, stable names."""

from __future__ import annotations

import subprocess
import sys
import types
import warnings

import numpy as np
import pytest
import torch

import st_hist2st as hist2st
from st_hist2st._training_run import seeded
from st_hist2st.nn._numerics import denormals_flushed

FAST = {"show_progress_bar": False, "accelerator": "cpu"}

TORCH_STATE = """
import torch
def state():
    return (
        bool((torch.tensor(1e-30) * 1e-10).item() == 0.0),  # denormals flushed
        torch.get_default_dtype(),
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_grad_enabled(),
        torch.get_rng_state().sum().item(),
    )
before = state()
import st_hist2st
assert state() == before, (state(), before)
"""


def test_import_prints_nothing_and_leaves_torch_as_it_was():
    done = subprocess.run([sys.executable, "-c", TORCH_STATE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""


@pytest.mark.parametrize("flushed", [False, True])
def test_fit_and_predict_restore_the_callers_denormal_setting(adata, tiny, flushed):
    torch.set_flush_denormal(flushed)
    try:
        model = hist2st.tl.fit(adata, "hires", max_epochs=1, **FAST, **tiny)
        assert denormals_flushed() is flushed
        model.predict(adata, show_progress_bar=False)
        assert denormals_flushed() is flushed
    finally:
        torch.set_flush_denormal(False)


def test_one_precision_vocabulary_for_fit_and_predict(trained, adata, tiny):
    hist2st.tl.fit(adata, "hires", max_epochs=1, precision="bf16", **FAST, **tiny)  # Lightning's 'bf16-mixed'
    long = trained.predict(adata, precision="bf16-mixed", show_progress_bar=False)
    short = trained.predict(adata, precision="bf16", show_progress_bar=False)
    np.testing.assert_array_equal(long, short)
    assert hist2st.tl.predict(adata, trained, precision="32-true", copy=True, show_progress_bar=False)
    with pytest.raises(ValueError, match="'32-true', 'bf16-mixed'"):
        trained.predict(adata, precision="16-mixed")


def test_seeded_restores_the_callers_generators():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    with seeded(0):
        torch.rand(10)
    assert torch.equal(torch.get_rng_state(), before)
    if cuda is not None:  # only where a GPU is present
        assert all(torch.equal(a, b) for a, b in zip(torch.cuda.get_rng_state_all(), cuda, strict=True))


def test_a_fit_prints_one_cropping_bar_no_advert_and_no_warning_of_ours(adata, tiny, capfd):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hist2st.tl.fit(adata, "hires", max_epochs=1, accelerator="cpu", show_progress_bar=True, **tiny)
    out, err = capfd.readouterr()
    text = out + err
    assert text.count("cropping patches:   0%") == 1, text  # one bar over both libraries and all bands
    assert "litlogger" not in text and "Tip:" not in text
    ours = [w for w in caught if "st_hist2st" in (w.filename or "")]
    assert ours == [], [str(w.message) for w in ours]


def test_pretrained_folder_with_a_model_card(trained, adata, tmp_path):
    folder = trained.save_pretrained(tmp_path / "m", card={"microns_per_pixel": 0.8})
    card = (folder / "README.md").read_text()
    assert "library_name: st-hist2st" in card
    assert f"Predicts {len(trained.genes)} genes" in card and "`paper`" in card and "| 0.8 |" in card
    assert f"crops of {trained.preprocessing['crop_microns']:.0f} um" in card  # the fixture's scale is known
    loaded = hist2st.Hist2ST.from_pretrained(folder)
    np.testing.assert_array_equal(
        loaded.predict(adata, show_progress_bar=False), trained.predict(adata, show_progress_bar=False)
    )


def test_model_card_names_the_crops_the_model_was_trained_on():
    from st_hist2st._persistence import crop_description

    assert crop_description({"crop_size": 112.0}, {"field_of_view": 4.0}) == "crops of 112 full-resolution pixels"
    # 400 um from the field of view or from `crop_microns=400`, which replaces it: the card cannot tell, nor need to
    assert crop_description({"crop_size": None, "crop_microns": 400.2}, {"field_of_view": 4.0}) == "crops of 400 um"
    unknown_scale = crop_description({"crop_size": None, "crop_microns": None}, {"field_of_view": 4.0})
    assert unknown_scale == "crops of 4 spot diameter(s)"
    assert crop_description({}, {}) == "crops of 1 spot diameter(s)"  # folders written before field_of_view


def test_from_pretrained_fetches_a_hub_repository_through_huggingface_hub(saved_folder, monkeypatch):
    asked = {}

    def snapshot_download(repo_id, revision, cache_dir, allow_patterns):
        asked.update(repo_id=repo_id, revision=revision, allow_patterns=allow_patterns)
        return str(saved_folder)

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download))
    model = hist2st.Hist2ST.from_pretrained("lab/her2st-hist2st", revision="v1")
    assert model.is_trained
    assert asked == {
        "repo_id": "lab/her2st-hist2st",
        "revision": "v1",
        "allow_patterns": ["config.json", "model.pt", "README.md"],
    }
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed
    with pytest.raises(ImportError, match=r"st-hist2st\[hub\]"):
        hist2st.Hist2ST.from_pretrained("lab/her2st-hist2st")


@pytest.fixture
def saved_folder(trained, tmp_path):
    return trained.save_pretrained(tmp_path / "hub")


def test_the_old_module_name_still_answers_with_a_warning():
    with pytest.warns(FutureWarning, match="st_hist2st.nn.Architecture"):
        architecture = hist2st.model.Architecture
    assert architecture is hist2st.nn.Architecture
    with pytest.warns(FutureWarning, match=r"st_hist2st\.nn\._transformer\.Transformer"):
        assert hist2st.model.Transformer is not None


def test_shared_parameter_docs_are_filled_in():
    for module in (hist2st.tl, hist2st.pl, hist2st.pp, hist2st.datasets):
        for name in module.__all__:
            doc = getattr(module, name).__doc__ or ""
            assert "%(" not in doc, name
    assert "a layer of the ImageContainer" in hist2st.tl.fit.__doc__
    assert "a layer of the ImageContainer" in hist2st.tl.predict.__doc__
    assert "a layer of the ImageContainer" in hist2st.pp.extract_patches.__doc__
