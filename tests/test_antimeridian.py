"""AOIs across the antimeridian (Taveuni, Fiji: lon 180, lat -16.8), in UTM 60S and as an RFC 7946 split
MultiPolygon in EPSG:4326: the UTM zone of their true centre, footprints joined across lon 180, the AOI
split for the STAC search, and the monthly flow completing a synthetic month served like Earth Search.
"""

import json
from pathlib import Path

import geopandas
import numpy as np
import pytest
import rasterio
import shapely
import shapely.affinity
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry
from rasterio.features import geometry_mask

from flows.monthly_mosaic import monthly_mosaic
from tasks.acquisition.search import outside_window_reason
from tasks.core.month import Month
from tasks.geometry.aoi import (
    WGS84,
    aoi_centre_lonlat,
    aoi_in_crs,
    footprint_in_crs,
    load_aoi,
    lonlat_bbox,
    lonlat_unwrapped,
    union_lonlat_bboxes,
)
from tasks.geometry.grid import grid_for_aoi, utm_crs_for
from tasks.testing.served_month import flow_settings, serve_synthetic_month
from tasks.testing.servers import S3Server
from tasks.testing.synthetic import DEFAULT_DATES, footprint_4326, synthetic_grid, write_aoi

UTM_60S = "EPSG:32760"
UTM_1S = "EPSG:32701"
TAVEUNI_GRID = synthetic_grid(shape=(256, 256), resolution=20.0, crs=UTM_60S, origin=(816_000.0, 8_142_560.0))
"""5.12 km of 20 m pixels in UTM 60S around lat -16.8; lon 180 crosses it about 3.8 km from its west edge,
so its centre (and the AOI's) lies just west of lon 180, in zone 60."""
AOI_INSET_PX = 20
CLEAR_TOLERANCE_SHARE, CLEAR_TOLERANCE_DN = 0.01, 6
"""A clear observation is within 1 % + 5.5 DN of the truth (tasks/testing/synthetic.py), so is any percentile of them."""


def utm_aoi_polygon(tmp_path: Path) -> shapely.Polygon:
    """The AOI quadrilateral of `write_aoi` on `TAVEUNI_GRID`, in UTM 60S metres."""
    return geopandas.read_file(write_aoi(TAVEUNI_GRID, tmp_path / "taveuni_quad.geojson", AOI_INSET_PX)).geometry[0]


def write_utm_aoi(tmp_path: Path) -> Path:
    """The AOI as a GeoPackage in UTM 60S."""
    path = tmp_path / "taveuni_utm60s.gpkg"
    geopandas.GeoDataFrame(geometry=[utm_aoi_polygon(tmp_path)], crs=UTM_60S).to_file(path)
    return path


def split_aoi(tmp_path: Path) -> Geometry:
    """The AOI in EPSG:4326 split at lon 180 (RFC 7946), edges every 20 m: its longitudes taken modulo 360,
    cut at 180, the eastern piece moved back by 360 degrees."""
    lonlat = Geometry(utm_aoi_polygon(tmp_path), crs=UTM_60S).to_crs(WGS84, resolution=20.0).geom
    unwrapped = shapely.transform(lonlat, lambda xy: np.column_stack([xy[:, 0] % 360, xy[:, 1]]))
    west_of_180 = shapely.clip_by_rect(unwrapped, 0, -90, 180, 90)
    east_of_180 = shapely.affinity.translate(shapely.clip_by_rect(unwrapped, 180, -90, 360, 90), -360)
    return Geometry(shapely.MultiPolygon([west_of_180, east_of_180]), crs=WGS84)


def write_split_aoi(tmp_path: Path) -> Path:
    """The AOI as an RFC 7946 GeoJSON (no CRS member: EPSG:4326), a MultiPolygon of two parts at lon +-180."""
    path = tmp_path / "taveuni_split.geojson"
    feature = {"type": "Feature", "properties": {}, "geometry": split_aoi(tmp_path).json}
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    return path


