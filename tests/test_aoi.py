"""AOI loading: vector files in a projected CRS, WKT, EWKT, bbox, and a one-line error per bad input."""

import re
import subprocess
import sys
from pathlib import Path

import geopandas
import numpy as np
import pandas
import pyogrio
import pytest
import shapely
from odc.geo.geobox import GeoBox

from tasks.core.errors import InvalidAOI
from tasks.geometry.aoi import aoi_digest, aoi_label, aoi_name, aoi_pixel_mask, load_aoi
from tests import REPO_ROOT

UTM_33N = "EPSG:32633"
FIELD = shapely.box(500_000, 5_000_000, 502_000, 5_001_000)  # 2 km x 1 km in UTM 33N
SECOND_FIELD = shapely.box(505_000, 5_000_000, 506_000, 5_001_000)
BOWTIE = shapely.Polygon([(500_000, 5_000_000), (501_000, 5_001_000), (501_000, 5_000_000), (500_000, 5_001_000)])


def _write(path: Path, geometries: list, crs: str | None = UTM_33N, driver: str | None = None) -> str:
    frame = geopandas.GeoDataFrame({"name": [f"part{index}" for index in range(len(geometries))]},
                                   geometry=geometries, crs=crs)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_file(path, driver=driver)
    return str(path)


def _assert_one_line_naming(error: pytest.ExceptionInfo, source: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    assert source in message


@pytest.mark.parametrize(("file_name", "driver"), [("field.gpkg", "GPKG"), ("field.geojson", "GeoJSON"),
                                                  ("field.shp", "ESRI Shapefile")])  # fmt: skip
def test_vector_file_in_a_projected_crs_keeps_its_crs_and_shape(tmp_path: Path, file_name: str, driver: str) -> None:
    aoi = load_aoi(_write(tmp_path / file_name, [FIELD], driver=driver))
    assert aoi.crs.epsg == 32633
    assert aoi.geom.equals(FIELD)
    assert aoi.area == pytest.approx(2_000 * 1_000)
    assert re.fullmatch(r"field-[0-9a-f]{8}", aoi_name(str(tmp_path / file_name), aoi))


def test_features_of_a_file_become_one_multipolygon(tmp_path: Path) -> None:
    aoi = load_aoi(_write(tmp_path / "fields.gpkg", [FIELD, SECOND_FIELD]))
    assert aoi.geom.geom_type == "MultiPolygon"
    assert aoi.area == pytest.approx(FIELD.area + SECOND_FIELD.area)


def test_multipolygon_feature(tmp_path: Path) -> None:
    aoi = load_aoi(_write(tmp_path / "multi.gpkg", [shapely.MultiPolygon([FIELD, SECOND_FIELD])]))
    assert aoi.geom.geom_type == "MultiPolygon"
    assert len(aoi.geom.geoms) == 2


def test_wkt_is_wgs84() -> None:
    aoi = load_aoi("POLYGON((9 47, 10 47, 10 48, 9 48, 9 47))")
    assert aoi.crs.epsg == 4326
    assert aoi.geom.bounds == (9, 47, 10, 48)
    wkt_name = aoi_name("POLYGON((9 47, 10 47, 10 48, 9 48, 9 47))", aoi)
    assert re.fullmatch(r"aoi-[0-9a-f]{8}", wkt_name)
    assert wkt_name == aoi_name("9,47,10,48", load_aoi("9,47,10,48"))  # the same polygon, written otherwise
    assert aoi_name("9,47,10,48", aoi) != aoi_name("9,47,10,48.5", load_aoi("9,47,10,48.5"))


def test_files_with_the_same_stem_get_different_names_and_the_same_file_always_its_own(tmp_path: Path) -> None:
    farm_a = load_aoi(_write(tmp_path / "farmA" / "aoi.geojson", [FIELD], driver="GeoJSON"))
    farm_b = load_aoi(_write(tmp_path / "farmB" / "aoi.geojson", [SECOND_FIELD], driver="GeoJSON"))
    again = load_aoi(str(tmp_path / "farmA" / "aoi.geojson"))
    assert aoi_label(str(tmp_path / "farmA" / "aoi.geojson")) == aoi_label(str(tmp_path / "farmB" / "aoi.geojson")) == "aoi"
    assert aoi_digest(farm_a) != aoi_digest(farm_b) and aoi_digest(farm_a) == aoi_digest(again)
    assert aoi_name("farmA/aoi.geojson", farm_a) != aoi_name("farmB/aoi.geojson", farm_b)


def test_ewkt_carries_its_srid() -> None:
    aoi = load_aoi(f"SRID=32633;{FIELD.wkt}")
    assert aoi.crs.epsg == 32633
    assert aoi.geom.equals(FIELD)


def test_multipolygon_wkt() -> None:
    aoi = load_aoi("MULTIPOLYGON(((0 0, 1 0, 1 1, 0 1, 0 0)), ((2 2, 3 2, 3 3, 2 3, 2 2)))")
    assert aoi.geom.geom_type == "MultiPolygon"
    assert aoi.area == pytest.approx(2.0)


def test_bbox_is_wgs84() -> None:
    aoi = load_aoi("9.5, 47.25, 9.75, 47.5")
    assert aoi.crs.epsg == 4326
    assert aoi.geom.bounds == (9.5, 47.25, 9.75, 47.5)


@pytest.mark.parametrize("bbox", ["10,47,9,48", "9,47,9,48"])
def test_bbox_without_area_is_an_error(bbox: str) -> None:
    with pytest.raises(InvalidAOI, match="empty") as error:
        load_aoi(bbox)
    _assert_one_line_naming(error, bbox)


def test_empty_wkt_is_an_error() -> None:
    with pytest.raises(InvalidAOI, match="empty") as error:
        load_aoi("POLYGON EMPTY")
    assert "\n" not in str(error.value)


def test_file_without_geometry_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "nothing.gpkg", [None])
    with pytest.raises(InvalidAOI, match="no geometry") as error:
        load_aoi(path)
    _assert_one_line_naming(error, path)


