from __future__ import annotations

import inspect
import json
import warnings

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from anndata import AnnData

import st_hist2st as hist2st
from st_hist2st._data._targets import expression_targets
from st_hist2st.nn._plan import pearson_per_gene


def test_fit_returns_a_trained_model_with_history(trained, adata):
    assert trained.is_trained
    assert trained.genes == list(adata.var_names)
    assert len(trained.history) == 2
    assert {"train_loss", "train_mse", "train_zinb", "train_distill"} <= set(trained.history.columns)
    assert "trained" in repr(trained) and "12 genes" in repr(trained)


def test_predict_writes_only_the_layer_and_uns(trained, adata):
    before = adata.copy()
    hist2st.tl.predict(adata, trained, show_progress_bar=False)
    assert set(adata.layers) == {"hist2st"}
    assert set(adata.uns) == set(before.uns) | {"hist2st"}
    pred = adata.layers["hist2st"]
    assert pred.shape == adata.shape and pred.dtype == np.float32 and np.isfinite(pred).all()
    assert adata.uns["hist2st"]["genes"] == trained.genes
    assert (adata.X != before.X).nnz == 0
    assert adata.obs.equals(before.obs) and adata.var.equals(before.var)
    assert set(adata.obsm) == set(before.obsm) and set(adata.obsp) == set(before.obsp)


def test_predict_copy_leaves_adata_alone(trained, adata, tmp_path):
    out = hist2st.tl.predict(adata, trained, copy=True, show_progress_bar=False, key_added="pred")
    assert "pred" not in adata.layers
    assert "pred" in out.layers
    out.write_h5ad(tmp_path / "out.h5ad")


def test_genes_not_predicted_are_nan(trained, adata):
    extra = AnnData(np.zeros((adata.n_obs, 1), dtype=np.float32), obs=adata.obs, var={"": ["extra"]})
    extra.var_names = ["extra"]
    import anndata as ad

    wider = ad.concat([adata, extra], axis=1, merge="first", uns_merge="first")
    wider.obsm["spatial"] = adata.obsm["spatial"]
    wider.uns = adata.uns
    hist2st.tl.predict(wider, trained, show_progress_bar=False)
    assert np.isnan(wider.layers["hist2st"][:, -1]).all()
    assert np.isfinite(wider.layers["hist2st"][:, :-1]).all()


def test_save_load_round_trip_gives_identical_predictions(trained, adata, tmp_path):
    trained.save(tmp_path / "m")
    with pytest.raises(FileExistsError):
        trained.save(tmp_path / "m")
    loaded = hist2st.Hist2ST.load(tmp_path / "m")
    assert loaded.genes == trained.genes and loaded.preprocessing == trained.preprocessing
    assert len(loaded.history) == len(trained.history)
    a = trained.predict(adata, show_progress_bar=False)
    b = hist2st.tl.predict(adata, tmp_path / "m", copy=True, show_progress_bar=False).layers["hist2st"]
    np.testing.assert_array_equal(a, b)


def test_fit_keeps_lightnings_deprecation_notices_to_itself(adata, tiny):
    # Lightning builds torch's deprecated LeafSpec itself; the caller of fit can do nothing about it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hist2st.tl.fit(adata, "hires", max_epochs=1, show_progress_bar=False, **tiny)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "LeafSpec" in m], messages


def test_fast_preset_network_settings_survive_save_and_load(adata, tiny, tmp_path):
    model = hist2st.tl.fit(adata, "hires", preset="fast", max_epochs=1, show_progress_bar=False, **tiny)
    assert not model.architecture.position_embedding and model.architecture.section_norm
    model.save(tmp_path / "fast")
    loaded = hist2st.Hist2ST.load(tmp_path / "fast")
    assert loaded.architecture == model.architecture
    a = model.predict(adata, show_progress_bar=False)
    np.testing.assert_array_equal(a, loaded.predict(adata, show_progress_bar=False))


