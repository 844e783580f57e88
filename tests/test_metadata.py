"""metadata.json: statistics, attribution, provenance and the run record."""

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from tasks.aoi import aoi_digest
from tasks.cog import MOSAIC_BANDS, REFLECTANCE_SCALE_FACTOR
from tasks.errors import InvalidSettings
from tasks.grid import grid_metadata
from tasks.metadata import (
    Month,
    ProductNames,
    aoi_area_km2,
    band_statistics,
    metadata_json,
)
from tests.staging_rasters import make_product_run, make_staging_rasters


def _metadata(tmp_path: Path, scene_dates: tuple[datetime, ...] | None = None) -> dict:
    staging = make_staging_rasters(tmp_path)
    run = make_product_run(staging) if scene_dates is None else make_product_run(staging, scene_dates)
    names = ProductNames.for_run(run.aoi_name, run.month)
    names_of_bands = tuple(band.common_name for band in MOSAIC_BANDS)
    mosaic_statistics = band_statistics(staging.mosaic_path, staging.aoi, staging.grid, names_of_bands)
    (count_statistics,) = band_statistics(staging.count_path, staging.aoi, staging.grid, ("count",))
    return json.loads(metadata_json(run, names, mosaic_statistics, count_statistics))


def test_statistics_match_numpy_over_valid_aoi_pixels(tmp_path: Path) -> None:
    staging = make_staging_rasters(tmp_path, data_outside_aoi=True)

    statistics = band_statistics(staging.mosaic_path, staging.aoi, staging.grid, ("red", "green", "blue", "nir"))

    for band, band_statistics_ in zip(staging.mosaic, statistics, strict=True):
        valid = band[staging.inside_aoi & (band != 0)]
        assert band_statistics_.valid_pixels == valid.size
        assert band_statistics_.minimum == valid.min() and band_statistics_.maximum == valid.max()
        assert band_statistics_.mean == pytest.approx(valid.mean())
        assert band_statistics_.stddev == pytest.approx(valid.std())
        assert band_statistics_.p2 == np.percentile(valid, 2, method="inverted_cdf")
        assert band_statistics_.p98 == np.percentile(valid, 98, method="inverted_cdf")
        assert band_statistics_.valid_share == pytest.approx(valid.size / staging.inside_aoi.sum())
        assert 0.8 < band_statistics_.valid_share < 1.0, "the staging mosaic leaves an empty strip in the AOI"


def test_count_statistics_count_zero_as_a_value(tmp_path: Path) -> None:
    staging = make_staging_rasters(tmp_path)

    (statistics,) = band_statistics(staging.count_path, staging.aoi, staging.grid, ("count",))

    assert statistics.valid_share == 1.0
    assert statistics.minimum == 0
    assert statistics.mean == pytest.approx(staging.count[0][staging.inside_aoi].mean())


def test_metadata_holds_attribution_with_the_scene_year(tmp_path: Path) -> None:
    document = _metadata(tmp_path)

    assert document["attribution"] == "Contains modified Copernicus Sentinel data 2024"


def test_attribution_names_every_scene_year(tmp_path: Path) -> None:
    dates = (datetime(2023, 12, 31, 10, tzinfo=UTC), datetime(2024, 1, 1, 10, tzinfo=UTC))

    document = _metadata(tmp_path, dates)

    assert document["attribution"] == "Contains modified Copernicus Sentinel data 2023, 2024"


def test_metadata_holds_run_provenance(tmp_path: Path) -> None:
    staging = make_staging_rasters(tmp_path / "grid")
    document = _metadata(tmp_path)

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
    assert document["grid"] == json.loads(json.dumps(grid_metadata(staging.grid)))
    assert document["composite"]["percentile"] == 25.0
    assert document["masking"]["masker"] == "scl"
    assert document["masking"]["scl_invalid_classes"] == [0, 1, 3, 8, 9, 10, 11]
    assert [scene["acquired"][:10] for scene in document["scenes_used"]] == ["2024-06-03", "2024-06-18"]
    assert {scene["processing_baseline"] for scene in document["scenes_used"]} == {"05.10"}
    assert all(scene["valid_fraction"] == 0.9 for scene in document["scenes_used"])
    run = make_product_run(staging)
    assert document["scenes_failed"] == [{"id": "S2A_33TWL_20240611_0_L2A", "reason": run.scenes_failed[0].reason}]
    assert document["scenes_skipped"] == [{"id": "S2B_33TWL_20240614_0_L2A", "reason": "no clear pixel in the AOI"}]
    assert document["scenes_found"] == 4 and document["aoi"]["digest"] == aoi_digest(run.aoi)
    assert document["files"]["mosaic"] == "l-shaped_2024-06_mosaic.tif"


def test_metadata_describes_bands_and_software(tmp_path: Path) -> None:
    document = _metadata(tmp_path)

    bands = document["mosaic"]["bands"]
    assert [band["name"] for band in bands] == ["red", "green", "blue", "nir"]
    assert [band["sentinel2_band"] for band in bands] == ["B04", "B03", "B02", "B08"]
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


def test_area_is_geodesic(tmp_path: Path) -> None:
    staging = make_staging_rasters(tmp_path)

    area = aoi_area_km2(staging.aoi)

    utm_area = staging.aoi.to_crs(staging.grid.crs).area / 1e6
    assert area == pytest.approx(utm_area, rel=0.002)


def test_a_run_with_no_scene_used_is_attributed_to_its_month(tmp_path: Path) -> None:
    run = replace(make_product_run(make_staging_rasters(tmp_path)), scenes_used=())
    assert run.scene_years == (run.month.year,) and run.scenes_found == 2


@pytest.mark.parametrize("text", ["2024-13", "June 2024"])
def test_bad_month_is_refused(text: str) -> None:
    with pytest.raises(InvalidSettings):
        Month.parse(text)


def test_december_ends_on_new_year_eve() -> None:
    assert Month.parse("2024-12").end == datetime(2024, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
