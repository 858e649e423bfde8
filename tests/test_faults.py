"""The fault matrix: every bad input and failure a user can meet, with the error, warning or invariance it gets.

Bad input must fail with the argument and the fix named, before any long work; a failure part-way (a full disk,
Ctrl-C) must leave nothing half-written; results must not depend on the order of the rows.
"""

from __future__ import annotations

import copy
import json
import shutil
import signal
import warnings
from pathlib import Path

import anndata as ad
import lightning as L
import numpy as np
import pytest
import torch

import st_hist2st as hist2st
from st_hist2st import _persistence
from st_hist2st._cli import main
from st_hist2st._data._graph import build_connectivities
from st_hist2st._data._section import prepare_sections
from st_hist2st.datasets import _her2st
from st_hist2st.tl._evaluate import observed_targets

FAST = {"show_progress_bar": False, "accelerator": "cpu"}


@pytest.fixture
def no_training(monkeypatch):
    """Fail any test that reaches training: its error had to come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("training started before the bad input was refused")

    monkeypatch.setattr(L.Trainer, "fit", refuse)


# ---------------------------------------------------------------------------------------------- bad input


def _drop_spatial(a):
    del a.obsm["spatial"]


def _rename_library(a):
    a.obs["library_id"] = a.obs["library_id"].cat.rename_categories({"S1": "other"})


def _drop_scale_factor(a):
    del a.uns["spatial"]["S0"]["scalefactors"]["tissue_hires_scalef"]


def _spot_outside(a):
    a.obsm["spatial"][3] = [1e6, 5.0]


def _count(value):
    def set_count(a):
        x = a.X.toarray()
        x[0, 0] = value
        a.X = x

    return set_count


def _drop_spot_diameter(a):
    del a.uns["spatial"]["S0"]["scalefactors"]["spot_diameter_fullres"]


def _duplicate_gene(a):
    a.var_names = [a.var_names[0], *a.var_names[:-1]]


BAD_INPUT = {
    "no coordinates": (_drop_spatial, {}, KeyError, r"obsm\['spatial'\]"),
    "unknown image key": (None, {"image_key": "lowres"}, KeyError, "Unknown `image_key='lowres'`"),
    "library without images": (_rename_library, {}, KeyError, "Library 'other' has no entry"),
    "unknown validation library": (None, {"validation_libraries": ["nope"]}, ValueError, "unknown libraries"),
    "no scale factor": (_drop_scale_factor, {}, KeyError, "tissue_hires_scalef"),
    "spot outside the image": (_spot_outside, {}, ValueError, "outside"),
    "NaN count": (_count(np.nan), {}, ValueError, "NaN"),
    "negative count": (_count(-1.0), {}, ValueError, "negative"),
    "non-integer count": (_count(0.5), {}, ValueError, "non-integer"),
    "unknown gene": (None, {"genes": ["gene0", "NOTAGENE"]}, KeyError, "not in `adata.var_names`"),
    "no crop size": (_drop_spot_diameter, {}, KeyError, "crop_size"),
    "zero crop size": (None, {"crop_size": 0}, ValueError, "crop_size"),
    "duplicate gene names": (_duplicate_gene, {}, ValueError, r"var_names_make_unique\(\)"),
    "unknown settings": (None, {"epochs": 3, "lr": 0.1}, TypeError, "'epochs' \\(did you mean 'max_epochs'\\?\\)"),
    "n_genes as a setting": (None, {"n_genes": 3}, TypeError, "number of `genes`"),
    "EMA decay out of range": (None, {"ema_decay": 1.0}, ValueError, "ema_decay"),
    "dropout out of range": (None, {"dropout": 1.5}, ValueError, "dropout"),
    "unknown normalisation": (None, {"normalize_over": "spots"}, ValueError, "normalize_over"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_fit_refuses_bad_input_before_training(case, adata, tiny, no_training):
    mutate, kwargs, error, match = BAD_INPUT[case]
    if mutate is not None:
        mutate(adata)
    kwargs = {**tiny, **FAST, "max_epochs": 1, **kwargs}
    with pytest.raises(error, match=match), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hist2st.tl.fit(adata, kwargs.pop("image_key", "hires"), **kwargs)
    # the error alone: no warning about a crop that is then refused
    assert not [w for w in caught if "sets the crop" in str(w.message)]


def test_no_spots_are_refused(adata):
    with pytest.raises(ValueError, match="no spots"):
        prepare_sections(adata[:0].copy(), "hires", genes=list(adata.var_names), show_progress_bar=False)


def test_predict_refuses_bad_input_and_writes_nothing(trained, adata):
    with pytest.raises(KeyError, match="not in `adata.var_names`"):
        hist2st.tl.predict(adata[:, :5].copy(), trained)
    with pytest.raises(ValueError, match="view"):
        hist2st.tl.predict(adata[:10], trained)
    duplicated = adata.copy()
    _duplicate_gene(duplicated)
    with pytest.raises(ValueError, match=r"var_names_make_unique\(\)"):
        hist2st.tl.predict(duplicated, trained)
    with pytest.raises(ValueError, match=r"var_names_make_unique\(\)"):
        hist2st.tl.evaluate(duplicated, copy=True)
    del adata.uns["spatial"]["S1"]["images"]["hires"]
    with pytest.raises(KeyError, match="Unknown `image_key='hires'`"):
        hist2st.tl.predict(adata, trained)
    assert "hist2st" not in adata.layers


def test_untrained_model_refuses_to_predict(adata, tiny):
    with pytest.raises(RuntimeError, match="not trained"):
        hist2st.Hist2ST(list(adata.var_names), **tiny).predict(adata)


# ---------------------------------------------------------------------- warnings where results are meaningless


def test_fit_and_predict_warn_once_when_patches_are_mostly_padding(adata, tiny, trained):
    # the synthetic image is 320 px wide: a 1200-px crop is over 90 % padding
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hist2st.tl.fit(adata, "hires", crop_size=1200, max_epochs=1, validation_libraries=["S1"], **FAST, **tiny)
    padding = [w for w in caught if "more than half padding" in str(w.message)]
    assert len(padding) == 1, [str(w.message) for w in caught]
    assert "128 of 128 patches" in str(padding[0].message) and "1200" in str(padding[0].message)
    with pytest.warns(UserWarning, match="more than half padding"):
        trained.predict(adata, crop_size=1200, show_progress_bar=False)


def test_one_gene_is_refused_with_the_normalisation_that_fixes_it(adata, tiny, no_training):
    with pytest.raises(ValueError, match="normalize_over='all'"):
        hist2st.tl.fit(adata, "hires", genes=["gene0"], max_epochs=1, **FAST, **tiny)


def test_one_gene_trains_when_normalised_over_all_genes(adata, tiny):
    model = hist2st.tl.fit(adata, "hires", genes=["gene0"], normalize_over="all", max_epochs=1, **FAST, **tiny)
    assert model.preprocessing["normalize_over"] == "all"
    hist2st.tl.predict(adata, model, show_progress_bar=False)
    assert adata.uns["hist2st"]["normalize_over"] == "all"
    # evaluated on the model's scale: with a spot's total over the one gene, every observed value would be equal
    observed = observed_targets(adata, "hist2st", None)["gene0"]
    assert observed.std() > 0
    table = hist2st.tl.evaluate(adata, copy=True)
    assert table["r"].notna().all()


def test_genes_constant_over_the_training_spots_are_named(adata, tiny):
    x = adata.X.toarray()
    x[:, 3] = 0
    adata.X = x
    with pytest.warns(UserWarning, match=r"1 of 12 genes have the same target.*gene3"):
        hist2st.tl.fit(adata, "hires", max_epochs=1, **FAST, **tiny)


# --------------------------------------------------------------------------------- atomic, verified folders


@pytest.fixture
def saved(trained, tmp_path):
    trained.save(tmp_path / "model")
    return tmp_path / "model"


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_save_leaves_the_previous_model(failure, saved, adata, tiny, monkeypatch):
    before = hist2st.Hist2ST.load(saved).predict(adata, show_progress_bar=False)
    other = hist2st.Hist2ST(["a", "b"], **tiny)
    other.is_trained = True

    def half_written(obj, path):
        Path(path).write_bytes(b"partial")
        raise failure

    monkeypatch.setattr(_persistence.torch, "save", half_written)
    with pytest.raises(type(failure)):
        other.save(saved, overwrite=True)
    monkeypatch.undo()
    np.testing.assert_array_equal(hist2st.Hist2ST.load(saved).predict(adata, show_progress_bar=False), before)
    assert _leftovers(saved) == []


def test_a_failed_first_save_leaves_no_folder(trained, tmp_path, monkeypatch):
    monkeypatch.setattr(_persistence.torch, "save", lambda obj, path: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        trained.save(tmp_path / "new")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_a_model_but_not_other_files(trained, saved, tmp_path):
    trained.save(saved, overwrite=True)
    assert sorted(p.name for p in saved.iterdir()) == ["config.json", "model.pt"]
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="no model"):
        trained.save(tmp_path / "notes", overwrite=True)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def _edit_config(folder: Path, edit) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


def _flip_byte(folder: Path) -> None:
    data = bytearray((folder / "model.pt").read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / "model.pt").write_bytes(bytes(data))


def _truncate(folder: Path) -> None:
    data = (folder / "model.pt").read_bytes()
    (folder / "model.pt").write_bytes(data[: len(data) // 2])


DAMAGE = {
    "flipped byte": (_flip_byte, "model.pt does not match the SHA-256"),
    "truncated weights": (_truncate, "model.pt has .* bytes but .* were written"),
    "missing weights": (lambda f: (f / "model.pt").unlink(), "model.pt not found"),
    "config not JSON": (lambda f: (f / "config.json").write_text("{"), "not valid JSON"),
    "genes vs n_genes": (lambda f: _edit_config(f, lambda c: c["genes"].pop()), "n_genes is 12 but 'genes' lists 11"),
    "unknown field": (
        lambda f: _edit_config(f, lambda c: c["architecture"].update(depth9=1)),
        r"architecture has unknown field\(s\) \['depth9'\]",
    ),
    "wrong type": (
        lambda f: _edit_config(f, lambda c: c["architecture"].update(depth2="two")),
        "architecture.depth2 must be int, got 'two'",
    ),
    "value out of range": (
        lambda f: _edit_config(f, lambda c: c["training"].update(learning_rate=-1)),
        "training: `learning_rate` must be positive",
    ),
    "other network's weights": (
        lambda f: _edit_config(f, lambda c: c["architecture"].update(depth2=2)),
        "do not fit the network",
    ),
    "not a model": (lambda f: _edit_config(f, lambda c: c.update({"class": "Other"})), "holds a Other"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_folder_is_refused_naming_what_is_wrong(damage, saved):
    corrupt, match = DAMAGE[damage]
    corrupt(saved)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        hist2st.Hist2ST.load(saved)


def test_a_folder_of_the_first_format_loads_with_a_warning(saved, trained, adata):
    _edit_config(saved, lambda c: (c.pop("weights"), c.update(format_version=1)))
    with pytest.warns(UserWarning, match="without a checksum"):
        loaded = hist2st.Hist2ST.load(saved)
    np.testing.assert_array_equal(
        loaded.predict(adata, show_progress_bar=False), trained.predict(adata, show_progress_bar=False)
    )


# -------------------------------------------------------------------------------------- resumable training


class Interrupt(L.Callback):
    """Press Ctrl-C when ``epoch`` starts."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