def test_test_time_augmentation_averages_over_all_eight_views(trained, adata):
    from dataclasses import replace

    from st_hist2st._data._section import prepare_sections

    section = prepare_sections(adata, "hires", genes=None, libraries=["S0"], show_progress_bar=False)[0]
    turned = replace(section, patches=torch.rot90(section.patches, 1, dims=(-2, -1)))
    cpu = torch.device("cpu")
    # the eight views of the turned patches are the eight views of the patches
    np.testing.assert_allclose(
        trained.predict_section(turned, cpu, test_time_augmentation=True),
        trained.predict_section(section, cpu, test_time_augmentation=True),
        rtol=1e-5,
        atol=1e-6,
    )
    assert not np.allclose(trained.predict_section(turned, cpu), trained.predict_section(section, cpu))
    out = hist2st.tl.predict(adata, trained, test_time_augmentation=True, copy=True, show_progress_bar=False)
    assert out.uns["hist2st"]["test_time_augmentation"] is True
    plain = hist2st.tl.predict(adata, trained, copy=True, show_progress_bar=False)
    assert not np.allclose(out.layers["hist2st"], plain.layers["hist2st"])


def test_several_models_give_the_average_of_their_predictions(trained, adata, tiny, tmp_path):
    other = hist2st.tl.fit(adata, "hires", preset=trained.preset, max_epochs=1, seed=1, show_progress_bar=False, **tiny)
    trained.save(tmp_path / "model")
    ensemble = hist2st.tl.predict(adata, [tmp_path / "model", other], show_progress_bar=False, copy=True)
    expected = (trained.predict(adata, show_progress_bar=False) + other.predict(adata, show_progress_bar=False)) / 2
    np.testing.assert_allclose(ensemble.layers["hist2st"], expected, rtol=1e-6)
    assert ensemble.uns["hist2st"]["n_models"] == 2
    ensemble.write_h5ad(tmp_path / "ensemble.h5ad")  # what it records can be written
    assert ensemble.uns["hist2st"]["architecture"] == trained.architecture.to_dict()
    deeper = hist2st.tl.fit(
        adata,
        "hires",
        preset=trained.preset,
        crop_size=30.0,
        max_epochs=1,
        show_progress_bar=False,
        **{**tiny, "depth2": 2},
    )
    mixed = hist2st.tl.predict(adata, [trained, deeper], show_progress_bar=False, copy=True)
    each = mixed.uns["hist2st"]["models"]
    assert [each[k]["architecture"]["depth2"] for k in ("model_0", "model_1")] == [1, 2]
    # each model crops the micrometres it was trained at: 30 pixels at the synthetic slide's scale
    assert each["model_1"]["crop_microns"] == pytest.approx(deeper.preprocessing["crop_microns"])
    assert each["model_1"]["crop_microns"] < each["model_0"]["crop_microns"]
    mixed.write_h5ad(tmp_path / "mixed.h5ad")
    fewer = hist2st.tl.fit(adata[:, :5].copy(), "hires", max_epochs=1, show_progress_bar=False, **tiny)
    with pytest.raises(ValueError, match=r"`model\[1\]` predicts other genes"):
        hist2st.tl.predict(adata, [trained, fewer], show_progress_bar=False)
    with pytest.raises(ValueError, match="empty sequence"):
        hist2st.tl.predict(adata, [], show_progress_bar=False)


