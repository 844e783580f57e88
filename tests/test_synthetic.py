"""The synthetic month: its files, items and masks agree with each other and with the truth."""

from datetime import date
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from odc.geo.geom import Geometry

from tasks.testing.synthetic import (
    BOA_OFFSET_DN,
    JITTER_GAIN,
    JITTER_OFFSET_DN,
    REFLECTANCE_ASSETS,
    SHADOW_DARKENING,
    THIN_ALPHA_RANGE,
    THIN_CLOUD_DN,
    TILE_GRID,
    SyntheticMonth,
    full_resolution,
    make_synthetic_month,
    shadow_offset_px,
    shifted,
    synthetic_grid,
)

DUPLICATED = date(2020, 3, 10)
NEW_BASELINE = date(2020, 3, 15)
PARTIAL = date(2020, 3, 20)
DATES = (date(2020, 3, 5), DUPLICATED, NEW_BASELINE, PARTIAL)
SMALL_GRID = synthetic_grid(shape=(256, 256), resolution=100.0, crs="EPSG:32629", origin=(199_980.0, 2_800_020.0))


def _month(out_dir: Path, seed: int = 3, **options) -> SyntheticMonth:
    return make_synthetic_month(
        out_dir,
        dates=DATES,
        grid=SMALL_GRID,
        duplicated_dates={DUPLICATED},
        new_baseline_dates={NEW_BASELINE},
        partial_dates={PARTIAL},
        cloud_cover=(0.2, 0.3, 0.1, 0.25),
        seed=seed,
        **options,
    )


@pytest.fixture(scope="module")
def month(tmp_path_factory: pytest.TempPathFactory) -> SyntheticMonth:
    return _month(tmp_path_factory.mktemp("synthetic"))


def _read(href: str) -> np.ndarray:
    with rasterio.open(href) as dataset:
        return dataset.read(1)


def _harmonised(month: SyntheticMonth, item: dict) -> np.ndarray:
    """(4,H,W) reflectance x 10000 from the item's files and its declared scale/offset; NaN = nodata."""
    bands = []
    for key in REFLECTANCE_ASSETS:
        asset = item["assets"][key]
        band = asset["raster:bands"][0]
        digital_numbers = _read(asset["href"]).astype(np.float64)
        value = (digital_numbers * band["scale"] + band["offset"]) * 10_000
        bands.append(np.where(digital_numbers == band["nodata"], np.nan, value))
    return np.stack(bands)


def test_items_are_earth_search_v1_shaped(month: SyntheticMonth) -> None:
    ids = [item["id"] for item in month.items]
    assert ids == [
        "S2B_29RKH_20200305_0_L2A",
        "S2A_29RKH_20200310_0_L2A",
        "S2A_29RKH_20200310_1_L2A",
        "S2B_29RKH_20200315_0_L2A",
        "S2A_29RKH_20200320_0_L2A",
    ]
    for item in month.items:
        parsed = pystac.Item.from_dict(item)
        assert set(parsed.assets) == {"red", "green", "blue", "nir", "scl"}
        properties = item["properties"]
        assert properties["proj:epsg"] == 32629 and properties["proj:code"] == "EPSG:32629"
        assert properties["s2:mgrs_tile"] == "29RKH" and properties["mgrs:utm_zone"] == 29
        assert item["assets"]["red"]["proj:transform"] == list(month.grid.affine[:6])
        assert item["assets"]["scl"]["proj:shape"] == [128, 128]
        west, south, east, north = item["bbox"]
        assert -13 < west < east < -11 and 24 < south < north < 26
    baselines = {item["id"]: item["properties"]["s2:processing_baseline"] for item in month.items}
    assert baselines["S2A_29RKH_20200310_0_L2A"] == "02.14"
    assert baselines["S2A_29RKH_20200310_1_L2A"] == "05.00"
    assert baselines["S2B_29RKH_20200315_0_L2A"] == "05.00"
    assert month.collection["id"] == "sentinel-2-l2a"
    pystac.Collection.from_dict(month.collection)


def test_offsets_follow_the_processing_baseline(month: SyntheticMonth) -> None:
    old, new = month.item("S2A_29RKH_20200310_0_L2A"), month.item("S2A_29RKH_20200310_1_L2A")
    assert old["assets"]["nir"]["raster:bands"][0]["offset"] == 0
    assert new["assets"]["nir"]["raster:bands"][0]["offset"] == pytest.approx(-0.1)
    old_dn, new_dn = _read(old["assets"]["nir"]["href"]), _read(new["assets"]["nir"]["href"])
    assert np.array_equal(new_dn.astype(int) - old_dn.astype(int), np.full(old_dn.shape, BOA_OFFSET_DN))
    np.testing.assert_allclose(_harmonised(month, old), _harmonised(month, new), atol=1e-6)


def test_clear_pixels_are_the_jittered_truth(month: SyntheticMonth) -> None:
    for item in month.items:
        clear = month.clear_mask[item["id"]]
        assert clear.any()
        observed = _harmonised(month, item)[:, clear]
        expected = month.clear_value(item["id"])[:, clear]
        np.testing.assert_allclose(observed, expected, atol=1e-6)
        truth = month.truth[:, clear].astype(np.float64)
        assert np.all(np.abs(expected - truth) <= JITTER_GAIN * truth + JITTER_OFFSET_DN + 0.5)


