"""Whole-slide images: pyramids read lazily, the level nearest the model's resolution, tissue found on a thumbnail."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

import st_hist2st as hist2st

SIDE = 4096
RADIUS = 700


def write_pyramid(path, microns_per_pixel: float = 0.25, levels: int = 5) -> None:
    """A white slide with a disc of textured 'tissue', as a tiled pyramidal OME-TIFF."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIDE, :SIDE]
    disc = (yy - SIDE / 2) ** 2 + (xx - SIDE / 2) ** 2 < RADIUS**2
    image = np.full((SIDE, SIDE, 3), 242, dtype=np.uint8)
    texture = rng.integers(0, 60, (SIDE, SIDE, 1), dtype=np.uint8)
    image[disc] = (np.array([170, 90, 170], dtype=np.uint8) - texture[disc]).astype(np.uint8)
    options = {"tile": (256, 256), "photometric": "rgb"}
    with tifffile.TiffWriter(path, bigtiff=True) as writer:
        metadata = {"axes": "YXS", "PhysicalSizeX": microns_per_pixel, "PhysicalSizeY": microns_per_pixel}
        writer.write(image, subifds=levels - 1, metadata=metadata, **options)
        for k in range(1, levels):
            writer.write(image[:: 2**k, :: 2**k], subfiletype=1, **options)


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    path = tmp_path_factory.mktemp("slide") / "slide.ome.tif"
    write_pyramid(path)
    return path


def test_read_slide_opens_the_pyramid_without_reading_it(pyramid):
    slide = hist2st.pp.read_slide(pyramid)
    assert slide.shape == (SIDE, SIDE, 3)
    assert slide.microns_per_pixel == pytest.approx(0.25)
    assert slide.downsamples == [1, 2, 4, 8, 16]
    assert all(level.pixels_read == 0 for level in slide.levels)
    window = slide[100:110, 200:230]
    assert window.shape == (10, 30, 3) and slide.level(0).pixels_read == 300
    np.testing.assert_array_equal(slide.level(2)[10:12, 5:7], np.asarray(slide[40:48:4, 20:28:4]))
    assert "microns_per_pixel=0.25" in repr(slide)


@pytest.mark.parametrize(
    ("wanted", "level"), [(0.2, 0), (0.25, 0), (0.3, 0), (0.5, 1), (0.55, 1), (1.0, 2), (2.0, 3), (4.4, 4), (50, 4)]
)
def test_the_level_chosen_is_the_one_nearest_the_resolution_asked_for_without_being_coarser(pyramid, wanted, level):
    slide = hist2st.pp.read_slide(pyramid)
    assert slide.level_for(wanted) == level
    assert slide.microns_per_pixel * slide.downsamples[level] <= wanted * 1.1 or level == 0


def test_tile_and_predict_on_a_slide_read_only_where_the_tissue_is(pyramid, trained):
    slide = hist2st.pp.read_slide(pyramid)
    spots = hist2st.pp.tile(slide, spot_microns=60, model=trained, level=0)
    xy = spots.obsm["spatial"]
    assert spots.n_obs > 20
    assert (np.hypot(xy[:, 0] - SIDE / 2, xy[:, 1] - SIDE / 2) < RADIUS + 60 / 0.25).all()
    assert spots.uns["spatial"]["slide"]["metadata"]["microns_per_pixel"] == 0.25
    assert slide.level(0).pixels_read == 0  # tissue is found on a coarse level
    out = hist2st.tl.predict(spots, trained, show_progress_bar=False)
    assert np.isfinite(out.layers["hist2st"]).all()
    assert out.uns["hist2st"]["crop_microns"] == pytest.approx(trained.preprocessing["crop_microns"])
    read = slide.level(0).pixels_read
    assert 0 < read < 0.35 * SIDE * SIDE  # blocks around the disc's spots, not the slide
    # the genes a measurement of the slide would find spatially variable, from the image's predictions alone
    assert out.uns["hist2st"]["median_total"] == trained.preprocessing["median_total"]
    table = hist2st.tl.spatial_autocorr(out, copy=True)
    assert sorted(table.index) == sorted(trained.genes)
    expressed = np.clip(out[:, table.index].layers["hist2st"], 0, None)  # below 0: no expression
    varies = np.ptp(expressed, axis=0) > 0
    assert np.isfinite(table["I"].to_numpy()[varies]).all() and np.isnan(table["I"].to_numpy()[~varies]).all()
    assert (table["signal_share"].dropna() <= 1).all()