def test_self_intersecting_file_geometry_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "bowtie.gpkg", [BOWTIE])
    with pytest.raises(InvalidAOI, match="invalid .*Self-intersection") as error:
        load_aoi(path)
    _assert_one_line_naming(error, path)


def test_self_intersecting_wkt_is_an_error() -> None:
    with pytest.raises(InvalidAOI, match="invalid .*Self-intersection"):
        load_aoi("POLYGON((0 0, 1 1, 1 0, 0 1, 0 0))")


def test_unreadable_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.gpkg"
    path.write_text("this is not a GeoPackage")
    with pytest.raises(InvalidAOI, match="cannot be read") as error:
        load_aoi(str(path))
    _assert_one_line_naming(error, str(path))


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.gpkg")
    with pytest.raises(InvalidAOI, match="cannot be read") as error:
        load_aoi(path)
    _assert_one_line_naming(error, path)


def test_file_without_crs_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "no_crs.shp", [FIELD], crs=None)
    assert not Path(path).with_suffix(".prj").exists()
    with pytest.raises(InvalidAOI, match="no CRS") as error:
        load_aoi(path)
    _assert_one_line_naming(error, path)


def test_point_file_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "points.geojson", [shapely.Point(500_000, 5_000_000)], driver="GeoJSON")
    with pytest.raises(InvalidAOI, match="no polygon") as error:
        load_aoi(path)
    _assert_one_line_naming(error, path)


def test_point_wkt_is_an_error_about_the_geometry() -> None:
    with pytest.raises(InvalidAOI, match="no polygon"):
        load_aoi("POINT(9 47)")


def test_projected_coordinates_as_a_bbox_are_refused() -> None:
    with pytest.raises(InvalidAOI, match="not in degrees of EPSG:4326"):
        load_aoi("500000,5000000,501000,5001000")


def test_pixel_mask_marks_pixel_centres_inside_the_aoi() -> None:
    aoi = load_aoi(f"SRID=32633;{FIELD.wkt}")
    grid = GeoBox.from_bbox((499_000, 4_999_000, 503_000, 5_002_000), UTM_33N, resolution=100)
    mask = aoi_pixel_mask(aoi, grid)
    assert mask.shape == grid.shape.yx
    assert mask.sum() == (2_000 // 100) * (1_000 // 100)
    rows, columns = np.nonzero(mask)
    assert (rows.min(), rows.max(), columns.min(), columns.max()) == (10, 19, 10, 29)


@pytest.mark.parametrize("bbox", ["1.2.3,0,2,1", ".,0,1,1"])
def test_malformed_bbox_is_an_aoi_error(bbox: str) -> None:
    with pytest.raises(InvalidAOI):
        load_aoi(bbox)


def test_csv_without_geometry_is_one_line_naming_the_file_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "fields.csv"
    path.write_text("name,lon,lat\nfield,9.1,47.2\n")
    with pytest.raises(InvalidAOI, match="table without a geometry column; save the polygons as GeoPackage") as error:
        load_aoi(str(path))
    _assert_one_line_naming(error, str(path))


def test_geopackage_table_without_geometry_is_the_same_error(tmp_path: Path) -> None:
    path = str(tmp_path / "attributes.gpkg")
    pyogrio.write_dataframe(pandas.DataFrame({"name": ["field"], "area_ha": [12.5]}), path)
    with pytest.raises(InvalidAOI, match="table without a geometry column") as error:
        load_aoi(path)
    _assert_one_line_naming(error, path)


def test_csv_with_a_wkt_column_has_no_crs(tmp_path: Path) -> None:
    path = tmp_path / "fields_wkt.csv"
    path.write_text('name,WKT\nfield,"POLYGON((9 47, 10 47, 10 48, 9 48, 9 47))"\n')
    with pytest.raises(InvalidAOI, match="no CRS") as error:
        load_aoi(str(path))
    _assert_one_line_naming(error, str(path))


CONCURRENT_MASKS_SCRIPT = """
import threading
from odc.geo.geobox import GeoBox
from tasks.geometry.aoi import aoi_pixel_mask, load_aoi
from tasks.storage.gdal_env import gdal_env

aoi = load_aoi("9.10,47.52,9.20,47.58")
grid = GeoBox.from_bbox((9.10, 47.52, 9.20, 47.58), "EPSG:4326", resolution=0.0005)

def masks():
    with gdal_env():
        for _ in range(50):
            aoi_pixel_mask(aoi, grid)

threads = [threading.Thread(target=masks) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join(60)
print("done")
"""


def test_aoi_masks_made_at_once_in_threads_warn_nothing() -> None:
    """As the scene reads of a run make them, under Python's default warning filters (pytest's would show all)."""
    finished = subprocess.run(
        [sys.executable, "-c", CONCURRENT_MASKS_SCRIPT], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert finished.stdout.strip() == "done", finished.stderr
    assert "Warning" not in finished.stderr, finished.stderr
