"""The Visium path on real space ranger outputs (../shared/data/visium), as squidpy reads them."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import st_hist2st as hist2st
from st_hist2st._data._graph import build_connectivities, detect_layout, grid_positions, infer_lattice

VISIUM = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "visium"


def most_expressed(adata, n: int) -> list[str]:
    """The ``n`` genes with the most counts, for the short fits of these tests."""
    return adata.var_names[np.argsort(-np.asarray(adata.X.sum(0)).ravel())[:n]].tolist()


def read_visium(name: str):
    folder = VISIUM / name
    if not folder.is_dir():
        pytest.skip(f"Visium data not found at {folder}")
    from st_hist2st.pl._utils import import_squidpy

    sq = import_squidpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the readers' notices about their dependencies and duplicated gene names
        return sq.read.visium(folder)


@pytest.mark.parametrize("name", ["mouse_brain_posterior", "mouse_placenta_cytassist"])
def test_the_hexagonal_lattice_and_graph_come_from_coordinates_alone(name, squidpy_graph):
    adata = read_visium(name)
    adata.obs["library_id"] = pd.Categorical([name] * adata.n_obs)
    truth = grid_positions(adata)
    bare = adata.copy()
    del bare.obs["array_row"], bare.obs["array_col"]
    inferred = grid_positions(bare)
    assert detect_layout(inferred) == "visium"
    offsets = np.unique(inferred - truth, axis=0)
    assert len(offsets) == 1, offsets  # the space ranger positions, shifted
    conn = build_connectivities(bare, library_key="library_id")
    assert (conn != squidpy_graph(adata, "visium")).nnz == 0


def test_a_turned_hexagonal_array_is_still_hexagonal():
    rows, cols = np.mgrid[0:12, 0:24]
    keep = (rows + cols) % 2 == 0
    xy = np.stack([cols[keep] * 50.0, rows[keep] * 50.0 * np.sqrt(3)], axis=1)  # spots 100 apart
    angle = np.deg2rad(17)
    turned = xy @ np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
    pos, layout = infer_lattice(turned)
    assert layout == "visium"
    assert len(np.unique(pos, axis=0)) == len(pos)  # no two spots on one lattice point
    assert (pos.sum(1) % 2 == pos.sum(1)[0] % 2).all()


def test_a_model_without_position_embedding_takes_any_array(adata, tiny):
    # grid positions beyond the embedding's 64 entries, as on Visium (up to 127)
    adata.obs["array_col"] = adata.obs["array_col"] * 20
    fast = hist2st.Hist2ST(list(adata.var_names), preset="fast", n_pos=64, **tiny)
    fast.is_trained = True
    assert np.isfinite(fast.predict(adata, image_key="hires", show_progress_bar=False)).all()
    paper = hist2st.Hist2ST(list(adata.var_names), preset="paper", n_pos=64, **tiny)
    paper.is_trained = True
    with pytest.raises(ValueError, match=r"n_pos=192.*position_embedding=False"):
        paper.predict(adata, image_key="hires", show_progress_bar=False)


@pytest.fixture(scope="module")
def brain():
    return read_visium("mouse_brain_posterior")


def test_fit_predict_and_plot_on_squidpys_visium_reader(brain, tiny, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    adata = brain.copy()
    with pytest.raises(ValueError, match=r"var_names_make_unique\(\)"):  # this folder repeats three gene names
        hist2st.tl.fit(adata, "hires", max_epochs=1)
    adata.var_names_make_unique()
    genes = most_expressed(adata, 12)
    model = hist2st.tl.fit(
        adata, "hires", genes=genes, preset="fast", max_epochs=1, accelerator="cpu", show_progress_bar=False, **tiny
    )
    # the hexagonal array, the scale from the 55-um Visium spot, a crop of one spot diameter
    library = next(iter(adata.uns["spatial"]))
    diameter = adata.uns["spatial"][library]["scalefactors"]["spot_diameter_fullres"]
    assert model.preprocessing["microns_per_pixel"][library] == pytest.approx(55 / diameter)
    assert model.preprocessing["crop_microns"] == pytest.approx(55)
    hist2st.tl.predict(adata, model, show_progress_bar=False)
    assert np.isfinite(adata[:, genes].layers["hist2st"]).all()
    axes = hist2st.pl.spatial_pred(adata, genes[:2], show=False, save=tmp_path / "brain.png")
    assert axes.shape == (2, 2) and (tmp_path / "brain.png").stat().st_size > 0


@pytest.mark.her2st
def test_a_her2st_model_crops_the_same_micrometres_on_visium(her2st_root, brain, tiny):
    from st_hist2st._data._section import prepare_sections

    b4 = hist2st.datasets.her2st(her2st_root, "B4")
    genes = most_expressed(b4, 8)
    model = hist2st.tl.fit(
        b4,
        "fullres",
        genes=genes,
        crop_size=112,
        preset="fast",
        max_epochs=1,
        accelerator="cpu",
        show_progress_bar=False,
        **tiny,
    )
    trained_microns = model.preprocessing["crop_microns"]
    assert trained_microns == pytest.approx(
        112 * 100 / b4.uns["spatial"]["B4"]["scalefactors"]["spot_diameter_fullres"]
    )
    visium = brain.copy()
    visium.var_names = [f"v{i}" for i in range(visium.n_vars)]
    image_key, crop_size, crop_microns = model.prediction_inputs("hires")
    assert crop_size is None and crop_microns == pytest.approx(trained_microns)
    (section,) = prepare_sections(visium, image_key, genes=None, crop_microns=crop_microns, show_progress_bar=False)
    assert section.crop.microns == pytest.approx(trained_microns)  # the same piece of tissue, in other pixels
    # the hires image is far coarser than the full-resolution her2st patches: said, with both figures
    with pytest.warns(UserWarning, match=r"um per pixel, much coarser than the 0\.7\d um per pixel"):
        model.predict(visium[:, []].copy(), image_key="hires", show_progress_bar=False)


def test_several_visium_sections_concatenated(tiny):
    import anndata as ad

    sections = {}
    for name, folder in (("brain", "mouse_brain_posterior"), ("placenta", "mouse_placenta_cytassist")):
        section = read_visium(folder)
        section.uns["spatial"] = {name: next(iter(section.uns["spatial"].values()))}  # as library_id=name reads it
        section.var_names_make_unique()
        sections[name] = section
    adata = ad.concat(sections, label="library_id", uns_merge="unique")
    genes = most_expressed(adata, 10)
    model = hist2st.tl.fit(
        adata,
        "hires",
        genes=genes,
        validation_libraries=["placenta"],
        preset="fast",
        max_epochs=1,
        accelerator="cpu",
        show_progress_bar=False,
        **tiny,
    )
    assert "val_pearson" in model.history and set(model.preprocessing["microns_per_pixel"]) == {"brain"}
    hist2st.tl.predict(adata, model, show_progress_bar=False)
    assert np.isfinite(adata[:, genes].layers["hist2st"]).all()


def spatialdata_visium(name: str, dataset_id: str):
    sdio = pytest.importorskip("spatialdata_io")
    folder = VISIUM / name
    if not folder.is_dir():
        pytest.skip(f"Visium data not found at {folder}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sdio.visium(folder, dataset_id=dataset_id)


def test_spatialdata_io_samples_each_get_their_own_image(tiny):
    import spatialdata as sd

    both = sd.concatenate(
        [
            spatialdata_visium("mouse_brain_posterior", "brain"),
            spatialdata_visium("mouse_placenta_cytassist", "placenta"),
        ],
        concatenate_tables=True,
    )
    table = both.tables["table"]
    patches = hist2st.pp.extract_patches(table, "hires", image=both, show_progress_bar=False)
    # each sample's rows are cut from its own image, exactly as from squidpy's reader of that folder
    for region, name in (("brain", "mouse_brain_posterior"), ("placenta", "mouse_placenta_cytassist")):
        rows = (table.obs["region"] == region).to_numpy()
        expected = hist2st.pp.extract_patches(read_visium(name), "hires", show_progress_bar=False)
        assert np.array_equal(patches[rows], expected)  # numpy's assert_array_equal takes seconds on 5k patches
    with pytest.raises(ValueError, match=r"several images or coordinate systems .*'brain_lowres_image' in 'brain'"):
        hist2st.pp.extract_patches(table, "image", image=both, show_progress_bar=False)
    # the whole path on what spatialdata-io returns: libraries are the regions, the scale the spots' radius
    table = table.copy()
    genes = most_expressed(table, 8)
    model = hist2st.tl.fit(
        table,
        "hires",
        image=both,
        genes=genes,
        validation_libraries=["placenta"],
        preset="fast",
        max_epochs=1,
        accelerator="cpu",
        show_progress_bar=False,
        **tiny,
    )
    assert model.preprocessing["crop_microns"] == pytest.approx(55)
    hist2st.tl.predict(table, model, image=both, show_progress_bar=False)
    assert np.isfinite(table[:, genes].layers["hist2st"]).all()


def test_a_micrometre_coordinate_system_gives_the_scale():
    from spatialdata.transformations import Scale, set_transformation

    sdata = spatialdata_visium("mouse_brain_posterior", "brain")
    table = sdata.tables["table"]
    diameter = 2 * float(np.median(sdata.shapes["brain"]["radius"]))
    # a system in micrometres, as Xenium's 'global' is: 55 um per spot diameter
    set_transformation(sdata.shapes["brain"], Scale([55 / diameter] * 2, axes=("x", "y")), to_coordinate_system="um")
    by_spot = hist2st.pp.extract_patches(table, "hires", image=sdata, show_progress_bar=False)
    by_microns = hist2st.pp.extract_patches(
        table, "hires", image=sdata, crop_microns=55, microns_per_pixel="um", show_progress_bar=False
    )
    np.testing.assert_array_equal(by_microns, by_spot)
    with pytest.raises(KeyError, match="names no coordinate system of region 'brain'"):
        hist2st.pp.extract_patches(table, "hires", image=sdata, crop_microns=55, microns_per_pixel="mm")


def test_an_image_container_of_a_full_resolution_tiff(adata, tmp_path, tiny):
    import tifffile

    from st_hist2st.pl._utils import import_squidpy

    sq = import_squidpy()
    one = adata[adata.obs["library_id"] == "S0"].copy()
    image = one.uns["spatial"]["S0"]["images"]["hires"]
    assert one.uns["spatial"]["S0"]["scalefactors"]["tissue_hires_scalef"] == 1  # the synthetic image is full size
    tifffile.imwrite(tmp_path / "tissue.tif", image)
    container = sq.im.ImageContainer(str(tmp_path / "tissue.tif"), layer="fullres", library_id="S0", lazy=True)
    from_tiff = hist2st.pp.extract_patches(one, "fullres", image=container, show_progress_bar=False)
    np.testing.assert_array_equal(from_tiff, hist2st.pp.extract_patches(one, "hires", show_progress_bar=False))
    model = hist2st.tl.fit(
        one, "fullres", image=container, max_epochs=1, accelerator="cpu", show_progress_bar=False, **tiny
    )
    assert np.isfinite(model.predict(one, image=container, show_progress_bar=False)).all()