def test_tile_picks_the_level_of_the_models_resolution(pyramid, trained):
    slide = hist2st.pp.read_slide(pyramid)
    spots = hist2st.pp.tile(slide, spot_microns=60, model=trained)
    wanted = trained.preprocessing["patch_microns_per_pixel"]
    level = spots.uns["spatial"]["slide"]["metadata"]["level"]
    assert level == slide.level_for(wanted) > 0
    assert spots.uns["spatial"]["slide"]["scalefactors"]["tissue_hires_scalef"] == 1 / slide.downsamples[level]
    assert spots.uns["spatial"]["slide"]["images"]["hires"] is slide.level(level)


def test_slide_scale_from_aperio_and_resolution_tags(tmp_path):
    image = np.full((64, 64, 3), 200, dtype=np.uint8)
    tifffile.imwrite(tmp_path / "a.svs", image, description="Aperio Image Library v12 |AppMag = 20|MPP = 0.4990")
    assert hist2st.pp.read_slide(tmp_path / "a.svs").microns_per_pixel == pytest.approx(0.499)
    tifffile.imwrite(tmp_path / "b.tif", image, resolution=(1e4 / 0.8, 1e4 / 0.8), resolutionunit="CENTIMETER")
    assert hist2st.pp.read_slide(tmp_path / "b.tif").microns_per_pixel == pytest.approx(0.8)
    tifffile.imwrite(tmp_path / "c.tif", image)
    slide = hist2st.pp.read_slide(tmp_path / "c.tif")
    assert slide.microns_per_pixel is None
    with pytest.raises(ValueError, match="microns_per_pixel="):
        slide.level_for(0.5)
    with pytest.raises(ValueError, match="microns_per_pixel="):
        hist2st.pp.tile(slide, spot_microns=100)
    assert hist2st.pp.read_slide(tmp_path / "c.tif", microns_per_pixel=0.3).microns_per_pixel == 0.3


def test_read_slide_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No slide"):
        hist2st.pp.read_slide(tmp_path / "missing.tif")
    (tmp_path / "x.mrxs").write_text("not a tiff")
    with pytest.raises(ValueError, match="not a TIFF-based slide|neither tifffile nor OpenSlide"):
        hist2st.pp.read_slide(tmp_path / "x.mrxs")
    with pytest.raises(ValueError, match="tifffile cannot read"):
        hist2st.pp.read_slide(tmp_path / "x.mrxs", reader="tifffile")
    with pytest.raises(ValueError, match="`reader`"):
        hist2st.pp.read_slide(tmp_path / "x.mrxs", reader="pillow")


def test_openslide_reads_the_same_pixels_as_tifffile(tmp_path, trained):
    pytest.importorskip("openslide")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (1024, 1536, 3), dtype=np.uint8)
    path = tmp_path / "generic.tif"
    with tifffile.TiffWriter(path) as writer:  # a generic tiled TIFF, pyramid levels in the next directories
        options = {"tile": (256, 256), "photometric": "rgb"}
        writer.write(image, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER", **options)
        for k in (2, 4):
            writer.write(image[::k, ::k], subfiletype=1, **options)
    slide = hist2st.pp.read_slide(path, reader="openslide")
    assert slide.microns_per_pixel == pytest.approx(0.5)
    assert slide.downsamples == [1, 2, 4] and slide.shape == (1024, 1536, 3)
    np.testing.assert_array_equal(slide[256:261, 512:522], image[256:261, 512:522])
    np.testing.assert_array_equal(slide.level(1)[128:133, 256:266], image[::2, ::2][128:133, 256:266])
    np.testing.assert_array_equal(slide.level(2)[::3, ::5], image[::4, ::4][::3, ::5])
    assert slide.level(0).pixels_read == 50
    assert slide.level_for(1.0) == 1


@pytest.mark.parametrize("colour", [True, False])
def test_tissue_mask_finds_pale_stroma_drops_specks_and_fills_holes(colour):
    image = np.full((200, 200, 3), 240, dtype=np.uint8)
    dense, pale = np.array([150, 70, 160.0]), np.array([232, 192, 218.0])  # pale: nearly as bright as the glass
    if not colour:
        dense, pale = np.full(3, 110.0), np.full(3, 160.0)
    fade = np.linspace(0, 1, 100)[None, :, None]
    image[50:150, 50:150] = (dense * (1 - fade) + pale * fade).astype(np.uint8)
    image[95:100, 95:100] = 240  # a small hole in the tissue
    image[10:12, 10:12] = dense  # a speck of dust
    mask, _ = hist2st.pp.tissue_mask(image)
    assert mask[50:150, 50:150].all()
    assert not mask[:40, :40].any() and not mask[160:, 160:].any()