def assert_split_at_antimeridian(geometry: dict | Geometry) -> None:
    """An RFC 7946 antimeridian MultiPolygon: two parts, one ending at lon 180, one starting at lon -180."""
    shape = geometry.geom if isinstance(geometry, Geometry) else shapely.geometry.shape(geometry)
    assert shape.geom_type == "MultiPolygon" and len(shape.geoms) == 2 and shape.is_valid
    west_of_180, east_of_180 = sorted(shape.geoms, key=lambda part: -part.bounds[0])
    assert west_of_180.bounds[2] == 180.0 and west_of_180.bounds[0] > 179.9
    assert east_of_180.bounds[0] == -180.0 and east_of_180.bounds[2] < -179.9


# --- The geometry helpers -----------------------------------------------------------------------


@pytest.mark.parametrize("write", [write_utm_aoi, write_split_aoi])
def test_true_centre_of_the_aoi_is_just_west_of_180_in_zone_60_south(write, tmp_path: Path) -> None:
    aoi = load_aoi(str(write(tmp_path)))
    expected = Geometry(utm_aoi_polygon(tmp_path).centroid, crs=UTM_60S).to_crs(WGS84).geom

    longitude, latitude = aoi_centre_lonlat(aoi)

    assert longitude == pytest.approx(expected.x, abs=1e-4) and latitude == pytest.approx(expected.y, abs=1e-4)
    assert 179.9 < longitude < 180.0
    assert f"EPSG:{utm_crs_for(aoi).epsg}" == UTM_60S


def test_centre_east_of_180_is_zone_1_south(tmp_path: Path) -> None:
    east_grid = synthetic_grid(shape=(256, 256), resolution=20.0, crs=UTM_60S, origin=(818_000.0, 8_142_560.0))
    aoi = load_aoi(str(write_aoi(east_grid, tmp_path / "east.geojson", AOI_INSET_PX)))

    longitude, _ = aoi_centre_lonlat(aoi)

    assert -180.0 < longitude < -179.99
    assert f"EPSG:{utm_crs_for(aoi).epsg}" == UTM_1S


def test_split_aoi_file_loads_as_its_two_parts(tmp_path: Path) -> None:
    aoi = load_aoi(str(write_split_aoi(tmp_path)))
    assert aoi.crs.epsg == 4326
    assert_split_at_antimeridian(aoi)


def test_unwrapped_aoi_is_one_polygon_across_180(tmp_path: Path) -> None:
    utm_polygon = utm_aoi_polygon(tmp_path)
    for aoi in (load_aoi(str(write_utm_aoi(tmp_path))), load_aoi(str(write_split_aoi(tmp_path)))):
        unwrapped = lonlat_unwrapped(aoi)
        assert unwrapped.crs.epsg == 4326 and unwrapped.geom.geom_type == "Polygon"
        left, _, right, _ = unwrapped.boundingbox
        assert 179.9 < left < 180.0 < right < 180.1
        # Back in UTM 60S it is the AOI again (to a millimetre).
        in_utm = unwrapped.to_crs(UTM_60S, resolution=0.0001).geom
        assert in_utm.symmetric_difference(utm_polygon).area < 1e-3 * utm_polygon.length


@pytest.mark.parametrize("write", [write_utm_aoi, write_split_aoi])
def test_aoi_in_wgs84_is_split_at_180_and_covers_the_aoi(write, tmp_path: Path) -> None:
    aoi = load_aoi(str(write(tmp_path)))

    in_wgs84 = aoi_in_crs(aoi, WGS84)

    assert_split_at_antimeridian(in_wgs84)
    reference = split_aoi(tmp_path).geom
    assert in_wgs84.geom.symmetric_difference(reference).area < 1e-6 * reference.area