def test_field_of_view_crops_that_many_spot_diameters_in_fit_and_predict(adata, tiny, tmp_path):
    common = {"preset": "fast", "max_epochs": 1, "show_progress_bar": False, **tiny}
    one = hist2st.tl.fit(adata, "hires", field_of_view=1, **common)
    four = hist2st.tl.fit(adata, "hires", field_of_view=4, **common)
    assert four.preprocessing["crop_microns"] == pytest.approx(4 * one.preprocessing["crop_microns"])
    default = hist2st.tl.fit(adata, "hires", max_epochs=1, show_progress_bar=False, **tiny)
    assert default.preset == "blend" and default.training.dihedral and default.architecture.colour_ridge > 0
    assert default.preprocessing["crop_microns"] == pytest.approx(4 * one.preprocessing["crop_microns"])
    four.save(tmp_path / "four")
    loaded = hist2st.Hist2ST.load(tmp_path / "four")
    assert loaded.architecture.field_of_view == 4
    # prediction crops what the model was trained on: four spot diameters, not the one of the image's default
    diameter = adata.uns["spatial"]["S0"]["scalefactors"]["spot_diameter_fullres"]
    predicted = loaded.predict(adata, show_progress_bar=False)
    np.testing.assert_allclose(predicted, loaded.predict(adata, crop_size=4 * diameter, show_progress_bar=False))
    assert not np.allclose(predicted, loaded.predict(adata, crop_size=diameter, show_progress_bar=False))
    with pytest.warns(UserWarning, match=r"`crop_size=30` sets the crop, so `field_of_view=4`.*is not used"):
        hist2st.tl.fit(adata, "hires", field_of_view=4, crop_size=30, **common)
    with pytest.raises(ValueError, match="`field_of_view` must be a positive number of spot diameters"):
        hist2st.Hist2ST(list(adata.var_names), field_of_view=0)
    # a model saved before the setting existed crops one spot diameter, as it was trained to
    one.save(tmp_path / "one")
    config = json.loads((tmp_path / "one" / "config.json").read_text())
    del config["architecture"]["field_of_view"]
    (tmp_path / "one" / "config.json").write_text(json.dumps(config))
    older = hist2st.Hist2ST.load(tmp_path / "one")
    assert older.architecture.field_of_view == 1
    np.testing.assert_array_equal(
        older.predict(adata, show_progress_bar=False), one.predict(adata, show_progress_bar=False)
    )


def test_same_seed_same_predictions(adata, tiny):
    kwargs = {"max_epochs": 1, "show_progress_bar": False, "accelerator": "cpu", "seed": 3, **tiny}
    a = hist2st.tl.fit(adata, "hires", **kwargs).predict(adata, show_progress_bar=False)
    b = hist2st.tl.fit(adata, "hires", **kwargs).predict(adata, show_progress_bar=False)
    c = hist2st.tl.fit(adata, "hires", **{**kwargs, "seed": 4}).predict(adata, show_progress_bar=False)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_fit_leaves_adata_and_global_rng_alone(adata, tiny):
    before = adata.copy()
    state = torch.random.get_rng_state()
    hist2st.tl.fit(adata, "hires", max_epochs=1, show_progress_bar=False, **tiny)
    assert torch.equal(state, torch.random.get_rng_state())
    assert set(adata.obsp) == set(before.obsp) and set(adata.uns) == set(before.uns)
    assert (adata.X != before.X).nnz == 0


@pytest.mark.parametrize(
    ("accelerator", "precision"),
    [
        ("cpu", "32-true"),
        pytest.param(
            "gpu",
            "bf16-mixed",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
        ),
    ],
)
def test_tiny_model_learns_expression_from_colour(tiny, accelerator, precision):
    adata = hist2st.datasets.synthetic(n_libraries=4, n_genes=30, seed=0)
    model = hist2st.tl.fit(
        adata,
        "hires",
        validation_libraries=["S3"],
        preset="fast",
        max_epochs=100,
        learning_rate=1e-3,
        bake=0,
        zinb=0.0,
        crop_fraction=None,
        crops_per_section=1,
        show_progress_bar=False,
        accelerator=accelerator,
        precision=precision,
        **tiny,
    )
    held = adata[adata.obs["library_id"] == "S3"].copy()
    hist2st.tl.predict(held, model, show_progress_bar=False)
    r = pearson_per_gene(
        torch.from_numpy(held.layers["hist2st"]), torch.from_numpy(expression_targets(held.X.toarray()))
    )
    assert float(torch.nanmean(r)) > 0.8
    assert model.history["val_pearson"].iloc[-1] > 0.8


