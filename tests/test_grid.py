"""The target grid: UTM zone choice, pixel alignment, other CRSs, feet, and a stable key."""

import math

import numpy as np
import pytest
import shapely
from odc.geo import CRS
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry
from rasterio.features import geometry_mask

from tasks.core.errors import InvalidSettings
from tasks.geometry.aoi import aoi_pixel_mask, load_aoi
from tasks.geometry.crs import crs_code
from tasks.geometry.grid import METRES_PER_DEGREE_LATITUDE, grid_for_aoi, grid_key, grid_metadata, utm_crs_for

US_SURVEY_FOOT_M = 1200 / 3937
ALPINE_AOI = "9.1234,47.2345,9.3456,47.3567"


def _assert_aligned(grid: GeoBox) -> None:
    """The grid's origin is a whole number of pixels from the CRS origin, pixels square."""
    affine = grid.affine
    assert affine.a == pytest.approx(-affine.e)
    assert (affine.b, affine.d) == (0, 0)
    for origin, size in ((affine.c, affine.a), (affine.f, affine.e)):
        pixels = origin / size
        assert pixels == pytest.approx(round(pixels), abs=1e-6)


def _assert_covers(grid: GeoBox, aoi: Geometry) -> None:
    """Every point of the AOI (edges densified before reprojection) lies inside the grid."""
    resolution = 0.001 if aoi.crs.geographic else 10.0
    assert grid.extent.contains(aoi.to_crs(grid.crs, resolution=resolution))


@pytest.mark.parametrize(
    ("bbox", "expected_epsg"),
    [("9.1,47.2,9.3,47.4", 32632), ("-70.6,-33.5,-70.5,-33.4", 32719), ("174.7,-36.9,174.8,-36.8", 32760),
     ("-179.9,65.0,-179.8,65.1", 32601), ("0.1,0.1,0.2,0.2", 32631), ("2.9,-0.2,3.1,-0.1", 32731)],
)  # fmt: skip
def test_utm_zone_of_the_centroid_north_and_south(bbox: str, expected_epsg: int) -> None:
    assert utm_crs_for(load_aoi(bbox)).epsg == expected_epsg


def test_default_grid_is_utm_aligned_and_covers_the_aoi() -> None:
    aoi = load_aoi(ALPINE_AOI)
    grid = grid_for_aoi(aoi, None, 10)
    assert grid.crs.epsg == 32632
    assert grid.resolution.x == 10
    _assert_aligned(grid)
    _assert_covers(grid, aoi)
    # Tight: no more than one pixel of margin on each side.
    aoi_bounds = aoi.to_crs(grid.crs).boundingbox
    assert grid.extent.boundingbox.left > aoi_bounds.left - 10
    assert grid.extent.boundingbox.top < aoi_bounds.top + 10


def test_same_aoi_gives_the_same_grid_and_key() -> None:
    first = grid_for_aoi(load_aoi(ALPINE_AOI), None, 10)
    second = grid_for_aoi(load_aoi(ALPINE_AOI), None, 10)
    assert first == second
    assert grid_key(first) == grid_key(second)


def test_nearby_aois_share_one_pixel_lattice() -> None:
    first = grid_for_aoi(load_aoi(ALPINE_AOI), "EPSG:32632", 20)
    shifted = grid_for_aoi(load_aoi("9.12347,47.23453,9.34563,47.35674"), "EPSG:32632", 20)
    offset_x = (shifted.affine.c - first.affine.c) / 20
    offset_y = (shifted.affine.f - first.affine.f) / 20
    assert (offset_x, offset_y) == (round(offset_x), round(offset_y))
    roi = first.overlap_roi(shifted)
    assert first[roi].shape.x > 0.9 * first.shape.x


@pytest.mark.parametrize("target_crs", ["EPSG:5070", "EPSG:3857", "EPSG:4326", "EPSG:32633"])
def test_other_crs_grids_cover_the_aoi(target_crs: str) -> None:
    aoi = load_aoi("-98.6,39.7,-98.4,39.9") if target_crs == "EPSG:5070" else load_aoi(ALPINE_AOI)
    grid = grid_for_aoi(aoi, target_crs, 10)
    assert grid.crs.epsg == int(target_crs.split(":")[1])
    _assert_aligned(grid)
    _assert_covers(grid, aoi)


def test_geographic_grid_uses_degrees_of_latitude() -> None:
    grid = grid_for_aoi(load_aoi(ALPINE_AOI), "EPSG:4326", 10)
    assert grid.resolution.x == pytest.approx(10 / METRES_PER_DEGREE_LATITUDE)