def test_aoi_in_the_grid_crs_is_the_aoi_whatever_its_source(tmp_path: Path) -> None:
    utm_polygon = utm_aoi_polygon(tmp_path)
    split = load_aoi(str(write_split_aoi(tmp_path)))

    in_utm = aoi_in_crs(split, UTM_60S)

    assert in_utm.geom.geom_type == "Polygon" and in_utm.geom.is_valid
    assert in_utm.geom.symmetric_difference(utm_polygon).area < 1e-3 * utm_polygon.length


def test_split_footprint_projects_to_the_grid_it_was_drawn_from() -> None:
    footprint = footprint_4326(TAVEUNI_GRID, np.ones((2, 2), bool))
    assert_split_at_antimeridian(footprint)

    in_grid_crs = footprint_in_crs(footprint.json, UTM_60S, 0.001)

    tile = TAVEUNI_GRID.extent.geom
    assert in_grid_crs.geom.geom_type == "Polygon"
    assert in_grid_crs.geom.symmetric_difference(tile).area < 1e-4 * tile.area


def test_footprint_and_aoi_split_alike_intersect_for_the_search(tmp_path: Path) -> None:
    aoi_wgs84 = aoi_in_crs(load_aoi(str(write_utm_aoi(tmp_path))), WGS84)
    footprint = footprint_4326(TAVEUNI_GRID, np.ones((2, 2), bool)).json
    item = {"geometry": footprint, "properties": {"datetime": f"{DEFAULT_DATES[0]}T11:34:25Z"}}
    at_lon_0 = shapely.box(-1.0, -16.85, 1.0, -16.75)  # inside a polygon spanning the globe the other way
    item_elsewhere = {**item, "geometry": shapely.geometry.mapping(at_lon_0)}
    month = Month.parse(f"{DEFAULT_DATES[0]:%Y-%m}")

    assert outside_window_reason(item, aoi_wgs84, month) is None
    assert outside_window_reason(item_elsewhere, aoi_wgs84, month) == "its footprint does not meet the AOI"


def test_default_grid_of_both_aois_lies_on_the_tile_pixels(tmp_path: Path) -> None:
    """Both AOIs get the tile's pixels that their bounds cover: `write_aoi` insets the quadrilateral by
    `AOI_INSET_PX` from each edge of the tile, and its corners lie on the tile's pixel lattice."""
    rows, columns = TAVEUNI_GRID.shape.yx
    aoi_bounds = np.s_[AOI_INSET_PX : rows - AOI_INSET_PX, AOI_INSET_PX : columns - AOI_INSET_PX]
    for aoi_path in (write_utm_aoi(tmp_path), write_split_aoi(tmp_path)):
        grid = grid_for_aoi(load_aoi(str(aoi_path)), None, 20.0)
        assert grid.crs.epsg == 32760 and grid.resolution.xy == TAVEUNI_GRID.resolution.xy
        assert tile_window(grid) == aoi_bounds, aoi_path.name


def test_bbox_across_180_has_west_greater_than_east(tmp_path: Path) -> None:
    aoi = load_aoi(str(write_split_aoi(tmp_path)))
    west, south, east, north = lonlat_bbox(aoi)
    assert 179.9 < west < 180.0 and -180.0 < east < -179.9 and south < north
    assert lonlat_bbox(lonlat_unwrapped(aoi)) == [west, south, east, north]


@pytest.mark.parametrize(
    ("bboxes", "union"),
    [
        ([[179.9, -17, -179.9, -16], [179.95, -17.5, -179.95, -16.5]], [179.9, -17.5, -179.9, -16.0]),
        ([[179.9, -17, 179.99, -16], [-179.99, -17, -179.8, -16]], [179.9, -17, -179.8, -16]),
        ([[9.1, 47.5, 9.2, 47.6], [9.0, 47.4, 9.15, 47.55]], [9.0, 47.4, 9.2, 47.6]),
        ([[-170.0, 0.0, 170.0, 1.0], [160.0, 0.0, -160.0, 1.0]], [-180.0, 0.0, 180.0, 1.0]),
    ],
    ids=["both cross", "either side joins over 180", "away from 180", "around the world"],
)
def test_union_of_bboxes_joins_over_the_antimeridian(bboxes: list[list[float]], union: list[float]) -> None:
    np.testing.assert_allclose(union_lonlat_bboxes(bboxes), union)


