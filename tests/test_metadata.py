"""metadata.json: statistics from histograms, attribution, provenance, the run record and a tiled month's files."""

import json
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pytest

from tasks.core.errors import InvalidSettings
from tasks.core.month import Month
from tasks.geometry.aoi import aoi_digest
from tasks.geometry.grid import grid_metadata
from tasks.products.cog import MOSAIC_BANDS, REFLECTANCE_SCALE_FACTOR
from tasks.products.metadata import (
    ProductNames,
    ProductRun,
    TileFiles,
    aoi_area_km2,
    metadata_json,
    statistics_from_histogram,
)
from tasks.tiling.tile import REFLECTANCE_VALUES
from tests.product_arrays import (
    FAILED_SCENE,
    SKIPPED_SCENE,
    ProductArrays,
    make_product_arrays,
    make_product_run,
    product_statistics,
)

JUNE_2024 = ProductNames.for_run("l-shaped", Month(2024, 6))
TILES_DIGEST = "0123456789ab"
TILES = tuple(
    TileFiles(label, JUNE_2024.tile_mosaic(label, TILES_DIGEST), JUNE_2024.tile_count(label, TILES_DIGEST))
    for label in ("r000c000", "r000c001", "r001c000", "r001c001")
)


@pytest.fixture(scope="module")
def arrays() -> ProductArrays:
    return make_product_arrays()


def metadata_of(run: ProductRun, arrays: ProductArrays) -> dict:
    return json.loads(metadata_json(run, run.names, product_statistics(arrays)))


def test_statistics_from_histograms_match_numpy_over_valid_aoi_pixels(arrays: ProductArrays) -> None:
    mosaic_statistics = product_statistics(arrays).mosaic

    for band, statistics in zip(arrays.mosaic, mosaic_statistics, strict=True):
        valid = band[arrays.inside_aoi & (band != 0)]
        assert statistics.valid_pixels == valid.size
        assert statistics.minimum == valid.min() and statistics.maximum == valid.max()
        assert statistics.mean == pytest.approx(valid.mean())
        assert statistics.stddev == pytest.approx(valid.std())
        assert statistics.p2 == np.percentile(valid, 2, method="inverted_cdf")
        assert statistics.p98 == np.percentile(valid, 98, method="inverted_cdf")
        assert statistics.valid_share == pytest.approx(valid.size / arrays.inside_aoi.sum())
        assert statistics.valid_percent == pytest.approx(100 * valid.size / arrays.inside_aoi.size)
        assert 0.8 < statistics.valid_share < 1.0, "the mosaic leaves an empty strip in the AOI"


@pytest.mark.parametrize(
    "values",
    [[7], [1] * 50 + [2] * 50, [1] * 2 + [9] * 97 + [65535], [3, 3, 3, 1000] * 25 + [4]],
    ids=["one value", "two halves", "tails at both ends", "one odd pixel"],
)
def test_histogram_percentiles_are_numpy_inverted_cdf(values: list[int]) -> None:
    sample = np.array(values, dtype=np.uint16)

    statistics = statistics_from_histogram("red", np.bincount(sample, minlength=REFLECTANCE_VALUES), sample.size, 1000)

    assert statistics.p2 == np.percentile(sample, 2, method="inverted_cdf")
    assert statistics.p98 == np.percentile(sample, 98, method="inverted_cdf")
    assert (statistics.minimum, statistics.maximum) == (sample.min(), sample.max())


def test_count_statistics_count_zero_as_a_value(arrays: ProductArrays) -> None:
    statistics = product_statistics(arrays).count

    assert statistics.valid_share == 1.0
    assert statistics.minimum == 0
    assert statistics.mean == pytest.approx(arrays.count[arrays.inside_aoi].mean())


def test_a_band_without_valid_pixels_has_no_statistics() -> None:
    statistics = statistics_from_histogram("red", np.zeros(REFLECTANCE_VALUES, dtype=np.int64), 500, 1000)

    assert statistics.valid_pixels == 0 and statistics.valid_share == 0.0 and statistics.valid_percent == 0.0
    assert statistics.as_json() == {
        "min": None, "max": None, "mean": None, "stddev": None, "p2": None, "p98": None,
        "valid_pixels": 0, "valid_share_of_aoi": 0.0,
    }  # fmt: skip


def test_metadata_holds_attribution_with_the_scene_year(arrays: ProductArrays) -> None:
    document = metadata_of(make_product_run(arrays), arrays)

    assert document["attribution"] == "Contains modified Copernicus Sentinel data 2024"


def test_attribution_names_every_scene_year(arrays: ProductArrays) -> None:
    dates = (datetime(2023, 12, 31, 10, tzinfo=UTC), datetime(2024, 1, 1, 10, tzinfo=UTC))

    document = metadata_of(make_product_run(arrays, dates), arrays)

    assert document["attribution"] == "Contains modified Copernicus Sentinel data 2023, 2024"