def test_scl_agrees_with_the_masks(month: SyntheticMonth) -> None:
    for item in month.items:
        item_id = item["id"]
        scl = full_resolution(_read(item["assets"]["scl"]["href"]), month.grid.shape.yx)
        cloud, thin, shadow = month.cloud_mask[item_id], month.thin_mask[item_id], month.shadow_mask[item_id]
        assert np.isin(scl[cloud], (8, 9)).all()
        assert (scl[thin] == 10).all() and (scl[shadow] == 3).all()
        assert (scl[~month.data_mask[item_id]] == 0).all()
        assert not np.isin(scl[month.clear_mask[item_id]], (0, 3, 8, 9, 10)).any()
        cover = 100.0 * (cloud | thin)[month.data_mask[item_id]].mean()
        assert item["properties"]["eo:cloud_cover"] == pytest.approx(cover, abs=0.01)


def test_shadows_are_displaced_darkened_clouds(month: SyntheticMonth) -> None:
    item_id = "S2B_29RKH_20200305_0_L2A"
    shadow = month.shadow_mask[item_id]
    assert shadow.any()
    half_cloud = month.cloud_mask[item_id][::2, ::2]
    displaced = full_resolution(shifted(half_cloud, *shadow_offset_px(month.grid.zoom_out(2))), shadow.shape)
    assert displaced[shadow].all()
    ratio = _harmonised(month, month.item(item_id))[:, shadow] / month.clear_value(item_id)[:, shadow]
    np.testing.assert_allclose(ratio, SHADOW_DARKENING, atol=0.05)


def test_thin_clouds_are_semi_transparent(month: SyntheticMonth) -> None:
    item_id = "S2B_29RKH_20200305_0_L2A"
    thin = month.thin_mask[item_id]
    hazy = _harmonised(month, month.item(item_id))[:, thin]
    ground = month.clear_value(item_id)[:, thin].astype(np.float64)
    towards_cloud = THIN_CLOUD_DN[:, None] - ground
    contrast = np.abs(towards_cloud) > 500
    opacity = (hazy - ground)[contrast] / towards_cloud[contrast]
    low_alpha, high_alpha = THIN_ALPHA_RANGE
    assert opacity.min() > low_alpha - 0.01 and opacity.max() < high_alpha + 0.01


def test_partial_dates_are_nodata_outside_the_swath(month: SyntheticMonth) -> None:
    item = month.item("S2A_29RKH_20200320_0_L2A")
    data = month.data_mask[item["id"]]
    assert 0.4 < data.mean() < 0.9
    assert (_read(item["assets"]["red"]["href"])[~data] == 0).all()
    assert (_read(item["assets"]["red"]["href"])[data] > 0).all()
    footprint = Geometry(item["geometry"], crs="EPSG:4326").to_crs(month.grid.crs)
    assert footprint.area / month.grid.extent.area == pytest.approx(data.mean(), abs=0.02)


def test_same_seed_same_month_other_seed_other_clouds(tmp_path: Path, month: SyntheticMonth) -> None:
    again = _month(tmp_path / "again")
    other = _month(tmp_path / "other", seed=4)
    assert np.array_equal(again.truth, month.truth)
    for item in month.items:
        assert np.array_equal(again.cloud_mask[item["id"]], month.cloud_mask[item["id"]])
        href, again_href = item["assets"]["blue"]["href"], again.item(item["id"])["assets"]["blue"]["href"]
        assert np.array_equal(_read(href), _read(again_href))
    assert not np.array_equal(other.cloud_mask[month.items[0]["id"]], month.cloud_mask[month.items[0]["id"]])


def test_href_hook_rewrites_every_asset(tmp_path: Path) -> None:
    written: list[Path] = []

    def to_url(path: Path) -> str:
        written.append(path)
        return f"s3://bucket/{path.relative_to(tmp_path).as_posix()}"

    month = make_synthetic_month(tmp_path, dates=DATES[:1], grid=SMALL_GRID, href_for=to_url)
    hrefs = [asset["href"] for asset in month.items[0]["assets"].values()]
    assert sorted(hrefs) == sorted(f"s3://bucket/{path.relative_to(tmp_path).as_posix()}" for path in written)
    assert all(path.is_file() for path in written) and len(written) == 5


def test_ten_metre_grid_in_another_zone(tmp_path: Path) -> None:
    grid = synthetic_grid(shape=(256, 256), resolution=10.0, crs="EPSG:32633")
    month = make_synthetic_month(tmp_path, dates=DATES[:2], grid=grid, tile_id="33TWM")
    item = month.items[0]
    assert item["id"] == "S2B_33TWM_20200305_0_L2A" and item["properties"]["proj:epsg"] == 32633
    with rasterio.open(item["assets"]["scl"]["href"]) as scl:
        assert scl.res == (20.0, 20.0) and scl.shape == (128, 128)
    vegetated = month.truth[3] > 2 * month.truth[0]
    assert 0.05 < vegetated.mean() < 0.95


def test_real_tile_is_the_truth(tmp_path: Path, shared_s2: Path) -> None:
    tile_dir = shared_s2 / "l2a_29RKH_20200219"
    month = make_synthetic_month(tmp_path, dates=DATES[:1], tile_dir=tile_dir)
    assert month.grid == TILE_GRID
    for band_index, file_name in enumerate(REFLECTANCE_ASSETS.values()):
        assert np.array_equal(month.truth[band_index], _read(str(tile_dir / f"{file_name}.tif")))
    item = month.items[0]
    scl = _read(item["assets"]["scl"]["href"])
    clear = month.clear_mask[item["id"]][::2, ::2]
    assert set(np.unique(scl[clear])) <= {2, 5, 7}