# --- The monthly flow on a served month across the antimeridian ----------------------------------


def tile_window(grid: GeoBox) -> tuple[slice, slice]:
    """The (rows, columns) of `TAVEUNI_GRID` that `grid` (same CRS and pixel lattice) covers."""
    column = (grid.affine.c - TAVEUNI_GRID.affine.c) / TAVEUNI_GRID.affine.a
    row = (grid.affine.f - TAVEUNI_GRID.affine.f) / TAVEUNI_GRID.affine.e
    assert column == round(column) >= 0 and row == round(row) >= 0, "the grid is off the tile's pixel lattice"
    return np.s_[int(row) : int(row) + grid.shape.y, int(column) : int(column) + grid.shape.x]


@pytest.mark.parametrize("write", [write_utm_aoi, write_split_aoi], ids=["utm60s_gpkg", "split_multipolygon"])
def test_month_across_the_antimeridian_completes_and_matches_the_truth(
    write, prefect_harness: None, s3_server: S3Server, stac_api_factory, tmp_path: Path
) -> None:
    served = serve_synthetic_month(
        s3_server, stac_api_factory, tmp_path, grid=TAVEUNI_GRID, tile_id="60KZF", duplicated_dates=()
    )
    assert all(item["geometry"]["type"] == "MultiPolygon" for item in served.month.items)
    settings = flow_settings(served, tmp_path / "ws", aoi=str(write(tmp_path)))

    state = monthly_mosaic(settings, return_state=True)

    assert state.is_completed(), state.message
    report = state.result()
    assert not report.failed_scenes
    assert report.scenes_used == report.scenes_found == len(served.item_ids)
    with rasterio.open(report.product_urls["mosaic"]) as dataset:
        mosaic, crs = dataset.read(), dataset.crs
        grid = GeoBox(dataset.shape, dataset.transform, dataset.crs)
    with rasterio.open(report.product_urls["count"]) as dataset:
        count = dataset.read(1)
    assert crs.to_epsg() == 32760
    window = tile_window(grid)
    month = served.month
    inside = geometry_mask([utm_aoi_polygon(tmp_path)], grid.shape.yx, grid.affine, invert=True)
    expected_count = inside * np.sum([month.clear_mask[item_id][window] for item_id in served.item_ids], axis=0)
    np.testing.assert_array_equal(count, expected_count)
    observed = count > 0
    assert observed[inside].mean() > 0.99
    truth = month.truth[(slice(None), *window)].astype(np.int64)
    close = np.abs(mosaic.astype(np.int64) - truth) <= CLEAR_TOLERANCE_SHARE * truth + CLEAR_TOLERANCE_DN
    assert close.all(axis=0)[observed].mean() >= 0.99
    assert not mosaic[:, ~observed].any()
    assert_crossing_bbox(json.loads(Path(report.product_urls["item"]).read_text())["bbox"], tmp_path)
    collection = json.loads((Path(report.product_urls["item"]).parents[2] / "collection.json").read_text())
    assert_crossing_bbox(collection["extent"]["spatial"]["bbox"][0], tmp_path)


def assert_crossing_bbox(bbox: list[float], tmp_path: Path) -> None:
    """`bbox` is the AOI's, in RFC 7946's form across lon 180: west of it a bit under 180, east a bit over -180."""
    west_of_180, east_of_180 = sorted(split_aoi(tmp_path).geom.geoms, key=lambda part: -part.bounds[0])
    expected = [west_of_180.bounds[0], west_of_180.bounds[1], east_of_180.bounds[2], west_of_180.bounds[3]]
    assert bbox[0] > 179.9 and bbox[2] < -179.9, bbox
    np.testing.assert_allclose(bbox, expected, atol=1e-3)
