"""Gap fill through the real flows on a synthetic 3-month series (moto S3 scenes, rustac STAC API).

The surface brightens linearly (gain 1.00, 1.05, 1.10 on one surface, each date showing it exactly
where clear) and the middle month is under thick cloud all month over the western part of the AOI. A backfill of the three months (`interpolate`)
fills that gap from March and May once all are built; re-running the middle month with `previous`
or `none` refills its committed tiles without reading a scene.
"""

import json
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from odc.geo.geobox import GeoBox

from flows.backfill import backfill
from flows.monthly_mosaic import monthly_mosaic
from tasks.aoi import aoi_pixel_mask, load_aoi
from tasks.cog import FILL_NODATA
from tasks.grid import roi_slices
from tasks.indices import INDEX_NODATA
from tasks.stac_item import COLLECTION_FILE, FILL_SOURCE_REL, FILLED_SHARE_PROPERTY
from tasks.testing.served_month import SERVED_GRID, ServedSeries, flow_settings, month_dates, serve_synthetic_series
from tasks.testing.servers import S3Server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

FIRST_DAYS = (date(2020, 3, 1), date(2020, 4, 1), date(2020, 5, 1))
GAINS = (1.0, 1.05, 1.10)
OVERCAST_SHARE = 0.35


@pytest.fixture
def series(s3_server: S3Server, stac_api_factory, tmp_path: Path) -> ServedSeries:
    return serve_synthetic_series(
        s3_server,
        stac_api_factory,
        tmp_path,
        [month_dates(day) for day in FIRST_DAYS],
        [{"surface_gain": gain, "overcast_share": OVERCAST_SHARE if index == 1 else 0.0} for index, gain in enumerate(GAINS)],
        surface_seed=7,
        radiometric_jitter=False,  # the composites of the clear months are then the surface itself
        cloud_cover=(0.1,),
        thin_cover=0.0,
        seed=3,
    )


def read_layer(path: str) -> tuple[np.ndarray, GeoBox]:
    with rasterio.open(path) as dataset:
        return dataset.read(), GeoBox(dataset.shape, dataset.transform, dataset.crs)


def month_layers(output: Path, label: str) -> dict[str, Any]:
    """A published month's mosaic, count and fill arrays, its grid, metadata and Item."""
    folder = output / "fill-series" / label[:4] / label[5:]
    stem = f"fill-series_{label}"
    mosaic, grid = read_layer(str(folder / f"{stem}_mosaic.tif"))
    layers: dict[str, Any] = {"mosaic": mosaic, "grid": grid, "count": read_layer(str(folder / f"{stem}_count.tif"))[0][0]}
    layers["ndvi"] = read_layer(str(folder / f"{stem}_ndvi.tif"))[0][0]
    fill_file = folder / f"{stem}_fill.tif"
    layers["fill"] = read_layer(str(fill_file))[0][0] if fill_file.exists() else None
    layers["metadata"] = json.loads((folder / f"{stem}_metadata.json").read_text())
    layers["item"] = json.loads((folder / f"{stem}_item.json").read_text())
    return layers


def test_a_backfilled_month_interpolates_its_cloudy_part_and_refills_with_previous_or_none(
    series: ServedSeries, s3_server: S3Server, prefect_harness: None, tmp_path: Path
) -> None:
    settings = flow_settings(
        series.served_month(series.labels[0]), tmp_path / "ws", month=None, aoi_name="fill-series", composite={"indices": ["ndvi"]}
    )
    output = Path(settings.output_dir)
    report = backfill(series.labels[0], series.labels[-1], settings, max_concurrent_months=3)

    march, april, may = (month_layers(output, label) for label in series.labels)
    inside = aoi_pixel_mask(load_aoi(settings.aoi), april["grid"])
    gaps = inside & (april["count"] == 0)
    rows, cols = roi_slices(SERVED_GRID.overlap_roi(april["grid"]))
    truth = series.months[1].truth[:, rows, cols].astype(np.float64)

    assert gaps.mean() > 0.2, "the overcast part of April is a gap"
    assert (april["fill"][gaps] == 1).all() and (april["fill"][inside & ~gaps] == 0).all()
    assert (april["fill"][~inside] == FILL_NODATA).all()
    expected = np.rint((march["mosaic"][:, gaps].astype(np.float64) + may["mosaic"][:, gaps]) / 2)
    assert np.array_equal(april["mosaic"][:, gaps], expected), "half way between March and May"
    expected_ndvi = np.rint((march["ndvi"][gaps].astype(np.float64) + may["ndvi"][gaps]) / 2)
    assert np.array_equal(april["ndvi"][gaps], expected_ndvi), "NDVI is filled like the reflectance"
    relative_error = np.abs(april["mosaic"][:, gaps] - truth[:, gaps]) / truth[:, gaps]
    assert relative_error.max() <= 0.01, f"an interpolated pixel is {relative_error.max():.2%} off the truth"
    fill = april["metadata"]["fill"]
    assert fill["method"] == "interpolate" and fill["filled_share_of_aoi"] == pytest.approx(gaps.sum() / inside.sum())
    assert [used["month"] for used in fill["months_used"]] == [series.labels[0], series.labels[2]]
    assert april["item"]["properties"][FILLED_SHARE_PROPERTY] == pytest.approx(fill["filled_share_of_aoi"])
    related = [link["href"] for link in april["item"]["links"] if link["rel"] == FILL_SOURCE_REL]
    assert related == [used["item"] for used in fill["months_used"]] and all(Path(href).exists() for href in related)
    assert "fill" in april["item"]["assets"]
    april_outcome = next(outcome for outcome in report.months if outcome.month == series.labels[1])
    assert april_outcome.filled_share == pytest.approx(fill["filled_share_of_aoi"])
    assert march["metadata"]["fill"]["filled_pixels"] == 0, "March is clear"
    collection = json.loads((output / "fill-series" / COLLECTION_FILE).read_text())
    assert "fill" in collection["item_assets"]
    assert sum(link["rel"] == "item" for link in collection["links"]) == len(series.labels)

    # The same month refilled: its tiles are committed, so no scene is read again.
    april_label, interpolated = series.labels[1], april
    s3_server.reset_counters()
    monthly_mosaic(settings.model_copy(update={"month": april_label, "fill": "previous"}))
    previous = month_layers(output, april_label)
    monthly_mosaic(settings.model_copy(update={"month": april_label, "fill": "none"}))
    unfilled = month_layers(output, april_label)

    assert np.array_equal(previous["mosaic"][:, gaps], march["mosaic"][:, gaps]), "previous copies March exactly"
    assert [used["month"] for used in previous["metadata"]["fill"]["months_used"]] == [series.labels[0]]
    assert (unfilled["mosaic"][:, gaps] == 0).all() and unfilled["fill"] is None and "fill" not in unfilled["metadata"]
    assert (unfilled["ndvi"][gaps] == INDEX_NODATA).all() and np.array_equal(previous["ndvi"][gaps], march["ndvi"][gaps])
    for layers in (previous, unfilled):
        assert np.array_equal(layers["count"], interpolated["count"]), "the count stays the observed count"
        assert np.array_equal(layers["mosaic"][:, ~gaps], interpolated["mosaic"][:, ~gaps]), "an observed pixel changed"
    assert s3_server.requests_for(f"/{series.bucket}/") == 0, "a refill read a scene"
