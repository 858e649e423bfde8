from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch
from anndata import AnnData
from scipy import sparse

import st_hist2st as hist2st
from st_hist2st._data._graph import build_connectivities, grid_positions
from st_hist2st._data._image import ImageSource, image_from_anndata
from st_hist2st._data._patches import crop_patches
from st_hist2st._data._section import prepare_sections
from st_hist2st._data._targets import expression_targets, get_counts, size_factors


def _dot_adata(scale: float) -> AnnData:
    """One spot at full-resolution (x, y) = (40, 20) over an image at ``scale`` with one bright pixel there."""
    img = np.zeros((int(100 * scale), int(100 * scale), 3), dtype=np.uint8)
    img[int(20 * scale), int(40 * scale)] = 255
    adata = AnnData(np.ones((1, 1), dtype=np.float32))
    adata.obsm["spatial"] = np.array([[40.0, 20.0]])
    adata.uns["spatial"] = {"lib": {"images": {"img": img}, "scalefactors": {"tissue_img_scalef": scale}}}
    return adata


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_coordinates_map_x_to_columns_and_y_to_rows(scale):
    adata = _dot_adata(scale)
    source = image_from_anndata(adata, "img", "lib")
    patch, padded = crop_patches(source, adata.obsm["spatial"], 10, patch_size=int(10 * scale))
    side = int(10 * scale)
    assert patch.shape == (1, 3, side, side)
    assert padded[0] == 0
    row, col = np.unravel_index(patch[0, 0].argmax(), patch[0, 0].shape)
    assert (row, col) == (side // 2, side // 2)


def test_border_patches_are_padded_white_not_dropped():
    img = np.zeros((50, 50, 3), dtype=np.uint8)
    source = ImageSource(img, (1.0, 1.0))
    patches, padded = crop_patches(source, np.array([[0.0, 0.0], [25.0, 25.0]]), 20, patch_size=20)
    assert patches.shape[0] == 2
    assert padded[0] == pytest.approx(0.75)
    assert padded[1] == 0
    assert (patches[0, :, :10, :] == 255).all() and (patches[0, :, 10:, 10:] == 0).all()


def test_crops_are_resized_to_the_patch_size():
    img = np.full((300, 300, 3), 100, dtype=np.uint8)
    patches, _ = crop_patches(ImageSource(img, (1.0, 1.0)), np.array([[150.0, 150.0]]), 224, patch_size=112)
    assert patches.shape == (1, 3, 112, 112)
    assert patches.dtype == np.uint8
    assert (patches == 100).all()


def test_banded_reading_equals_one_window(rng):
    img = rng.integers(0, 255, size=(400, 300, 3), dtype=np.uint8)
    coords = rng.uniform(0, 300, size=(50, 2))
    source = ImageSource(img, (1.0, 1.0))
    a, _ = crop_patches(source, coords, 16, patch_size=16, band_rows=7)
    b, _ = crop_patches(source, coords, 16, patch_size=16, band_rows=10_000)
    np.testing.assert_array_equal(a, b)


def _resident_file_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no RssFile in /proc/self/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads resident memory from /proc (Linux)")
def test_memory_mapped_image_pages_are_let_go_after_cropping(rng, tmp_path):
    img = rng.integers(0, 255, size=(2000, 4000, 3), dtype=np.uint8)  # 24 MB
    np.save(tmp_path / "img.npy", img)
    mapped = np.load(tmp_path / "img.npy", mmap_mode="r")
    coords = rng.uniform(0, 2000, size=(200, 2)) * [2, 1]
    expected, _ = crop_patches(ImageSource(img, (1.0, 1.0)), coords, 16, patch_size=16)
    source = ImageSource(mapped, (1.0, 1.0))
    before = _resident_file_bytes()
    np.asarray(mapped).sum()  # every page of the file mapped in
    assert _resident_file_bytes() - before > 0.8 * img.nbytes
    patches, _ = crop_patches(source, coords, 16, patch_size=16, band_rows=500)
    np.testing.assert_array_equal(patches, expected)
    assert _resident_file_bytes() - before < 0.2 * img.nbytes


def test_copy_on_write_images_keep_their_changes(tmp_path):
    np.save(tmp_path / "img.npy", np.zeros((64, 64, 3), dtype=np.uint8))
    image = np.load(tmp_path / "img.npy", mmap_mode="c")
    image[:] = 7  # exists only in this process's copy of the pages
    patches, _ = crop_patches(ImageSource(image, (1.0, 1.0)), np.array([[32.0, 32.0]]), 16, patch_size=16)
    assert (patches == 7).all()
    assert (image == 7).all()


def test_three_image_sources_give_identical_patches(adata):
    import spatialdata as sd
    import squidpy as sq
    from spatialdata.models import Image2DModel

    lib = "S0"
    one = adata[adata.obs["library_id"] == lib].copy()
    img = one.uns["spatial"][lib]["images"]["hires"]
    from_uns = hist2st.pp.extract_patches(one, "hires", crop_size=32, show_progress_bar=False)
    container = sq.im.ImageContainer(img, layer="hires", library_id=lib)
    from_container = hist2st.pp.extract_patches(one, "hires", image=container, crop_size=32, show_progress_bar=False)
    sdata = sd.SpatialData(images={"hires": Image2DModel.parse(np.moveaxis(img, -1, 0), dims=("c", "y", "x"))})
    from_sdata = hist2st.pp.extract_patches(one, "hires", image=sdata, crop_size=32, show_progress_bar=False)
    assert from_uns.shape == (one.n_obs, 3, 112, 112)
    np.testing.assert_array_equal(from_uns, from_container)
    np.testing.assert_array_equal(from_uns, from_sdata)


def test_spatialdata_transformation_is_applied(adata):
    import spatialdata as sd
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale

    one = adata[adata.obs["library_id"] == "S0"].copy()
    img = one.uns["spatial"]["S0"]["images"]["hires"]
    half = img[::2, ::2]
    element = Image2DModel.parse(
        np.moveaxis(half, -1, 0), dims=("c", "y", "x"), transformations={"global": Scale([2.0, 2.0], axes=("y", "x"))}
    )
    sdata = sd.SpatialData(images={"half": element})
    one.uns["spatial"]["S0"]["images"]["half"] = half
    one.uns["spatial"]["S0"]["scalefactors"]["tissue_half_scalef"] = 0.5
    kwargs = {"crop_size": 32, "show_progress_bar": False}
    np.testing.assert_array_equal(
        hist2st.pp.extract_patches(one, "half", image=sdata, **kwargs),
        hist2st.pp.extract_patches(one, "half", **kwargs),
    )


def _grid(rows: int, cols: int, extra: list[tuple[int, int]] = ()) -> AnnData:
    pos = [(r, c) for r in range(rows) for c in range(cols)] + list(extra)
    adata = AnnData(np.ones((len(pos), 1), dtype=np.float32))
    adata.obs["array_row"] = [p[0] for p in pos]
    adata.obs["array_col"] = [p[1] for p in pos]
    adata.obsm["spatial"] = np.array([[c * 10.0, r * 10.0] for r, c in pos])
    return adata


@pytest.mark.parametrize("axis", ["x", "y"])
@pytest.mark.parametrize("crop_size", [40, 41])
def test_a_flipped_spatialdata_image_gives_the_same_patches(adata, axis, crop_size):
    import spatialdata as sd
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale, Sequence, Translation

    one = adata[adata.obs["library_id"] == "S0"].copy()
    img = one.uns["spatial"]["S0"]["images"]["hires"]
    scale = one.uns["spatial"]["S0"]["scalefactors"]["tissue_hires_scalef"]
    height, width = img.shape[:2]
    flip, shift = ([-1.0, 1.0], [width - 1, 0]) if axis == "x" else ([1.0, -1.0], [0, height - 1])
    to_global = Sequence(
        [Scale(flip, axes=("x", "y")), Translation(shift, axes=("x", "y")), Scale([1 / scale] * 2, axes=("x", "y"))]
    )
    flipped = img[:, ::-1] if axis == "x" else img[::-1]
    element = Image2DModel.parse(
        np.moveaxis(flipped, -1, 0), dims=("c", "y", "x"), transformations={"global": to_global}
    )
    sdata = sd.SpatialData(images={"hires": element})
    expected = hist2st.pp.extract_patches(one, "hires", crop_size=crop_size, show_progress_bar=False)
    got = hist2st.pp.extract_patches(one, "hires", image=sdata, crop_size=crop_size, show_progress_bar=False)
    np.testing.assert_array_equal(got, expected)


def test_spatialdata_coordinate_system_can_be_chosen(adata):
    import spatialdata as sd
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Identity, Scale

    one = adata[adata.obs["library_id"] == "S0"].copy()
    img = one.uns["spatial"]["S0"]["images"]["hires"]
    transformations = {"global": Identity(), "half": Scale([0.5, 0.5], axes=("x", "y"))}
    element = Image2DModel.parse(np.moveaxis(img, -1, 0), dims=("c", "y", "x"), transformations=transformations)
    sdata = sd.SpatialData(images={"hires": element})
    with pytest.raises(KeyError, match=r"coordinate system 'micrometres'.*pass `coordinate_system=`"):
        hist2st.pp.extract_patches(one, "hires", image=sdata, coordinate_system="micrometres", crop_size=30)
    # coordinates given in the 'half' system: the same spots sit at half the pixel coordinates' values
    halved = one.copy()
    halved.obsm["spatial"] = one.obsm["spatial"] * 0.5
    expected = hist2st.pp.extract_patches(one, "hires", crop_size=30, show_progress_bar=False)
    got = hist2st.pp.extract_patches(
        halved, "hires", image=sdata, coordinate_system="half", crop_size=15, show_progress_bar=False
    )
    np.testing.assert_array_equal(got, expected)


def test_st_graph_follows_the_papers_rule():
    # a full 4 x 4 grid: every spot has exactly 4 neighbours within grid distance 2
    # plus a spot 3 grid units away from the grid, which gets none
    adata = _grid(4, 4, extra=[(0, 7)])
    conn = build_connectivities(adata, library_key=None, layout="st")
    degree = np.asarray((conn != 0).sum(1)).ravel()
    np.testing.assert_array_equal(degree[:16], 4)
    assert degree[16] == 0
    assert conn.diagonal().sum() == 0
    # interior spot (1, 1) = index 5 links to its 4 direct neighbours
    assert set(conn[5].indices) == {1, 4, 6, 9}
    # corner (0, 0): two at distance 1, one diagonal, then one of the two at distance 2
    assert {1, 4, 5} <= set(conn[0].indices)


def test_visium_graph_has_six_hexagonal_neighbours():
    adata = hist2st.datasets.synthetic(n_libraries=1, shape=(6, 6), n_genes=3, layout="visium")
    conn = build_connectivities(adata, library_key="library_id")
    degree = np.asarray((conn != 0).sum(1)).ravel()
    interior = (adata.obs["array_row"].between(1, 4) & adata.obs["array_col"].between(2, 9)).to_numpy()
    assert (degree[interior] == 6).all()
    assert degree.max() == 6


@pytest.mark.parametrize("layout", ["st", "visium"])
def test_graph_equals_squidpys(layout, squidpy_graph):
    # sections interleaved in obs and with missing spots, where ties and borders matter
    adata = hist2st.datasets.synthetic(n_libraries=3, shape=(9, 11), n_genes=3, layout=layout)
    rng = np.random.default_rng(0)
    adata = adata[rng.permutation(adata.n_obs)]
    adata = adata[rng.random(adata.n_obs) < 0.85].copy()
    conn = build_connectivities(adata, library_key="library_id")
    expected = squidpy_graph(adata, layout)
    assert conn.nnz > 3 * adata.n_obs
    assert (conn != expected).nnz == 0


def test_graph_infers_each_librarys_grid_and_layout_on_its_own():
    # an ST section and a Visium section in one AnnData, their spots in the same pixel frame and no array_row /
    # array_col: one lattice over both does not exist (they share coordinates), and each keeps its own rule
    st = hist2st.datasets.synthetic(n_libraries=1, shape=(6, 6), n_genes=3, layout="st")
    visium = hist2st.datasets.synthetic(n_libraries=1, shape=(6, 6), n_genes=3, layout="visium")
    visium.obs["library_id"] = "V"
    visium.obs_names = [f"v{name}" for name in visium.obs_names]
    both = ad.concat([st, visium])
    both.obs = both.obs.drop(columns=["array_row", "array_col"])
    assert len(set(map(tuple, st.obsm["spatial"])) & set(map(tuple, visium.obsm["spatial"]))) > 0
    conn = build_connectivities(both, library_key="library_id")
    for part in (st, visium):
        alone = both[both.obs["library_id"] == part.obs["library_id"].iloc[0]].copy()
        rows = np.flatnonzero(both.obs["library_id"] == alone.obs["library_id"].iloc[0])
        own = build_connectivities(alone, library_key="library_id")
        assert own.nnz > 0 and (conn[rows][:, rows] != own).nnz == 0
    assert conn[: st.n_obs, st.n_obs :].nnz == 0  # no edge between the sections
    degree = np.asarray((conn != 0).sum(1)).ravel()
    assert degree[: st.n_obs].max() == 4 and degree[st.n_obs :].max() == 6
    with pytest.raises(KeyError, match="`adata.obs\\['section'\\]` does not exist"):
        build_connectivities(both, library_key="section")


def test_scoring_graph_keeps_a_spatialdata_tables_regions_apart():
    from st_hist2st.tl._evaluate import spot_graph

    # a SpatialData table names its sections by its region key, not library_id; their spots share a pixel frame
    adata = hist2st.datasets.synthetic(n_libraries=2, shape=(6, 6), n_genes=3, layout="visium")
    adata.obs["region"] = adata.obs.pop("library_id").astype(str)
    adata.uns["spatialdata_attrs"] = {"region": ["S0", "S1"], "region_key": "region", "instance_key": "cell"}
    graph = spot_graph(adata, "library_id", "spatial_connectivities", "spatial")
    rows, cols = graph.nonzero()
    region = adata.obs["region"].to_numpy()
    assert graph.nnz > 0 and (region[rows] == region[cols]).all()


def test_training_sections_of_a_spatialdata_table_get_their_own_graphs():
    # the same table as above, prepared for training: before, its regions were one section to the graph builder,
    # and the check for edges between sections refused the graph it had built itself
    adata = hist2st.datasets.synthetic(n_libraries=2, shape=(6, 6), n_genes=3, layout="visium")
    adata.obs["region"] = adata.obs.pop("library_id").astype(str)
    adata.uns["spatialdata_attrs"] = {"region": ["S0", "S1"], "region_key": "region", "instance_key": "cell"}
    sections = _prepare(adata)
    assert [len(s.coords) for s in sections] == [36, 36]
    assert all(s.edge_index.shape[1] > 2 * len(s.coords) for s in sections)


def test_graph_warns_when_a_library_gets_no_edges():
    # array indices in steps of 5 (a subsampled array): no spot is within the paper's 2 grid units of another
    adata = _grid(3, 3)
    adata.obs[["array_row", "array_col"]] *= 5
    with pytest.warns(UserWarning, match="no spot has a neighbour by the st rule"):
        conn = build_connectivities(adata, library_key=None, layout="st")
    assert conn.nnz == 0


def test_visium_graph_refuses_a_library_of_few_spots():
    adata = hist2st.datasets.synthetic(n_libraries=1, shape=(6, 6), n_genes=3, layout="visium")[:5].copy()
    with pytest.raises(ValueError, match="only 5 spots"):
        build_connectivities(adata, library_key="library_id", layout="visium")


def test_graph_from_obsp_is_used_and_crossing_edges_fail(adata):
    conn = sparse.csr_matrix((adata.n_obs, adata.n_obs))
    conn[0, 1] = 1
    adata.obsp["spatial_connectivities"] = conn
    with pytest.warns(UserWarning, match="no neighbours"):
        sections = prepare_sections(adata, "hires", genes=None, show_progress_bar=False)
    assert sections[0].edge_index.tolist() == [[1], [0]]
    conn[0, adata.n_obs - 1] = 1
    adata.obsp["spatial_connectivities"] = conn
    with pytest.raises(ValueError, match="edges from library 'S0' to other libraries"):
        prepare_sections(adata, "hires", genes=None, show_progress_bar=False)


def test_grid_positions_are_inferred_from_coordinates():
    adata = _grid(3, 4)
    expected = adata.obs[["array_col", "array_row"]].to_numpy()
    del adata.obs["array_row"], adata.obs["array_col"]
    np.testing.assert_array_equal(grid_positions(adata), expected)


def test_target_transform_matches_hand_computation():
    counts = np.array([[1.0, 3.0, 0.0], [0.0, 0.0, 0.0], [5.0, 5.0, 10.0]])
    expected = np.array(
        [
            [np.log10(1 + 1e4 * 1 / 4), np.log10(1 + 1e4 * 3 / 4), 0.0],
            [0.0, 0.0, 0.0],
            [np.log10(1 + 1e4 * 5 / 20), np.log10(1 + 1e4 * 5 / 20), np.log10(1 + 1e4 * 10 / 20)],
        ]
    )
    np.testing.assert_allclose(expression_targets(counts), expected, rtol=1e-6)
    np.testing.assert_allclose(size_factors(counts), [4 / 4, 0 / 4, 20 / 4])


def test_sections_carry_targets_for_the_chosen_genes(adata):
    genes = list(adata.var_names[:5])
    sections = prepare_sections(adata, "hires", genes=genes, show_progress_bar=False)
    assert [s.library_id for s in sections] == ["S0", "S1"]
    s0 = sections[0]
    counts = adata[adata.obs["library_id"] == "S0", genes].X.toarray()
    np.testing.assert_allclose(s0.targets.numpy(), expression_targets(counts))
    assert s0.patches.dtype == torch.uint8
    assert s0.edge_index.shape[0] == 2 and s0.edge_index.max() < s0.n_spots


# ----------------------------------------------------------------------------- counts
def _prepare(adata, **kwargs):
    kwargs.setdefault("genes", list(adata.var_names))
    return prepare_sections(adata, kwargs.pop("image_key", "hires"), show_progress_bar=False, **kwargs)


def test_counts_from_a_layer(adata):
    adata.layers["counts"] = adata.X.copy()
    adata.X = np.log1p(adata.X.toarray())
    with pytest.raises(ValueError, match="non-integer"):
        _prepare(adata)
    counts = get_counts(adata, list(adata.var_names), "counts")
    np.testing.assert_array_equal(counts, adata.layers["counts"].toarray())


def test_spatial_graph_follows_squidpys_copy_rule(adata):
    before = set(adata.obsp)
    conn = hist2st.pp.spatial_graph(adata, copy=True)
    assert set(adata.obsp) == before
    assert conn.shape == (adata.n_obs, adata.n_obs)
    assert hist2st.pp.spatial_graph(adata) is None
    assert (adata.obsp["spatial_connectivities"] != conn).nnz == 0
    with pytest.warns(FutureWarning, match="inplace"):
        old = hist2st.pp.spatial_graph(adata, inplace=False)
    assert (old != conn).nnz == 0


def test_tile_covers_the_tissue_and_predicts(trained):
    # a white slide with a dark square of tissue in the middle
    img = np.full((400, 600, 3), 245, dtype=np.uint8)
    img[100:300, 200:400] = (150, 80, 160)
    slide = hist2st.pp.tile(img, spot_step=40, spot_diameter=32, library_id="he")
    xy = slide.obsm["spatial"]
    assert slide.n_vars == 0 and slide.n_obs > 0
    assert (xy[:, 0] > 180).all() and (xy[:, 0] < 420).all() and (xy[:, 1] > 80).all() and (xy[:, 1] < 320).all()
    assert slide.n_obs == pytest.approx(25, abs=6)
    hexagonal = hist2st.pp.tile(img, spot_step=40, layout="visium")
    assert ((hexagonal.obs["array_row"] + hexagonal.obs["array_col"]) % 2 == 0).all()
    out = hist2st.tl.predict(slide, trained, "hires", show_progress_bar=False)
    assert out.shape == (slide.n_obs, len(trained.genes))
    assert np.isfinite(out.layers["hist2st"]).all()
    with pytest.raises(ValueError, match="No pseudo-spot"):
        hist2st.pp.tile(np.full((100, 100, 3), 250, dtype=np.uint8), spot_step=20, tissue_threshold=10)