@pytest.mark.parametrize("preset", ["paper", "fast"])
def test_ddp_on_two_cpu_processes(adata, tiny, preset):
    # DDP (find_unused_parameters=False) refuses, from a process's second step on, weights that got no gradient
    # (heads of unused losses); two GNN layers, since with one the jumping-knowledge LSTM has no recurrent step
    tiny = {**tiny, "depth3": 2}
    model = hist2st.tl.fit(
        adata,
        "hires",
        preset=preset,
        max_epochs=2,
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        show_progress_bar=False,
        **tiny,
    )
    assert model.is_trained and len(model.history) == 2
    untrained = hist2st.Hist2ST(model.genes, preset=preset, n_pos=model.architecture.n_pos, **tiny)
    changed = [
        not torch.equal(a, b)
        for a, b in zip(model.module.state_dict().values(), untrained.module.state_dict().values(), strict=True)
    ]
    assert any(changed), "the trained weights did not come back from the spawned processes"
    assert np.isfinite(model.predict(adata, show_progress_bar=False)).all()


def test_he_only_slide_gets_a_new_anndata(trained, adata):
    he = adata[:, []].copy()
    out = hist2st.tl.predict(he, trained, show_progress_bar=False)
    assert list(out.var_names) == trained.genes
    assert out.n_obs == adata.n_obs and "spatial" in out.uns and "spatial" in out.obsm
    assert he.n_vars == 0 and "hist2st" not in he.layers


def test_windows_give_more_steps_per_epoch(adata, tiny):
    import lightning as L

    class Count(L.Callback):
        steps = 0

        def on_train_batch_end(self, *args):
            Count.steps += 1

    hist2st.tl.fit(
        adata,
        "hires",
        max_epochs=1,
        crop_fraction=0.5,
        crops_per_section=3,
        show_progress_bar=False,
        trainer_kwargs={"callbacks": [Count()]},
        **tiny,
    )
    assert Count.steps == 2 * 3


def test_heads_are_built_only_for_the_losses_used(tiny):
    fast = hist2st.Hist2ST(["a", "b"], preset="fast", **tiny)
    paper = hist2st.Hist2ST(["a", "b"], preset="paper", **tiny)
    assert fast.module.zinb is None and fast.module.pass_weight is None
    assert paper.module.zinb is not None and paper.module.pass_weight is not None
    assert hist2st.Hist2ST(["a", "b"], preset="fast", zinb=0.1, **tiny).module.zinb is not None
    with pytest.raises(ValueError, match="needs `zinb_head=True`"):
        hist2st.Hist2ST(["a", "b"], preset="paper", zinb_head=False, **tiny)
    with pytest.warns(FutureWarning, match="`distillation` is now `distillation_head`"):
        model = hist2st.Hist2ST(["a", "b"], preset="paper", distillation=False, lamb=0, **tiny)
    assert model.module.pass_weight is None


def test_a_refit_keeps_the_gene_weights(adata, tiny):
    model = hist2st.tl.fit(adata, "hires", max_epochs=1, standardize_genes=True, show_progress_bar=False, **tiny)
    weights = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, plan, batch, batch_idx):
            weights.append(plan.gene_weights)

    model.fit(adata, "hires", max_epochs=1, trainer_kwargs={"callbacks": [Record()]}, show_progress_bar=False)
    assert weights and all(w is not None and w.shape == (adata.n_vars,) for w in weights)


def test_first_fit_starts_the_output_bias_at_the_gene_means(adata, tiny):
    model = hist2st.tl.fit(
        adata, "hires", max_epochs=1, learning_rate=1e-12, init_output_bias=True, show_progress_bar=False, **tiny
    )
    means = np.concatenate(
        [expression_targets(adata[adata.obs["library_id"] == lib].X.toarray()) for lib in ("S0", "S1")]
    ).mean(0)
    np.testing.assert_allclose(model.module.gene_head.linear.bias.detach().numpy(), means, atol=1e-5)