def test_metadata_holds_run_provenance(arrays: ProductArrays) -> None:
    run = make_product_run(arrays)
    document = metadata_of(run, arrays)

    assert document["id"] == "l-shaped-2024-06"
    assert document["period"] == {
        "month": "2024-06",
        "start": "2024-06-01T00:00:00+00:00",
        "end": "2024-06-30T23:59:59.999999+00:00",
    }
    aoi = document["aoi"]
    assert aoi["name"] == "l-shaped" and aoi["source"] == "tests/l-shaped.gpkg"
    assert aoi["bounds_epsg4326"] == pytest.approx([15.0, 45.0, 15.09, 45.07])
    assert 30 < aoi["area_km2"] < 40, "about 7.1 x 3.3 + 2.4 x 4.4 km"
    assert document["grid"] == json.loads(json.dumps(grid_metadata(arrays.grid)))
    assert document["composite"]["percentile"] == 25.0
    assert document["masking"]["masker"] == "scl"
    assert document["masking"]["scl_invalid_classes"] == [0, 1, 3, 8, 9, 10, 11]
    assert [scene["acquired"][:10] for scene in document["scenes_used"]] == ["2024-06-03", "2024-06-18"]
    assert {scene["processing_baseline"] for scene in document["scenes_used"]} == {"05.10"}
    assert all(scene["valid_fraction"] == 0.9 for scene in document["scenes_used"])
    assert document["scenes_failed"] == [{"id": FAILED_SCENE.item_id, "reason": FAILED_SCENE.reason}]
    assert document["scenes_skipped"] == [{"id": SKIPPED_SCENE.item_id, "reason": SKIPPED_SCENE.reason}]
    assert document["scenes_found"] == 4 and document["aoi"]["digest"] == aoi_digest(run.aoi)


def test_a_month_of_one_tile_lists_its_single_cogs_only(arrays: ProductArrays) -> None:
    files = metadata_of(make_product_run(arrays), arrays)["files"]

    assert files == {
        "mosaic": "l-shaped_2024-06_mosaic.tif",
        "count": "l-shaped_2024-06_count.tif",
        "quicklook": "l-shaped_2024-06_quicklook.png",
        "stac_item": "l-shaped_2024-06_item.json",
    }


@pytest.mark.parametrize("single_cogs", [True, False], ids=["with single COGs", "index only"])
def test_a_tiled_month_lists_its_indexes_and_every_tile(arrays: ProductArrays, single_cogs: bool) -> None:
    run = replace(make_product_run(arrays), tiles=TILES, single_cogs=single_cogs)

    files = metadata_of(run, arrays)["files"]

    assert files["mosaic_index"] == "l-shaped_2024-06_mosaic.vrt"
    assert files["count_index"] == "l-shaped_2024-06_count.vrt"
    assert files["tiles"] == [
        {"tile": tile.label, "mosaic": f"tiles/{TILES_DIGEST}/l-shaped_2024-06_{tile.label}_mosaic.tif",
         "count": f"tiles/{TILES_DIGEST}/l-shaped_2024-06_{tile.label}_count.tif"}
        for tile in TILES
    ]  # fmt: skip
    expected = ("l-shaped_2024-06_mosaic.tif", "l-shaped_2024-06_count.tif") if single_cogs else (
        "l-shaped_2024-06_mosaic.vrt", "l-shaped_2024-06_count.vrt"
    )  # fmt: skip
    assert (files["mosaic"], files["count"]) == (run.mosaic_file, run.count_file) == expected


def test_product_names_share_the_stem() -> None:
    names = ProductNames.for_run("l-shaped", Month(2024, 6))

    assert names.stem == "l-shaped_2024-06"
    assert (names.mosaic_index, names.count_index) == ("l-shaped_2024-06_mosaic.vrt", "l-shaped_2024-06_count.vrt")
    assert names.tile_mosaic("r001c002", "abc") == "tiles/abc/l-shaped_2024-06_r001c002_mosaic.tif"
    assert names.tile_count("r001c002", "abc") == "tiles/abc/l-shaped_2024-06_r001c002_count.tif"


def test_metadata_describes_bands_and_software(arrays: ProductArrays) -> None:
    document = metadata_of(make_product_run(arrays), arrays)

    bands = document["mosaic"]["bands"]
    assert [band["name"] for band in bands] == ["red", "green", "blue", "nir"]
    assert [band["sentinel2_band"] for band in bands] == ["B04", "B03", "B02", "B08"]
    assert [band["center_wavelength_um"] for band in bands] == [band.center_wavelength_um for band in MOSAIC_BANDS]
    assert all(band["scale"] == REFLECTANCE_SCALE_FACTOR == 0.0001 for band in bands)
    for band in bands:
        statistics = band["statistics"]
        assert statistics["min"] <= statistics["p2"] <= statistics["mean"] <= statistics["p98"] <= statistics["max"]
    assert document["mosaic"]["nodata"] == 0
    assert document["count"]["nodata"] is None and "0 = no valid observation" in document["count"]["description"]
    software = document["software"]
    for name in ("s2-monthly-basemap", "prefect", "rasterio", "GDAL", "torch", "omnicloudmask", "odc-geo", "pystac"):
        assert software[name] and software[name] != "not installed", name
    assert software["GDAL"].startswith("3.")


def test_area_is_geodesic(arrays: ProductArrays) -> None:
    area = aoi_area_km2(arrays.aoi)

    utm_area = arrays.aoi.to_crs(arrays.grid.crs).area / 1e6
    assert area == pytest.approx(utm_area, rel=0.002)


def test_a_run_with_no_scene_used_is_attributed_to_its_month(arrays: ProductArrays) -> None:
    run = replace(make_product_run(arrays), scenes_used=())
    assert run.scene_years == (run.month.year,) and run.scenes_found == 2


@pytest.mark.parametrize("text", ["2024-13", "June 2024"])
def test_bad_month_is_refused(text: str) -> None:
    with pytest.raises(InvalidSettings):
        Month.parse(text)


def test_december_ends_on_new_year_eve() -> None:
    assert Month.parse("2024-12").end == datetime(2024, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
