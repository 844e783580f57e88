"""Loading the area of interest from a vector file, a WKT string or a bbox, in any CRS.

The AOI becomes one (multi)polygon `odc.geo.geom.Geometry` carrying its CRS. Every problem is a
one-line `InvalidAOI` that names the source and the problem.
"""

import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import shapely.wkt
from odc.geo import CRS
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry
from rasterio.features import geometry_mask
from shapely.validation import explain_validity

from tasks.errors import InvalidAOI, first_line

WGS84 = "EPSG:4326"
NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?"
BBOX_PATTERN = re.compile(rf"^\s*(?:{NUMBER}\s*,\s*){{3}}{NUMBER}\s*$", re.IGNORECASE)
EWKT_PATTERN = re.compile(r"^\s*SRID=(\d+);(.*)$", re.IGNORECASE | re.DOTALL)
WKT_KEYWORDS = ("POINT", "MULTIPOINT", "LINESTRING", "MULTILINESTRING", "POLYGON", "MULTIPOLYGON", "GEOMETRYCOLLECTION")
AOI_SEGMENTS_PER_SIDE = 256
"""Densification of AOI edges before reprojection, in segments per bounding-box side."""
ACCEPTED_FORMS = "a GeoPackage, GeoJSON or Shapefile path or URL, a WKT polygon, or a bbox 'minx,miny,maxx,maxy' in EPSG:4326"


def aoi_name(source: str) -> str:
    """A short name for output files: the vector file's stem; for WKT and bbox strings 'aoi-' and a
    digest of the text, so two inline AOIs never publish to the same folder."""
    if _is_inline(source):
        return f"aoi-{hashlib.sha256(source.strip().encode()).hexdigest()[:8]}"
    stem = Path(source.split("?")[0]).stem
    return re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-") or "aoi"


def _is_inline(source: str) -> bool:
    text = source.strip().upper()
    return bool(BBOX_PATTERN.match(source) or EWKT_PATTERN.match(source) or text.startswith(WKT_KEYWORDS))


def load_aoi(source: str) -> Geometry:
    """The AOI of `source` as one polygonal geometry with its CRS.

    `source` is a vector file path or URL (any format GDAL reads, any CRS, all features unioned),
    a WKT polygon (EPSG:4326, or EWKT `SRID=3857;POLYGON(...)`), or a bbox `minx,miny,maxx,maxy`
    in EPSG:4326.
    """
    if BBOX_PATTERN.match(source):
        minx, miny, maxx, maxy = (float(value) for value in source.split(","))
        if not (minx < maxx and miny < maxy):
            raise InvalidAOI(f"bbox {source!r} is empty: give minx,miny,maxx,maxy with min < max")
        if not (-180 <= minx and maxx <= 180 and -90 <= miny and maxy <= 90):
            raise InvalidAOI(
                f"bbox {source!r} is not in degrees of EPSG:4326; give lon/lat, or projected coordinates as EWKT 'SRID=<epsg>;POLYGON(...)'"
            )
        shape, crs = shapely.box(minx, miny, maxx, maxy), WGS84
    elif _is_inline(source):
        shape, crs = _parse_wkt(source)
    else:
        shape, crs = _read_vector_file(source)
    return _checked(shape, crs, source)


def _parse_wkt(source: str) -> tuple[shapely.Geometry, str]:
    ewkt = EWKT_PATTERN.match(source)
    wkt_text, crs = (ewkt.group(2), f"EPSG:{ewkt.group(1)}") if ewkt else (source, WGS84)
    try:
        return shapely.wkt.loads(wkt_text), crs
    except shapely.errors.ShapelyError as error:
        raise InvalidAOI(f"AOI WKT cannot be parsed ({error}); give {ACCEPTED_FORMS}") from None


def _read_vector_file(source: str) -> tuple[shapely.Geometry, Any]:
    import geopandas
    from pyogrio.errors import DataSourceError

    try:
        frame = geopandas.read_file(source)
    except (DataSourceError, OSError, ValueError) as error:
        raise InvalidAOI(f"AOI {source} cannot be read ({first_line(error)}); give {ACCEPTED_FORMS}") from None
    if not isinstance(frame, geopandas.GeoDataFrame):
        raise InvalidAOI(
            f"AOI {source} is a table without a geometry column; save the polygons as GeoPackage or GeoJSON, "
            "or give WKT in EPSG:4326"
        )
    if frame.crs is None:
        raise InvalidAOI(f"AOI {source} has no CRS; save it with one (e.g. as GeoPackage) or give WKT in EPSG:4326")
    geometries = frame.geometry.dropna()
    if geometries.empty:
        raise InvalidAOI(f"AOI {source} holds no geometry; draw at least one polygon")
    invalid = geometries[~geometries.is_valid]
    if not invalid.empty:
        raise InvalidAOI(
            f"AOI {source} has an invalid geometry ({explain_validity(invalid.iloc[0])}); "
            "repair it, e.g. with QGIS 'Fix geometries' or shapely.make_valid"
        )
    return shapely.union_all(geometries.to_numpy()), frame.crs


def _checked(shape: shapely.Geometry, crs: Any, source: str) -> Geometry:
    label = aoi_name(source) if not _is_inline(source) else "AOI"
    where = source if not _is_inline(source) else "given"
    if shape.is_empty:
        raise InvalidAOI(f"{label} {where} is empty; give a polygon with an area")
    if not shape.is_valid:
        raise InvalidAOI(
            f"{label} {where} is invalid ({explain_validity(shape)}); "
            "repair it, e.g. with QGIS 'Fix geometries' or shapely.make_valid"
        )
    polygonal = shapely.get_parts(shape)
    polygonal = [part for part in polygonal if part.geom_type in ("Polygon", "MultiPolygon")]
    if not polygonal or shapely.union_all(polygonal).area == 0:
        raise InvalidAOI(f"{label} {where} has no polygon ({shape.geom_type}); give an area, not points or lines")
    return Geometry(shapely.union_all(polygonal), crs=crs)


def aoi_in_crs(aoi: Geometry, crs: Any) -> Geometry:
    """The AOI in `crs`, its edges densified first: a straight edge in one CRS is a curve in another.

    No segment is longer than 1/`AOI_SEGMENTS_PER_SIDE` of the AOI's larger bounding-box side.
    """
    crs = CRS(crs)
    if aoi.crs == crs:
        return aoi
    left, bottom, right, top = aoi.boundingbox
    return aoi.to_crs(crs, resolution=max(right - left, top - bottom) / AOI_SEGMENTS_PER_SIDE)


def aoi_pixel_mask(aoi: Geometry, grid: GeoBox) -> np.ndarray:
    """Boolean (y, x) array on `grid`: True where the pixel centre lies inside the AOI."""
    outline = aoi_in_crs(aoi, grid.crs)
    return geometry_mask(
        [outline.geom], out_shape=grid.shape.yx, transform=grid.affine, invert=True, all_touched=False
    )