RESUMABLE = {"preset": "fast", "max_epochs": 4, "seed": 3, "dihedral": True, "validation_libraries": ["S1"]}


def test_a_resumed_fit_ends_with_the_weights_of_an_uninterrupted_one(adata, tiny, tmp_path):
    tiny = {**tiny, "dropout": 0.1}  # random draws in every step: dropout, rotations, the order of sections
    whole = hist2st.tl.fit(adata, "hires", **RESUMABLE, **FAST, **tiny)
    with pytest.raises(KeyboardInterrupt):
        hist2st.tl.fit(
            adata,
            "hires",
            checkpoint_dir=tmp_path,
            trainer_kwargs={"callbacks": [Interrupt(2)]},
            **RESUMABLE,
            **FAST,
            **tiny,
        )
    assert (tmp_path / "last.ckpt").is_file()
    resumed = hist2st.tl.fit(adata, "hires", resume=tmp_path, **RESUMABLE, **FAST, **tiny)
    for name, value in whole.module.state_dict().items():
        torch.testing.assert_close(resumed.module.state_dict()[name], value, rtol=0, atol=0, msg=name)
    assert resumed.history["epoch"].tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(resumed.history["train_loss"], whole.history["train_loss"])


class StopAfterBatch(L.Callback):
    """Stop the fit after the first batch of ``epoch``, as Lightning's ``max_time`` does when time runs out."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == 0:
            trainer.should_stop = True


def test_a_fit_stopped_within_an_epoch_resumes_from_the_last_whole_one(adata, tiny, tmp_path):
    tiny = {**tiny, "dropout": 0.1}
    settings = {**RESUMABLE, "crops_per_section": 2}  # several steps per epoch, so a stop can fall inside one
    whole = hist2st.tl.fit(adata, "hires", **settings, **FAST, **tiny)
    stopped = hist2st.tl.fit(
        adata,
        "hires",
        checkpoint_dir=tmp_path,
        trainer_kwargs={"callbacks": [StopAfterBatch(2)]},
        **settings,
        **FAST,
        **tiny,
    )
    # the cut epoch keeps its row (its step changed the weights), marked so curves and counts can leave it out
    assert stopped.history["epoch"].tolist() == [0, 1, 2]
    assert stopped.history["complete"].tolist() == [True, True, False]
    assert whole.history["complete"].all()
    saved = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["epoch"] == 1  # the last whole epoch, not the cut one
    resumed = hist2st.tl.fit(adata, "hires", resume=tmp_path, **settings, **FAST, **tiny)
    assert resumed.history["epoch"].tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(resumed.history["lr"], whole.history["lr"])
    np.testing.assert_array_equal(resumed.history["train_loss"], whole.history["train_loss"])
    for name, value in whole.module.state_dict().items():
        torch.testing.assert_close(resumed.module.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_ctrl_c_raises_keyboard_interrupt_and_keeps_the_handler(adata, tiny):
    handler = signal.getsignal(signal.SIGINT)
    model = hist2st.Hist2ST(list(adata.var_names), **tiny)
    with pytest.raises(KeyboardInterrupt):  # Lightning itself would raise SystemExit and ignore Ctrl-C after
        model.fit(adata, "hires", max_epochs=3, trainer_kwargs={"callbacks": [Interrupt(1)]}, **FAST)
    assert signal.getsignal(signal.SIGINT) is handler
    assert not model.is_trained and model.history.empty


@pytest.fixture
def own_trained(trained):
    """A copy of the session's trained model, for tests that train it further."""
    return copy.deepcopy(trained)