def test_feet_crs_converts_the_resolution() -> None:
    manhattan = load_aoi("-74.02,40.70,-73.97,40.75")
    grid = grid_for_aoi(manhattan, "EPSG:2263", 10)
    assert grid.resolution.x == pytest.approx(10 / US_SURVEY_FOOT_M)
    _assert_aligned(grid)
    _assert_covers(grid, manhattan)
    # Pixels of about 100 m2: AOI pixels x 100 m2 is the AOI's area in UTM metres, to within 1 %.
    area_m2 = manhattan.to_crs("EPSG:32618").area
    assert aoi_pixel_mask(manhattan, grid).sum() * 100 == pytest.approx(area_m2, rel=0.01)


def test_aoi_in_a_projected_crs() -> None:
    aoi = load_aoi(
        "SRID=32633;POLYGON((500000 5000000, 502000 5000000, 502000 5001000, 500000 5001000, 500000 5000000))"
    )
    grid = grid_for_aoi(aoi, None, 10)
    assert grid.crs.epsg == 32633
    assert grid.shape.yx == (100, 200)
    assert (grid.affine.c, grid.affine.f) == (500_000, 5_001_000)


def test_unknown_crs_is_a_settings_error() -> None:
    with pytest.raises(InvalidSettings, match="EPSG:999999") as error:
        grid_for_aoi(load_aoi(ALPINE_AOI), "EPSG:999999", 10)
    assert "\n" not in str(error.value)


def test_grid_key_differs_with_crs_resolution_or_extent() -> None:
    aoi = load_aoi(ALPINE_AOI)
    base = grid_key(grid_for_aoi(aoi, None, 10))
    assert grid_key(grid_for_aoi(aoi, None, 20)) != base
    assert grid_key(grid_for_aoi(aoi, "EPSG:32633", 10)) != base
    assert grid_key(grid_for_aoi(load_aoi("9.1234,47.2345,9.3457,47.3567"), None, 10)) != base


def test_grid_metadata_is_plain_json() -> None:
    grid = grid_for_aoi(load_aoi(ALPINE_AOI), None, 10)
    metadata = grid_metadata(grid)
    assert metadata["crs"] == "EPSG:32632"
    assert metadata["shape"] == [grid.shape.y, grid.shape.x]
    assert metadata["transform"] == list(grid.affine[:6])
    left, bottom, right, top = metadata["bounds"]
    assert math.isclose(right - left, grid.shape.x * 10) and math.isclose(top - bottom, grid.shape.y * 10)


def test_a_wide_lat_lon_box_keeps_its_curved_edges_in_utm() -> None:
    """Lines of latitude are curves in UTM: reprojecting only the corners would drop ~1650 edge pixels here."""
    box = load_aoi("9,60,15,61")
    grid = grid_for_aoi(box, None, 1000)
    curved = Geometry(shapely.segmentize(box.geom, 0.001), crs=box.crs).to_crs(grid.crs)
    expected = geometry_mask([curved.geom], out_shape=grid.shape.yx, transform=grid.affine, invert=True)
    assert grid.extent.contains(curved.buffer(-1000))
    np.testing.assert_array_equal(aoi_pixel_mask(box, grid), expected)


@pytest.mark.parametrize(("west_of_180", "east_of_180", "expected_epsg"),
                         [(179.9, -179.95, 32760), (179.95, -179.9, 32701)])  # fmt: skip
def test_aoi_split_at_the_antimeridian_gets_the_zone_of_its_true_centre(
    west_of_180: float, east_of_180: float, expected_epsg: int
) -> None:
    """An RFC 7946 MultiPolygon cut at lon 180 (Taveuni, Fiji): its centre is near lon 180, not lon 0."""
    aoi = load_aoi(
        f"MULTIPOLYGON((({west_of_180} -16.9, 180 -16.9, 180 -16.7, {west_of_180} -16.7, {west_of_180} -16.9)), "
        f"((-180 -16.9, {east_of_180} -16.9, {east_of_180} -16.7, -180 -16.7, -180 -16.9)))"
    )
    grid = grid_for_aoi(aoi, None, 100)
    assert grid.crs.epsg == expected_epsg
    _assert_aligned(grid)
    # 0.15 degrees (16 km) wide, not a grid around the globe the other way.
    assert grid.shape.x * 100 < 17_000 and grid.shape.y * 100 < 23_000
    for part in aoi.geoms:
        assert grid.extent.contains(part.to_crs(grid.crs, resolution=0.001))


def test_a_crs_is_named_by_its_epsg_code_when_it_has_one() -> None:
    custom_laea = "+proj=laea +lat_0=52 +lon_0=10.3 +x_0=4321000 +y_0=3210000 +ellps=GRS80 +units=m"
    assert crs_code(CRS("EPSG:32633")) == "EPSG:32633"
    assert crs_code(CRS(custom_laea)) is None