def test_ema_decay_returns_the_moving_average_of_the_weights(adata, tiny):
    import lightning as L

    class Record(L.Callback):
        def __init__(self):
            self.weights = []

        def on_train_batch_end(self, trainer, module, *args):
            # on the CPU, where fit hands the model back, also when it trains on a GPU
            self.weights.append({k: v.detach().to("cpu", copy=True) for k, v in module.net.named_parameters()})

    record = Record()
    decay = 0.5
    model = hist2st.tl.fit(
        adata,
        "hires",
        max_epochs=2,
        preset="paper",  # one step per section and epoch
        learning_rate=1e-2,
        ema_decay=decay,
        show_progress_bar=False,
        trainer_kwargs={"callbacks": [record]},
        **tiny,
    )
    assert len(record.weights) == 4
    average = record.weights[0]
    for step in record.weights[1:]:
        average = {k: decay * average[k] + (1 - decay) * step[k] for k in average}
    returned = dict(model.module.named_parameters())
    last = record.weights[-1]
    assert any(not torch.allclose(returned[k], last[k]) for k in last)
    for name, value in average.items():
        torch.testing.assert_close(returned[name].detach(), value, rtol=1e-5, atol=1e-6)


def test_fit_trains_the_models_own_weights_and_lets_go_of_gradients(adata, tiny):
    import lightning as L

    class GradientsAtStepStart(L.Callback):
        def __init__(self):
            self.held = []

        def on_train_batch_start(self, trainer, plan, batch, batch_idx):
            self.held.append(sum(p.grad is not None for p in plan.parameters()))

    model = hist2st.Hist2ST(list(adata.var_names), preset="paper", n_pos=64, gradient_checkpointing=True, **tiny)
    weights = model.module.gene_head.linear.weight
    before = weights.detach().clone()
    spy = GradientsAtStepStart()
    model.fit(adata, "hires", max_epochs=2, show_progress_bar=False, trainer_kwargs={"callbacks": [spy]})
    assert model.module.gene_head.linear.weight is weights  # trained in place, no second copy of the network
    assert not torch.equal(weights, before)
    assert len(spy.held) == 4 and spy.held == [0, 0, 0, 0]  # dropped right after each step, not at the next one
    assert all(p.grad is None for p in model.module.parameters())
    assert not model.module.gradient_checkpointing


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_step_in_backward_trains_exactly_as_a_step_after_backward(adata, tiny, precision):
    tiny.update(gradient_clip=None, max_epochs=3, gradient_checkpointing=True, seed=3)  # cosine with warm-up
    models = [
        hist2st.Hist2ST(list(adata.var_names), preset="fast", n_pos=64, step_in_backward=flag, **tiny).fit(
            adata, "hires", precision=precision, show_progress_bar=False
        )
        for flag in (False, True)
    ]
    # the rate each epoch trained with: warm-up over 5 epochs from 1e-4 / 6
    np.testing.assert_allclose(models[0].history["lr"], [1e-4 / 6, 2e-4 / 6, 3e-4 / 6])
    pd.testing.assert_frame_equal(models[0].history, models[1].history, check_exact=False, rtol=1e-5)
    for a, b in zip(models[0].module.state_dict().values(), models[1].module.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all(p.grad is None and not p._post_accumulate_grad_hooks for p in models[1].module.parameters())


def test_step_in_backward_refuses_clipping_and_several_processes(adata, tiny):
    with pytest.raises(ValueError, match="pass `gradient_clip=None`"):
        hist2st.Hist2ST(list(adata.var_names), preset="fast", step_in_backward=True, **tiny)
    model = hist2st.Hist2ST(list(adata.var_names), preset="paper", n_pos=64, step_in_backward=True, **tiny)
    with pytest.raises(ValueError, match="one process only"):
        model.fit(adata, "hires", accelerator="cpu", devices=2, strategy="ddp_spawn", show_progress_bar=False)
    # Lightning turns '16-mixed' into 'bf16-mixed' on a CPU, so the fp16 case is checked on a trainer's attributes
    from types import SimpleNamespace

    from st_hist2st.nn._plan import check_step_in_backward

    with pytest.raises(ValueError, match="cannot unscale fp16"):
        check_step_in_backward(SimpleNamespace(world_size=1, precision="16-mixed"))
    check_step_in_backward(SimpleNamespace(world_size=1, precision="bf16-mixed"))
    assert not model.is_trained


def test_plan_refuses_a_network_of_another_architecture(tiny):
    from st_hist2st.nn import Architecture, Hist2STModule, Hist2STPlan, Training

    net = Hist2STModule(Architecture(n_genes=5, **tiny))
    with pytest.raises(ValueError, match="`net` was built with"):
        Hist2STPlan({**tiny, "n_genes": 6}, Training().to_dict(), net=net)


def test_fit_and_predict_do_not_import_squidpy(tiny):
    # squidpy brings spatialdata, dask and scikit-image: 0.07 GB more peak memory in training on her2st
    import subprocess
    import sys

    code = (
        "import sys, st_hist2st as hist2st\n"
        "adata = hist2st.datasets.synthetic(n_libraries=2, shape=(6, 6), n_genes=5)\n"
        f"model = hist2st.tl.fit(adata, 'hires', max_epochs=1, show_progress_bar=False, **{tiny!r})\n"
        "hist2st.tl.predict(adata, model, show_progress_bar=False)\n"
        "assert 'hist2st' in adata.layers\n"
        "print(sorted(m for m in ('squidpy', 'spatialdata') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_bfloat16_on_a_cpu_that_emulates_it_warns_first(adata, trained, tiny, monkeypatch):
    import st_hist2st._utils as utils

    monkeypatch.setattr(utils, "cpu_lacks_bfloat16", lambda: True)
    with pytest.warns(UserWarning, match="precision='32-true'"):
        hist2st.tl.predict(adata, trained, precision="bf16", device="cpu", copy=True, show_progress_bar=False)
    with pytest.warns(UserWarning, match="without bfloat16 instructions"):
        hist2st.tl.fit(adata, "hires", max_epochs=1, precision="bf16-mixed", accelerator="cpu", **tiny)
    monkeypatch.setattr(utils, "cpu_lacks_bfloat16", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        hist2st.tl.predict(adata, trained, precision="bf16", device="cpu", copy=True, show_progress_bar=False)


PRESET_NAMES = ("paper", "fast", "wide", "blend")


def preset_table() -> dict[str, tuple[object, ...]]:
    """The settings table of the presets in docs/model.md: setting -> its value in each of ``PRESET_NAMES``."""
    import ast
    from fractions import Fraction
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "model.md").read_text()
    section = text[text.index("| setting | " + " | ".join(f"`{name!r}`" for name in PRESET_NAMES) + " |") :]
    rows = {}
    for line in section.splitlines()[2:]:
        if not line.startswith("| `"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        values = []
        for cell in cells[1 : 1 + len(PRESET_NAMES)]:
            literal = cell.split("`")[1]
            values.append(float(Fraction(literal)) if "/" in literal else ast.literal_eval(literal))
        rows[cells[0].strip("`")] = tuple(values)
    return rows


def test_the_default_preset_is_what_the_docs_list():
    from dataclasses import asdict

    from st_hist2st.nn._module import Architecture
    from st_hist2st.nn._training import DEFAULT_PRESET, PRESETS, preset

    assert DEFAULT_PRESET == "blend"
    assert set(PRESETS) == set(PRESET_NAMES)
    assert inspect.signature(hist2st.tl.fit).parameters["preset"].default == DEFAULT_PRESET
    assert inspect.signature(hist2st.Hist2ST).parameters["preset"].default == DEFAULT_PRESET
    settings = {}
    for name in PRESET_NAMES:
        arch, training = preset(name)
        settings[name] = {**asdict(Architecture(n_genes=3, **arch)), **asdict(training)}
    differ = {k for k in settings["paper"] if len({repr(settings[name][k]) for name in PRESET_NAMES}) > 1}
    table = preset_table()
    # the heads follow from the loss weights; every other difference is a row, and every row is right
    assert set(table) == differ - {"zinb_head", "distillation_head"}
    for key, values in table.items():
        for name, value in zip(PRESET_NAMES, values, strict=True):
            assert settings[name][key] is None if value is None else settings[name][key] == pytest.approx(value), (
                f"{key} of {name!r}"
            )