def test_a_refit_after_predict_trains_in_training_mode(own_trained, adata):
    trained = own_trained
    trained.predict(adata, show_progress_bar=False)  # leaves the network in eval mode
    modes = []

    class Mode(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            modes.append(all(m.training for m in pl_module.net.modules()))

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # Lightning warns of modules in eval mode
        trained.fit(adata, "hires", max_epochs=1, trainer_kwargs={"callbacks": [Mode()]}, **FAST)
    assert modes and all(modes)


def test_an_interrupted_refit_keeps_the_previous_weights_and_history(own_trained, adata, caplog):
    trained = own_trained
    before = {k: v.clone() for k, v in trained.module.state_dict().items()}
    history = trained.history.copy()
    prediction = trained.predict(adata, show_progress_bar=False)
    with pytest.raises(KeyboardInterrupt):
        trained.fit(adata, "hires", max_epochs=3, trainer_kwargs={"callbacks": [Interrupt(1)]}, **FAST)
    assert "keeps its previous weights" in caplog.text
    assert trained.is_trained and trained.training.max_epochs == 2  # the fixture's, not the interrupted fit's
    for name, value in before.items():
        torch.testing.assert_close(trained.module.state_dict()[name], value, rtol=0, atol=0)
    assert trained.history.equals(history)
    np.testing.assert_array_equal(trained.predict(adata, show_progress_bar=False), prediction)


def test_resume_refuses_a_checkpoint_of_other_genes_or_none(adata, tiny, tmp_path, no_training):
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        hist2st.tl.fit(adata, "hires", resume=tmp_path, max_epochs=1, **FAST, **tiny)
    torch.save({"st_hist2st": {"genes": ["x"]}, "hyper_parameters": {"architecture": {}}}, tmp_path / "last.ckpt")
    with pytest.raises(ValueError, match="trained on 1 genes"):
        hist2st.tl.fit(adata, "hires", resume=tmp_path, max_epochs=1, **FAST, **tiny)


# -------------------------------------------------------------------------------- independent of row order


@pytest.mark.parametrize("layout", ["st", "visium"])
def test_the_spot_graph_does_not_depend_on_row_order(layout):
    adata = hist2st.datasets.synthetic(n_libraries=2, shape=(9, 11), n_genes=3, layout=layout)
    perm = np.random.default_rng(0).permutation(adata.n_obs)
    conn = build_connectivities(adata, library_key="library_id")
    permuted = build_connectivities(adata[perm].copy(), library_key="library_id")
    assert (permuted != conn[perm][:, perm]).nnz == 0


def test_predictions_do_not_depend_on_row_order(trained, adata):
    perm = np.random.default_rng(1).permutation(adata.n_obs)
    whole = trained.predict(adata, show_progress_bar=False)
    permuted = trained.predict(adata[perm].copy(), show_progress_bar=False)
    np.testing.assert_allclose(permuted, whole[perm], rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------- the command line


@pytest.fixture
def h5ad(adata, tmp_path):
    path = tmp_path / "in.h5ad"
    adata.write_h5ad(path)
    return path


def _fails(argv, match, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert match in err, err


def test_cli_refuses_an_existing_model_folder_before_training(h5ad, tmp_path, capsys, no_training):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    _fails(["fit", str(h5ad), "--image-key", "hires", "--model", str(tmp_path / "m")], "--overwrite", capsys)


def test_cli_refuses_a_missing_input_in_one_line(tmp_path, capsys):
    _fails(
        ["fit", str(tmp_path / "none.h5ad"), "--image-key", "hires", "--model", str(tmp_path / "m")],
        "does not exist",
        capsys,
    )
    (tmp_path / "bad.h5ad").write_text("not hdf5")
    _fails(
        ["predict", str(tmp_path / "bad.h5ad"), "--model", str(tmp_path), "--output", str(tmp_path / "o.h5ad")],
        "config.json",
        capsys,
    )


def test_cli_checks_the_output_before_predicting(saved, h5ad, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(hist2st.tl, "predict", lambda *a, **k: pytest.fail("predicted before checking --output"))
    base = ["predict", str(h5ad), "--model", str(saved), "--output"]
    _fails([*base, str(tmp_path / "out.csv")], "must end in .h5ad or .zarr", capsys)
    (tmp_path / "taken.h5ad").write_text("")
    _fails([*base, str(tmp_path / "taken.h5ad")], "--overwrite", capsys)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if not __import__("os").access(locked, __import__("os").W_OK):  # root may write anywhere
        _fails([*base, str(locked / "out.h5ad")], "cannot write", capsys)


def test_cli_writes_zarr_for_a_zarr_output(saved, h5ad, tmp_path):
    assert main(["predict", str(h5ad), "--model", str(saved), "--output", str(tmp_path / "out.zarr")]) == 0
    out = ad.read_zarr(tmp_path / "out.zarr")
    assert out.layers["hist2st"].shape == (out.n_obs, out.n_vars)


def test_cli_reaches_the_architecture(h5ad, tmp_path, capsys):
    argv = ["fit", str(h5ad), "--image-key", "hires", "--epochs", "1", "--accelerator", "cpu", "--preset", "fast"]
    tiny = ["--set", "channel=8", "--set", "patch_size=14", "--set", "heads=2", "--set", "dim_head=16"]
    assert main([*argv, "--model", str(tmp_path / "m"), "--reduced", *tiny, "--set", "depth1=1"]) == 0
    capsys.readouterr()
    model = hist2st.Hist2ST.load(tmp_path / "m")
    assert (model.architecture.depth2, model.architecture.depth3, model.architecture.depth1) == (2, 2, 1)
    assert model.preset == "fast" and not model.architecture.position_embedding
    _fails([*argv, "--model", str(tmp_path / "n"), "--set", "depht2=4"], "did you mean 'depth2'", capsys)


# ------------------------------------------------------------------------------------- verified downloads


def _copy_section(root: Path, section: str, to: Path, as_name: str | None = None) -> None:
    """Copy one section's files from the her2st layout under ``root`` into ``to``, optionally renamed."""
    as_name = as_name or section
    for relative in (f"data/ST-cnts/{section}.tsv.gz", f"data/ST-spotfiles/{section}_selection.tsv"):
        target = to / relative.replace(section, as_name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / relative, target)
    image = next((root / f"data/ST-imgs/{section[0]}/{section}").glob("*.jpg"))
    folder = to / f"data/ST-imgs/{as_name[0]}/{as_name}"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(image, folder / image.name)


def test_the_registry_holds_the_shared_files(her2st_root):
    for relative, digest in _her2st.REGISTRY.items():
        assert _persistence.sha256(her2st_root / relative) == digest, relative


@pytest.mark.her2st
def test_a_corrupted_known_file_is_refused_naming_it(her2st_root, tmp_path):
    _copy_section(her2st_root, "B4", tmp_path)
    counts = tmp_path / "data/ST-cnts/B4.tsv.gz"
    counts.write_bytes(counts.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"B4.tsv.gz is not the public her2st file .*Delete it"):
        hist2st.datasets.her2st(tmp_path, "B4", fullres=False)


@pytest.mark.her2st
def test_a_truncated_unknown_file_is_refused_naming_it(her2st_root, tmp_path):
    _copy_section(her2st_root, "B4", tmp_path, as_name="Z9")  # no hash is known for a section of that name
    image = next((tmp_path / "data/ST-imgs/Z/Z9").glob("*.jpg"))
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"\.jpg cannot be decoded .*truncated"):
        hist2st.datasets.her2st(tmp_path, "Z9")
    counts = tmp_path / "data/ST-cnts/Z9.tsv.gz"
    counts.write_bytes(counts.read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"Z9.tsv.gz cannot be decoded"):
        hist2st.datasets.her2st(tmp_path, "Z9")


def test_downloads_pass_the_known_hash(tmp_path, monkeypatch):
    import pooch

    asked = {}

    def retrieve(url, known_hash, fname, path, progressbar):
        asked[fname] = known_hash
        raise ValueError("SHA256 hash of downloaded file does not match the known hash")

    monkeypatch.setattr(pooch, "retrieve", retrieve)
    with pytest.raises(ValueError, match="incomplete or altered"):
        _her2st._fetch(tmp_path, "data/ST-cnts/B4.tsv.gz")
    assert asked == {"B4.tsv.gz": "sha256:" + _her2st.REGISTRY["data/ST-cnts/B4.tsv.gz"]}
